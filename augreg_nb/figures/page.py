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

import html
import json
import logging
from pathlib import Path

import pandas as pd

from augreg_nb.figures import compare, derive, tidy
from augreg_nb.figures.registry import CAPTIONS, FIG1_NEEDS_INDEX, FIGURES  # noqa: F401

logger = logging.getLogger(__name__)

#: Why two figures cannot be reproduced from public data (one sentence each).
NOT_REPRODUCIBLE = {
    "Figure 2": "Figure 2 compares fine-tuning with training from scratch as a function of "
    "compute, and neither the from-scratch runs nor the TPU hours behind it were published.",
    "Figure 5 (right)": "Figure 5 (right) correlates each checkpoint's minival accuracy with "
    "its ImageNet validation and ImageNetV2 accuracy, and the published index holds no "
    "ImageNetV2 scores.",
}
def figures_for(index: pd.DataFrame | None = None, *, highlight=None,
                overlay=None) -> dict:
    """stem -> matplotlib Figure for every figure of the registry the data allows; own
    full-VTAB rows (``augreg-nb vtab``'s ``vtab.csv``) join Table 5 and Figure 3 (VTAB-1k
    rows do not: Table 5's numbers come from the full training sets).

    Figures that need the full index are left out without ``index``. ``overlay``: own
    fine-tune result rows (index schema), drawn on the figures that take them and, beside
    the published rows of the same checkpoints, as the ``finetunes`` figure.
    """
    out = {}
    overlay = None if overlay is None else derive.as_rows(overlay)
    paper_tasks = overlay  # own rows of the paper's fine-tuning tasks (not VTAB's)
    if overlay is not None and "adapt_ds" in overlay.columns:
        paper_tasks = overlay[~overlay["adapt_ds"].astype(str).str.startswith(
            (tidy.VTAB1K_PREFIX, tidy.VTAB_PREFIX))]
    for entry in FIGURES.values():
        if entry.kind == "figure" and (index is not None or not entry.needs_index):
            data = entry.data(index, own=overlay) if entry.takes_own else entry.data(index)
            kwargs = {"overlay": overlay} if entry.overlay else {}
            out[entry.stem] = entry.plot(data, highlight=highlight, **kwargs)
        elif entry.kind == "own" and paper_tasks is not None and len(paper_tasks):
            out[entry.stem] = entry.plot(entry.data(paper_tasks, index), highlight=highlight)
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
    styled = {e.stem: e.plot(e.data(index, own=overlay) if e.takes_own else e.data(index),
                             highlight=highlight)
              for e in FIGURES.values() if e.kind == "table"}
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
    for entry in FIGURES.values():
        name = entry.stem
        if entry.kind not in ("figure", "own"):
            continue
        if f"{name}.png" in written:
            parts.append(f"<figure><img src='{name}.png' alt='{name}'>"
                         f"<figcaption>{html.escape(entry.caption)}</figcaption></figure>")
        elif entry.missing_note:
            parts.append(f"<p><em>{html.escape(entry.missing_note)}</em></p>")
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


def read_own_results(path: str) -> pd.DataFrame:
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
