"""Line and scatter figures: Figure 1, Figure 3 and Figure 6.

Each ``plot_*`` takes the tidy frame of the matching builder in
:mod:`augreg_nb.figures.tidy` and returns a matplotlib Figure (no data loading, no
``plt.show()``, no global style changes). ``highlight`` rings a model's points;
``overlay`` (Figures 1 and 6) adds your own fine-tune result rows, in the index schema,
as black stars next to the published points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from augreg_nb.figures import derive, paper
from augreg_nb.figures.heatmaps import _highlights, panel_axes
from augreg_nb.figures.tidy import FIG1_LABELS, FIG1_MODELS, FIG1_PRETRAIN

#: One colour per pre-training set (shared by every figure).
DS_COLORS = {"i1k": "tab:blue", "i21k_30": "tab:orange", "i21k": "tab:green"}
MODEL_COLORS = {"B/32": "tab:purple", "B/16": "tab:blue", "L/16": "tab:red"}
FONT = 8


def _log_speed_axis(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=FONT)


def _ring(ax, x, y) -> None:
    ax.scatter(x, y, s=160, facecolors="none", edgecolors="black", linewidths=1.5, zorder=5)


def plot_fig3(tidy: pd.DataFrame, ax=None, *, highlight=None) -> Figure:
    """Figure 3: VTAB-1k group means (natural, specialized, structured) against 224 px
    inference speed (V100 img/s, log scale), one colour per pre-training set; a grey line
    joins each model's three points. Rows with ``ds == "own"`` (own VTAB-1k runs, see
    ``fig3_data(own=...)``) are black stars at their model's published speed."""
    axes = panel_axes(ax, 3, (10, 3.6))
    highlight = _highlights(highlight)
    own = tidy[tidy["ds"] == "own"].dropna(subset=["img_per_sec", "vtab_mean"])
    tidy = tidy[tidy["ds"] != "own"]
    for panel_ax, group in zip(axes, paper.VTAB_GROUPS, strict=True):
        mine = own[own["group"] == group]
        if len(mine):
            panel_ax.scatter(mine["img_per_sec"], mine["vtab_mean"], marker="*", s=140,
                             color="black", zorder=6, label="own")
        part = tidy[tidy["group"] == group]
        for _, pts in part.groupby("model"):
            panel_ax.plot(pts["img_per_sec"], pts["vtab_mean"], "-", color="lightgray",
                          lw=1, zorder=1)
        for ds in paper.DATASETS:
            pts = part[part["ds"] == ds]
            panel_ax.scatter(pts["img_per_sec"], pts["vtab_mean"], s=20, zorder=3,
                             color=DS_COLORS[ds], label=paper.DS_LABELS[ds])
            marked = pts[pts["model"].isin(highlight)]
            _ring(panel_ax, marked["img_per_sec"], marked["vtab_mean"])
        low = part.sort_values("vtab_mean").drop_duplicates("model", keep="first")
        for _, row in low.iterrows():
            panel_ax.annotate(row["model"], (row["img_per_sec"], row["vtab_mean"]),
                              xytext=(0, -9), textcoords="offset points", ha="center",
                              fontsize=FONT - 2, color="dimgray")
        _log_speed_axis(panel_ax)
        panel_ax.set_title(f"VTAB-1k {group}", fontsize=FONT + 2)
        panel_ax.set_xlabel("Inference speed (img/s, V100, 224 px)", fontsize=FONT)
    axes[0].set_ylabel("Mean top-1 accuracy (%)", fontsize=FONT)
    axes[0].legend(fontsize=FONT - 1, loc="lower left")
    return axes[0].figure


def _overlay_points(overlay, adapt_ds: str) -> pd.DataFrame:
    overlay = None if overlay is None else derive.as_rows(overlay)
    if overlay is None or len(overlay) == 0:
        return pd.DataFrame(columns=["name", "ds", "adapt_resolution",
                                     "infer_samples_per_sec", "adapt_final_test"])
    derive.check_index(overlay, ("name", "ds", "adapt_ds", "adapt_resolution",
                                 "adapt_final_test", "infer_samples_per_sec"))
    return overlay[overlay["adapt_ds"] == adapt_ds]


