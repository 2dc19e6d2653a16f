"""Tables 3 and 5 as styled DataFrames, and own fine-tunes beside the published ones.

    from augreg_nb import figures
    figures.style_table3(figures.table3_data())         # pandas Styler, shows in a notebook
    figures.style_table5(figures.table5_data())          # the whole table (22 columns)
    figures.style_table5_groups(figures.table5_data())   # one table per VTAB group: fits
    figures.compare_finetunes(own_rows)                  # own results vs the published rows
    figures.result_rows_view(own_rows)                   # own rows without empty columns
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from augreg_nb.figures import derive, paper
from augreg_nb.figures.heatmaps import NotebookFigure
from augreg_nb.names import parse_name
from augreg_nb.resources import data_path

_ACC_COLUMNS = [c for c in paper.TABLE3_HEADERS if not c.startswith("img_sec")]


def _bold_max(col: pd.Series) -> list[str]:
    best = col.max()
    return ["font-weight: bold" if v == best else "" for v in col]


def _mark_rows(df: pd.DataFrame, highlight) -> pd.DataFrame:
    marks = set([highlight] if isinstance(highlight, str) else highlight or [])
    model_of = (lambda key: key[-1]) if df.index.nlevels > 1 else (lambda key: key)
    return pd.DataFrame(
        [["background-color: #fff3b0" if model_of(k) in marks else ""] * df.shape[1]
         for k in df.index],
        index=df.index, columns=df.columns,
    )


def style_table3(table: pd.DataFrame, *, highlight=None, caption: str | None = None) -> Styler:
    """Table 3 (from :func:`table3_data`) with the paper's headers, best value per column
    in bold, missing cells as "-", and the ``highlight`` model's row shaded."""
    shown = table.rename(columns=paper.TABLE3_HEADERS)
    acc = [paper.TABLE3_HEADERS[c] for c in _ACC_COLUMNS if c in table.columns]
    speed = [paper.TABLE3_HEADERS[c] for c in ("img_sec_224", "img_sec_384")]
    styler = shown.style.format("{:.2f}", subset=acc, na_rep="-")
    styler = styler.format("{:.0f}", subset=speed, na_rep="-")
    styler = styler.apply(_bold_max, subset=acc).apply(
        _mark_rows, axis=None, highlight=highlight)
    return styler.set_caption(caption or (
        "Table 3: ImageNet-1k top-1 (%) after fine-tuning at 224 and 384 px; img/s on one "
        "V100; i1k up: ImageNet-1k models evaluated without fine-tuning."))


def style_table5(tidy: pd.DataFrame, *, highlight=None, caption: str | None = None,
                 group: str | None = None) -> Styler:
    """Table 5 (from :func:`table5_data`): VTAB top-1 (%) per pre-training set and
    model, tasks grouped as natural / specialized / structured with their means.
    ``group``: that group's tasks and mean only (see :func:`style_table5_groups`). The model
    columns stay in view when the table scrolls sideways (sticky)."""
    if group is not None:
        if group not in paper.VTAB_GROUPS:
            raise ValueError(f"group must be one of {list(paper.VTAB_GROUPS)}, not {group!r}")
        tidy = tidy[tidy["group"] == group]
    order = {d: i for i, d in enumerate(dict.fromkeys(tidy["dataset"]))}
    wide = tidy.pivot_table(index=["pretrain", "model"], columns=["group", "dataset"],
                            values="top1", sort=False)
    wide = wide[sorted(wide.columns, key=lambda c: (paper.VTAB_GROUPS.index(c[0]),
                                                     order[c[1]]))]
    pretrain_order = list(paper.DS_TABLE5.values())
    wide = wide.reindex(sorted(wide.index, key=lambda k: (
        pretrain_order.index(k[0]) if k[0] in pretrain_order else 99,
        paper.PAPER_MODELS.index(k[1]) if k[1] in paper.PAPER_MODELS else 99)))
    wide.columns = pd.MultiIndex.from_tuples(
        [(g, d.replace("Mean_", "Mean ")) for g, d in wide.columns])
    means = [c for c in wide.columns if c[1].startswith("Mean")]
    styler = wide.style.format("{:.1f}", na_rep="-")
    styler = styler.set_properties(subset=means, **{"font-weight": "bold"})
    styler = styler.apply(_mark_rows, axis=None, highlight=highlight)
    styler = styler.set_sticky(axis="index")
    return styler.set_caption(caption or (
        "Table 5: VTAB top-1 (%) of every model and pre-training set, per task and "
        "group mean."))


class GroupedTables:
    """Tables shown one under the other, each in a box that scrolls sideways on a narrow
    screen (its first columns sticky): what :func:`style_table5_groups` returns. Has the
    ``to_html()`` of a Styler, and displays itself in a notebook."""

    def __init__(self, stylers: dict[str, Styler]):
        self.stylers = stylers

    def to_html(self) -> str:
        return "".join(
            f"<div class='augreg-table-group' style='overflow-x:auto;max-width:100%;"
            f"margin-bottom:1em'>{s.to_html()}</div>" for s in self.stylers.values())

    def _repr_html_(self) -> str:
        return self.to_html()

    @property
    def data(self) -> pd.DataFrame:
        """The groups' columns side by side (the whole Table 5)."""
        return pd.concat([s.data for s in self.stylers.values()], axis=1)


