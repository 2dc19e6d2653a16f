"""The offline main job: the checkpoint catalogue and the paper's figures on one HTML page.

    augreg-nb report --out augreg-report          # shipped catalogue + paper's numbers
    augreg-nb report --out r --index index.csv    # your full index table instead

``augreg-report/index.html`` shows where the table came from, the recommended checkpoint of
every model with its best ImageNet fine-tune and where each file can be obtained, the size of
the upstream and downstream grids, and links the figures page written by
:func:`augreg_nb.figures.write_all` into ``augreg-report/figures/``. Nothing here touches the
network unless ``--index`` names a URL.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import pandas as pd

from augreg_nb.figures import write_all
from augreg_nb.figures.registry import FIGURES
from augreg_nb.index import describe_provenance, load_index
from augreg_nb.index_queries import grid_summary, is_complete, recommended_table

logger = logging.getLogger(__name__)

def build_report(out_dir: str | os.PathLike, *, index: str | None = "catalogue",
                 own: pd.DataFrame | None = None) -> Path:
    """Write the report into ``out_dir`` and return the path of its ``index.html``.

    ``index``: where to read the index table (see :func:`augreg_nb.index.load_index`);
    the default is the shipped offline catalogue, ``None`` tries the cache and the bucket
    first. When the table is complete, the figures are derived from it; otherwise they show
    the paper's printed numbers. ``own``: own fine-tune result rows drawn on the figures.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_index(index)
    complete = is_complete(df)
    figures = write_all(out / "figures", index=df if complete else None, overlay=own)
    rec = recommended_table(df)
    rec.to_csv(out / "recommended_checkpoints.csv", index=False)
    counts = {kind: grid_summary(df, kind, tidy=True) for kind in ("upstream", "downstream")}
    page = _page(describe_provenance(df), rec, counts, figures, complete)
    path = out / "index.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    logger.info("report written to %s", path)
    return path


def _page(provenance: str, rec: pd.DataFrame, counts: dict, figures: dict,
          complete: bool) -> str:
    shown = rec.drop(columns=["selected_by", "bucket_url"]).copy()
    shown["final_val"] = shown["final_val"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown["imagenet_top1"] = shown["imagenet_top1"].map(
        lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    figs = [f"{e.stem}.png" for e in FIGURES.values() if f"{e.stem}.png" in figures]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>augreg_nb report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;font-size:0.8em}td,th{padding:2px 6px;"
        "border-bottom:1px solid #ddd;text-align:left}img{max-width:48%}</style>",
        "</head><body><h1>AugReg checkpoints: catalogue and paper figures</h1>",
        f"<p class='provenance'><strong>{html.escape(provenance)}</strong></p>",
        "<h2>Recommended checkpoint per model</h2>",
        f"<p>{html.escape(rec['selected_by'].iloc[0]) if len(rec) else ''}. "
        "<code>hf_repo</code>: the Hugging Face copy that timm hosts (readable without "
        "credentials); every file is also at its bucket URL, which refuses anonymous reads "
        "since 2026.</p>",
        shown.to_html(index=False, na_rep="", classes="recommended"),
        "<h2>Checkpoint grids in this table</h2>",
    ]
    for kind, table in counts.items():
        parts.append(f"<h3>{kind}</h3>")
        parts.append(table.to_html(index=False, na_rep="") if len(table) else "<p>none</p>")
    source = "the full index table" if complete else "the numbers printed in the paper"
    parts.append(f"<h2>Figures (from {source})</h2>")
    parts.append("<p><a href='figures/index.html'>All figures and tables with captions</a></p>")
    parts += [f"<a href='figures/{n}'><img src='figures/{n}' alt='{n}'></a>" for n in figs]
    parts.append("</body></html>")
    return "\n".join(parts)