def plot_fig6(tidy: pd.DataFrame, ax=None, *, highlight=None,
              overlay=None) -> Figure:
    """Figure 6: ImageNet-1k top-1 after fine-tuning against inference speed (log scale).

    Left: every model, pre-training set (colour) and resolution (filled 224 px, hollow
    384 px); S/16, B/16, L/16 are joined per set and resolution (not L/16 on ImageNet-1k,
    where the trend breaks). Right: larger patch vs thinner model at 224 px: from S/16 and
    B/16, the /32 model of the same width (solid) against the thinner /16 model (dashed).
    ``overlay``: own ``imagenet2012`` result rows (index schema) as black stars; their
    speed is the row's ``infer_samples_per_sec`` or, when missing, the published one.
    """
    left, right = panel_axes(ax, 2, (10, 4.2))
    highlight = _highlights(highlight)
    for ds in paper.DATASETS:
        for res, face in ((224, DS_COLORS[ds]), (384, "white")):
            pts = tidy[(tidy["ds"] == ds) & (tidy["resolution"] == res)]
            left.scatter(pts["img_per_sec"], pts["top1"], s=22, facecolors=face,
                         edgecolors=DS_COLORS[ds], linewidths=1.1, zorder=3)
            main = ["S/16", "B/16"] if ds == "i1k" else ["S/16", "B/16", "L/16"]
            line = pts.set_index("model").reindex(main).dropna(subset=["top1"])
            left.plot(line["img_per_sec"], line["top1"], "-", color=DS_COLORS[ds], lw=1,
                      alpha=0.8, zorder=2)
            marked = pts[pts["model"].isin(highlight)]
            _ring(left, marked["img_per_sec"], marked["top1"])
    best = tidy.sort_values("top1").drop_duplicates("model", keep="last")
    for _, row in best.iterrows():
        left.annotate(row["model"], (row["img_per_sec"], row["top1"]), xytext=(3, 3),
                      textcoords="offset points", fontsize=FONT - 2, color="dimgray")
    own = _overlay_points(overlay, "imagenet2012")
    speed = tidy.set_index(["model", "resolution"])["img_per_sec"]
    speed = speed[~speed.index.duplicated()]
    for _, row in own.iterrows():
        x = row["infer_samples_per_sec"]
        if pd.isna(x):
            x = speed.get((row["name"], int(row["adapt_resolution"])), np.nan)
        left.scatter([x], [100 * row["adapt_final_test"]], marker="*", s=140, color="black",
                     zorder=6)
    handles = [Line2D([], [], color=DS_COLORS[d], marker="o", lw=1, label=paper.DS_LABELS[d])
               for d in paper.DATASETS]
    handles += [
        Line2D([], [], ls="", marker="o", color="gray", label="224 px"),
        Line2D([], [], ls="", marker="o", mfc="white", color="gray", label="384 px"),
    ]
    if len(own):
        handles.append(Line2D([], [], ls="", marker="*", ms=10, color="black", label="own"))
    left.legend(handles=handles, fontsize=FONT - 1, loc="lower left")
    left.set_title("ImageNet-1k transfer", fontsize=FONT + 2)
    _plot_patch_vs_width(right, tidy[tidy["resolution"] == 224], highlight)
    for panel_ax in (left, right):
        _log_speed_axis(panel_ax)
        panel_ax.set_xlabel("Inference speed (img/s, V100)", fontsize=FONT)
    left.set_ylabel("ImageNet-1k top-1 (%)", fontsize=FONT)
    return left.figure


