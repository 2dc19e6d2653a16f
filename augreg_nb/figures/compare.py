"""Index-derived numbers beside the paper's, flagged where they differ beyond its rounding.

    from augreg_nb import figures
    from augreg_nb.index import load_index
    table = figures.compare_with_paper(load_index("index.csv"))
    table[table["differs"]]                      # what the index does not reproduce
    figures.style_comparison(table)              # the same, styled for a notebook

The tolerance is half a unit of the paper's last printed digit: 0.005 for Table 3's
accuracies, 0.5 for its img/s and for Figures 4 and 7 (whole percent), 0.05 for Figure 5.
Figure 4's "reg - noreg" column and Figure 7 were computed by the authors from unrounded
accuracies, so the index reproduces them to that rounding only if it holds the same runs.
"""

from __future__ import annotations

import pandas as pd
from pandas.io.formats.style import Styler

from augreg_nb.figures import tidy

_KEYS = ["item", "ds", "model", "column"]


def _table3(index: pd.DataFrame) -> pd.DataFrame:
    ours, theirs = tidy.table3_data(index), tidy.table3_data()
    rows = []
    for model in theirs.index:
        for col in theirs.columns:
            tol = 0.5 if col.startswith("img_sec") else 0.005
            rows.append({"item": "Table 3", "ds": "", "model": model, "column": col,
                         "paper": theirs.at[model, col],
                         "index": ours.at[model, col] if model in ours.index else float("nan"),
                         "tolerance": tol})
    return pd.DataFrame(rows)


def _cells(item, paper_df, index_df, keys, column, tol) -> pd.DataFrame:
    both = paper_df.merge(index_df, on=keys, how="left", suffixes=("_paper", "_index"))
    return pd.DataFrame({
        "item": item,
        "ds": both["ds"] if "ds" in both else "",
        "model": both["model"],
        "column": both.apply(column, axis=1),
        "paper": both["value_paper"] if "value_paper" in both else both["delta_paper"],
        "index": both["value_index"] if "value_index" in both else both["delta_index"],
        "tolerance": tol,
    })


def compare_with_paper(index: pd.DataFrame) -> pd.DataFrame:
    """Every number of Table 3 and Figures 4, 5 (left) and 7 from the paper and from
    ``index``. Columns: item, ds, model, column, paper, index, difference (index minus
    paper), tolerance, differs (True where the difference exceeds the tolerance; False
    where the index has no such number, e.g. Table 3's ImageNetV2 and JFT-300M columns)."""
    f4 = ["ds", "model", "aug", "reg", "measure"]
    parts = [
        _table3(index),
        _cells("Figure 4", tidy.fig4_data(), tidy.fig4_data(index), f4,
               lambda r: "reg - noreg" if r["measure"] == "reg_minus_noreg"
               else f"{r['aug']} / {'reg' if r['reg'] else 'no reg'}", 0.5),
        _cells("Figure 7", tidy.fig7_data(), tidy.fig7_data(index), ["ds", "model", "aug"],
               lambda r: r["aug"], 0.5),
        _cells("Figure 5", tidy.fig5_data(), tidy.fig5_data(index), ["model", "task"],
               lambda r: r["task"], 0.05),
    ]
    out = pd.concat(parts, ignore_index=True)
    out["difference"] = out["index"] - out["paper"]
    out["differs"] = (out["difference"].abs() > out["tolerance"] + 1e-9).fillna(False)
    return out[[*_KEYS, "paper", "index", "difference", "tolerance", "differs"]]


def style_comparison(table: pd.DataFrame, *, only_differences: bool = False) -> Styler:
    """The comparison as a Styler: rows that differ beyond the rounding are shaded red."""
    shown = table[table["differs"]] if only_differences else table

    def shade(row: pd.Series) -> list[str]:
        return ["background-color: #f8d0d0" if row["differs"] else ""] * len(row)

    styler = shown.style.apply(shade, axis=1)
    styler = styler.format({"paper": "{:.2f}", "index": "{:.2f}", "difference": "{:+.2f}",
                            "tolerance": "{:g}"}, na_rep="-")
    n = int(table["differs"].sum())
    return styler.set_caption(
        f"Index-derived numbers beside the paper's: {n} of {len(table)} differ beyond the "
        "paper's rounding.")