def style_table5_groups(tidy: pd.DataFrame, *, highlight=None) -> GroupedTables:
    """Table 5 as three tables, natural / specialized / structured, each with its mean:
    the 22 columns of the whole table need about 1,700 px, one group fits a notebook."""
    present = [g for g in paper.VTAB_GROUPS if (tidy["group"] == g).any()]
    return GroupedTables({
        g: style_table5(tidy, highlight=highlight, group=g, caption=(
            f"Table 5, {g} tasks: VTAB-1k top-1 (%) of every model and pre-training set, "
            f"per task and the group's mean."))
        for g in present})


#: A result row's columns in the order a reader wants them (the run, then its accuracy).
RESULT_VIEW_COLUMNS = ("adapt_ds", "name", "ds", "aug", "wd", "do", "sd", "adapt_steps",
                       "adapt_lr", "adapt_resolution", "adapt_final_val", "adapt_final_test")


def result_rows_view(rows) -> pd.DataFrame:
    """Own result rows (index schema, with any extra columns) as a reader wants them: the
    columns that hold a value in some row, the run's settings and accuracies first
    (:data:`RESULT_VIEW_COLUMNS`), then the other filled ones; columns empty in every row
    (upstream metrics a fine-tune does not know, for instance) are left out."""
    rows = derive.as_rows(rows)
    filled = [c for c in rows.columns if rows[c].notna().any()
              and not (rows[c].astype(str).str.strip() == "").all()]
    first = [c for c in RESULT_VIEW_COLUMNS if c in filled]
    return rows[first + [c for c in filled if c not in first]].reset_index(drop=True)


def _published_rows() -> pd.DataFrame:
    known = pd.read_csv(data_path("index", "index_csv_known_rows_union.csv"))
    return known[list(derive.INDEX_COLUMNS)]


def compare_finetunes(own, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Own fine-tune result rows beside the published row of the same checkpoint.

    ``own``: a DataFrame in the index schema, ``FinetuneResult.result_row`` dicts or
    ``FinetuneResult`` objects; ``published``: an index table. Rows are matched on
    ``adapt_filename`` (same upstream, task, steps, learning rate and resolution).
    ``published`` defaults to the real index rows shipped with the package. Columns:
    adapt_filename, model, adapt_ds, adapt_resolution, own_val, own_test, published_val,
    published_test, difference (own minus published test accuracy, percentage points).
    """
    own = derive.as_rows(own)
    derive.check_index(own, ("name", "adapt_ds", "adapt_resolution", "adapt_final_val",
                             "adapt_final_test", "adapt_filename"))
    published = _published_rows() if published is None else published
    derive.check_index(published, ("adapt_final_val", "adapt_final_test", "adapt_filename"))
    pub = published.drop_duplicates("adapt_filename").set_index("adapt_filename")
    out = pd.DataFrame({
        "adapt_filename": own["adapt_filename"].to_numpy(),
        "model": own["name"].to_numpy(),
        "adapt_ds": own["adapt_ds"].to_numpy(),
        "adapt_resolution": own["adapt_resolution"].to_numpy(),
        "own_val": 100 * own["adapt_final_val"].to_numpy(dtype=float),
        "own_test": 100 * own["adapt_final_test"].to_numpy(dtype=float),
    })
    out["published_val"] = 100 * out["adapt_filename"].map(pub["adapt_final_val"])
    out["published_test"] = 100 * out["adapt_filename"].map(pub["adapt_final_test"])
    out["difference"] = out["own_test"] - out["published_test"]
    return out


def _label(adapt_filename: str) -> str:
    """``R26+S/32 i21k light1 wd0.1 -> oxford_iiit_pet 2500 steps lr 0.03 384 px``."""
    try:
        n = parse_name(adapt_filename, any_task=True)
    except ValueError:
        return adapt_filename
    reg = f" do{n.do:g}" if n.do else ""
    return (f"{n.model} {n.pretraining} {n.aug_paper} wd{n.wd:g}{reg} -> {n.adapt_ds} "
            f"{n.adapt_steps} steps lr {n.adapt_lr:g} {n.adapt_resolution} px")


def plot_finetunes(comparison: pd.DataFrame, ax=None, *, highlight=None) -> Figure:
    """Own test accuracy (black star) beside the published one (hollow circle) per
    fine-tune, from :func:`compare_finetunes`."""
    if ax is None:
        fig = NotebookFigure(figsize=(9, 0.45 * len(comparison) + 1.4), layout="constrained")
        ax = fig.subplots()
    labels = [_label(name) for name in comparison["adapt_filename"]]
    y = np.arange(len(comparison))
    ax.scatter(comparison["published_test"], y, s=50, facecolors="white",
               edgecolors="tab:blue", linewidths=1.5, label="published", zorder=3)
    ax.scatter(comparison["own_test"], y, marker="*", s=120, color="black", label="own",
               zorder=4)
    ax.set_yticks(y, labels, fontsize=9)
    marks = set([highlight] if isinstance(highlight, str) else highlight or [])
    for tick, model in zip(ax.get_yticklabels(), comparison["model"], strict=True):
        if model in marks:
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlabel("Test accuracy (%)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    ax.set_title("Own fine-tunes vs the published ones", fontsize=10)
    return ax.figure