def _plot_patch_vs_width(ax, tidy: pd.DataFrame, highlight: set[str]) -> None:
    families = (("S/16", "S/32", "Ti/16"), ("B/16", "B/32", "S/16"))
    for ds in paper.DATASETS:
        pts = tidy[tidy["ds"] == ds].set_index("model")
        for base, patch, thin in families:
            if base not in pts.index:
                continue
            for other, style in ((patch, "-"), (thin, "--")):
                if other in pts.index:
                    seg = pts.loc[[base, other]]
                    ax.plot(seg["img_per_sec"], seg["top1"], style, color=DS_COLORS[ds],
                            marker="o", ms=4, lw=1.2)
        names = [m for fam in families for m in fam]
        for model in dict.fromkeys(names):
            if model in pts.index and ds == "i21k":
                ax.annotate(model, (pts.loc[model, "img_per_sec"], pts.loc[model, "top1"]),
                            xytext=(3, 4), textcoords="offset points", fontsize=FONT - 1)
        marked = pts[pts.index.isin(highlight) & pts.index.isin(names)]
        _ring(ax, marked["img_per_sec"], marked["top1"])
    handles = [
        Line2D([], [], color="gray", ls="-", label="larger patch (/32)"),
        Line2D([], [], color="gray", ls="--", label="thinner model (/16)"),
    ] + [Line2D([], [], color=DS_COLORS[d], label=paper.DS_LABELS[d]) for d in paper.DATASETS]
    ax.legend(handles=handles, fontsize=FONT - 1, loc="lower left")
    ax.set_title("Larger patch vs thinner model (224 px)", fontsize=FONT + 2)


def plot_fig1(tidy: pd.DataFrame, ax=None, *, highlight=None,
              overlay=None) -> Figure:
    """Figure 1: ImageNet-1k top-1 of B/32, B/16, L/16 against pre-training data, with
    AugReg (solid) and without (dashed); JFT-300M points from Table 3 (stars).

    ``overlay``: own ``imagenet2012`` result rows (index schema) of these models at the
    figure's resolution, drawn as black stars at their upstream's pre-training set.
    """
    (panel_ax,) = panel_axes(ax, 1, (6, 4.2))
    highlight = _highlights(highlight)
    xpos = {p: i for i, p in enumerate(FIG1_PRETRAIN)}
    for model in FIG1_MODELS:
        part = tidy[tidy["model"] == model]
        color = MODEL_COLORS[model]
        for augreg, style in ((True, "-"), (False, "--")):
            pts = part[(part["augreg"] == augreg) & (part["pretrain"] != "jft300m")]
            pts = pts.dropna(subset=["top1"])
            panel_ax.plot(pts["pretrain"].map(xpos), pts["top1"], style, marker="o", ms=5,
                          color=color, mfc=color if augreg else "white")
        jft = part[part["pretrain"] == "jft300m"].dropna(subset=["top1"])
        panel_ax.plot(jft["pretrain"].map(xpos), jft["top1"], "*", ms=11, color=color)
        if model in highlight:
            shown = part.dropna(subset=["top1"])
            _ring(panel_ax, shown["pretrain"].map(xpos), shown["top1"])
    own = _overlay_points(overlay, "imagenet2012")
    own = own[own["name"].isin(FIG1_MODELS) & own["ds"].isin(list(xpos))
              & own["adapt_resolution"].isin(tidy["resolution"].unique())]
    panel_ax.scatter(own["ds"].map(xpos) + 0.08, 100 * own["adapt_final_test"], marker="*",
                     s=140, color="black", zorder=6)
    handles = [Line2D([], [], color=MODEL_COLORS[m], marker="o", label=f"ViT-{m}")
               for m in FIG1_MODELS]
    handles += [
        Line2D([], [], color="gray", ls="-", label="with AugReg"),
        Line2D([], [], color="gray", ls="--", mfc="white", marker="o", label="without AugReg"),
        Line2D([], [], color="gray", ls="", marker="*", ms=10, label="JFT-300M (Table 3)"),
    ]
    if len(own):
        handles.append(Line2D([], [], ls="", marker="*", ms=10, color="black", label="own"))
    panel_ax.legend(handles=handles, fontsize=FONT - 1, loc="best")
    panel_ax.set_xticks(range(len(FIG1_PRETRAIN)), [FIG1_LABELS[p] for p in FIG1_PRETRAIN])
    panel_ax.set_xlim(-0.4, len(FIG1_PRETRAIN) - 0.6)
    panel_ax.set_xlabel("Pre-training data", fontsize=FONT)
    panel_ax.set_ylabel("ImageNet-1k top-1 (%)", fontsize=FONT)
    panel_ax.tick_params(labelsize=FONT)
    panel_ax.grid(True, axis="y", alpha=0.3)
    panel_ax.set_title("AugReg vs more pre-training data", fontsize=FONT + 2)
    return panel_ax.figure
