"""Every reproducible figure and table on one HTML page, and the ``figures`` command.

    augreg-nb figures --out augreg-figures                 # from the paper's numbers
    augreg-nb figures --out augreg-figures --index index.csv   # derived from a full index
    augreg-nb figures --out augreg-figures --own results.csv   # with own fine-tune rows
    augreg-nb figures --out augreg-figures --own runs/vtab-B_16-1k-res_384/vtab.csv  # VTAB

or from Python: ``augreg_nb.figures.write_all("augreg-figures", index=None)``. The folder
gets ``fig*.png`` and ``fig*.svg``, ``table3.html``, ``table5.html``, ``index.html`` (all
of them with captions) and, with a full index, ``comparison.csv`` (index vs paper).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
from pathlib import Path

import pandas as pd

from augreg_nb.figures import compare, derive, heatmaps, plots, tables, tidy
from augreg_nb.resources import ENV_INDEX

logger = logging.getLogger(__name__)

CAPTIONS = {
    "fig1": "Figure 1: ImageNet-1k top-1 after fine-tuning at 384 px of ViT-B/32, B/16 and "
    "L/16 against the pre-training data, with AugReg (the best of the 28 augmentation and "
    "regularisation settings by upstream validation accuracy, solid) and without (no "
    "augmentation, no dropout or stochastic depth, dashed); stars: JFT-300M (Table 3).",
    "fig3": "Figure 3: VTAB-1k top-1, averaged over the natural, specialized and structured "
    "task groups, against inference speed at 224 px, for the three pre-training sets; grey "
    "lines join each model's points.",
    "fig4": "Figure 4: Upstream validation accuracy (%) of every model for the 7 augmentation "
    "settings without and with regularisation (dropout = stochastic depth = 0.1), the best "
    "over weight decay; colour: difference to the unaugmented, unregularised cell; thin "
    "column: best regularised minus best unregularised setting.",
    "fig5": "Figure 5 (left): ImageNet-21k 300ep checkpoints: test accuracy when the "
    "checkpoint is chosen by its upstream validation accuracy minus when it is chosen by "
    "the task's own validation accuracy over all 28 settings (percentage points).",
    "fig6": "Figure 6: ImageNet-1k top-1 after fine-tuning against inference speed, for "
    "every model, pre-training set and resolution (left; S/16, B/16, L/16 joined), and a "
    "larger patch (/32) against a thinner model (/16) at 224 px (right).",
    "fig7": "Figure 7: Upstream validation accuracy with regularisation minus without, per "
    "augmentation setting (percentage points).",
    "finetunes": "Own fine-tunes (black stars) beside the published fine-tune of the same "
    "checkpoint, task, schedule and resolution (hollow circles): test accuracy (%).",
    "table3": "Table 3: ImageNet-1k transfer.",
    "table5": "Table 5: VTAB-1k results per task.",
}
#: Why two figures cannot be reproduced from public data (one sentence each).
NOT_REPRODUCIBLE = {
    "Figure 2": "Figure 2 compares fine-tuning with training from scratch as a function of "
    "compute, and neither the from-scratch runs nor the TPU hours behind it were published.",
    "Figure 5 (right)": "Figure 5 (right) correlates each checkpoint's minival accuracy with "
    "its ImageNet validation and ImageNetV2 accuracy, and the published index holds no "
    "ImageNetV2 scores.",
}
FIG1_NEEDS_INDEX = (
    "Figure 1 needs the full index table (the paper prints no runs without AugReg): run "
    "`augreg-nb figures --index PATH` or set AUGREG_NB_INDEX to your copy of index.csv."
)


def figures_for(index: pd.DataFrame | None = None, *, highlight=None,
                overlay=None) -> dict:
    """name -> matplotlib Figure for every figure the data allows (Figure 1 needs ``index``).

    ``overlay``: own fine-tune result rows (index schema), drawn on Figures 1 and 6 and,
    beside the published rows of the same checkpoints, as the extra ``finetunes`` figure;
    own VTAB-1k rows (``augreg-nb vtab``'s ``vtab.csv``) join Table 5 and Figure 3.
    """
    out = {}
    overlay = None if overlay is None else derive.as_rows(overlay)
    if index is not None:
        out["fig1"] = plots.plot_fig1(tidy.fig1_data(index), highlight=highlight,
                                      overlay=overlay)
    out["fig3"] = plots.plot_fig3(tidy.fig3_data(index, own=overlay), highlight=highlight)
    out["fig4"] = heatmaps.plot_fig4(tidy.fig4_data(index), highlight=highlight)
    out["fig5"] = heatmaps.plot_fig5(tidy.fig5_data(index), highlight=highlight)
    out["fig6"] = plots.plot_fig6(tidy.fig6_data(index), highlight=highlight, overlay=overlay)
    out["fig7"] = heatmaps.plot_fig7(tidy.fig7_data(index), highlight=highlight)
    paper_tasks = overlay
    if overlay is not None and "adapt_ds" in overlay.columns:
        paper_tasks = overlay[~overlay["adapt_ds"].astype(str).str.startswith(
            tidy.VTAB1K_PREFIX)]
    if paper_tasks is not None and len(paper_tasks):
        out["finetunes"] = tables.plot_finetunes(
            tables.compare_finetunes(paper_tasks, index), highlight=highlight)
    return out


def write_all(out_dir, *, index: pd.DataFrame | None = None, highlight=None,
              overlay=None, dpi: int = 120) -> dict[str, Path]:
    """Write every figure (PNG and SVG), Tables 3 and 5 and an ``index.html`` page.

    ``index``: a full index table to derive the numbers from (default: the paper's printed
    numbers); with one, ``comparison.csv`` lists the index-derived numbers beside the
    paper's. ``overlay``: own fine-tune result rows, see :func:`figures_for`. Returns
    name -> path of everything written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, fig in figures_for(index, highlight=highlight, overlay=overlay).items():
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            fig.savefig(path, dpi=dpi)
            written[f"{name}.{ext}"] = path
    styled = {
        "table3": tables.style_table3(tidy.table3_data(index), highlight=highlight),
        "table5": tables.style_table5(tidy.table5_data(own=overlay), highlight=highlight),
    }
    for name, styler in styled.items():
        written[f"{name}.html"] = _write(out / f"{name}.html", styler.to_html())
    comparison_html = ""
    if index is not None:
        table = compare.compare_with_paper(index)
        written["comparison.csv"] = out / "comparison.csv"
        table.to_csv(written["comparison.csv"], index=False)
        comparison_html = compare.style_comparison(table, only_differences=True).to_html()
    page = _page(written, styled, comparison_html, source="a full index table"
                 if index is not None else "the numbers printed in the paper")
    written["index.html"] = _write(out / "index.html", page)
    logger.info("wrote %d files to %s", len(written), out)
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _page(written: dict[str, Path], styled: dict, comparison_html: str, source: str) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>How to train your ViT? - figures</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "img{max-width:100%}figure{margin:2em 0}figcaption{font-size:0.9em}"
        "table{border-collapse:collapse;font-size:0.8em}td,th{padding:2px 6px}</style>",
        "</head><body><h1>How to train your ViT? Figures and tables</h1>",
        f"<p>Numbers from {html.escape(source)}.</p>",
    ]
    for name in ("fig1", "fig3", "fig4", "fig5", "fig6", "fig7", "finetunes"):
        if f"{name}.png" in written:
            parts.append(f"<figure><img src='{name}.png' alt='{name}'>"
                         f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>")
        elif name == "fig1":
            parts.append(f"<p><em>{html.escape(FIG1_NEEDS_INDEX)}</em></p>")
    for name, styler in styled.items():
        parts.append(f"<h2>{html.escape(CAPTIONS[name])}</h2>{styler.to_html()}")
    parts.append("<h2>Not reproducible from public data</h2><ul>")
    parts += [f"<li>{html.escape(text)}</li>" for text in NOT_REPRODUCIBLE.values()]
    parts.append("</ul>")
    if comparison_html:
        parts.append("<h2>Index-derived numbers that differ from the paper's</h2>")
        parts.append(comparison_html)
    parts.append("</body></html>")
    return "\n".join(parts)


def _read_own(path: str) -> pd.DataFrame:
    """Own result rows from a CSV in the index schema or fine-tuning ``result.json`` files."""
    frames = []
    for item in path.split(","):
        p = Path(item)
        if not p.is_file():
            raise FileNotFoundError(f"own results file not found: {p}; pass a CSV in the index "
                                    "schema or a fine-tuning run's result.json")
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            frames.append(pd.DataFrame([data.get("result_row", data)]))
        else:
            frames.append(pd.read_csv(p))
    return pd.concat(frames, ignore_index=True)


def _run(args: argparse.Namespace) -> int:
    index = None
    location = args.index or os.environ.get(ENV_INDEX)
    if location:
        from augreg_nb.index import load_index

        index = load_index(location)
        prov = index.attrs.get("provenance") or {}
        if prov.get("kind") == "catalogue":
            logger.warning("the shipped catalogue is not the full index table; drawing the "
                           "paper's numbers instead")
            index = None
    own = _read_own(args.own) if args.own else None
    written = write_all(args.out, index=index, highlight=args.highlight, overlay=own)
    print(f"wrote {len(written)} files; open {written['index.html']}")
    return 0


def register_cli(sub) -> None:
    """Add ``augreg-nb figures --out DIR [--index PATH] [--highlight MODEL]``."""
    p = sub.add_parser(
        "figures",
        help="write every reproducible paper figure as PNG/SVG plus an HTML page",
        description="Write the paper's figures and tables (PNG, SVG, HTML). Without --index "
        "(or $AUGREG_NB_INDEX) they show the numbers printed in the paper.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--index", default=None,
                   help="path or URL of a full index.csv to derive the numbers from")
    p.add_argument("--highlight", default=None, help="a model to mark, e.g. B/16")
    p.add_argument("--own", default=None, metavar="FILES",
                   help="own fine-tune results to show beside the published ones: CSV files in "
                   "the index schema or runs' result.json, comma-separated")
    p.set_defaults(func=_run)
