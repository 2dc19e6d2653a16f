"""Line and scatter figures: Figure 1, Figure 3 and Figure 6.

Each ``plot_*`` takes the tidy frame of the matching builder in
:mod:`augreg_nb.figures.tidy` and returns a matplotlib Figure (no data loading, no
``plt.show()``, no global style changes). ``highlight`` outlines each given model's
points in its own colour and marker, listed in the legend;
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
from augreg_nb.figures.heatmaps import HIGHLIGHT_COLORS, _highlights, panel_axes
from augreg_nb.figures.tidy import FIG1_LABELS, FIG1_MODELS, FIG1_PRETRAIN

#: One colour per pre-training set (shared by every figure).
DS_COLORS = {"i1k": "tab:blue", "i21k_30": "tab:orange", "i21k": "tab:green"}
MODEL_COLORS = {"B/32": "tab:purple", "B/16": "tab:blue", "L/16": "tab:red"}
#: Font size (pt) of every label; figures are at most 9 inches (900 px) wide, the width of a
#: notebook's output area, so it stays 9 pt on screen.
FONT = 9
#: Marker of each highlighted model, in order (with :data:`HIGHLIGHT_COLORS`).
HIGHLIGHT_MARKERS = ("o", "s", "D", "^", "v", "P")
#: Where a point's label may go (offset points), tried in order until it overlaps nothing.
_LABEL_OFFSETS = ((0, -7), (0, 6), (6, 0), (-6, 0), (6, -7), (-6, -7), (6, 6), (-6, 6))


def _log_speed_axis(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=FONT)


def highlight_style(highlight: list[str]) -> dict[str, tuple[str, str]]:
    """Model -> (colour, marker) of its highlight: each highlighted model its own."""
    n = len(HIGHLIGHT_COLORS)
    return {m: (HIGHLIGHT_COLORS[k % n], HIGHLIGHT_MARKERS[k % len(HIGHLIGHT_MARKERS)])
            for k, m in enumerate(highlight)}


def _ring(ax, pts: pd.DataFrame, x: str, y: str, model_col: str | None,
          styles: dict[str, tuple[str, str]]) -> None:
    """Outline the points of each highlighted model in its own colour and marker."""
    models = pts[model_col] if model_col else pd.Series(pts.index, index=pts.index)
    for model, (color, marker) in styles.items():
        mine = pts[(models == model).to_numpy()]
        if len(mine):
            ax.scatter(mine[x], mine[y], s=190, marker=marker, facecolors="none",
                       edgecolors=color, linewidths=2, zorder=5)


def _highlight_handles(styles: dict[str, tuple[str, str]]) -> list:
    return [Line2D([], [], ls="", marker=marker, ms=11, mfc="none", mec=color, mew=2,
                   label=f"highlighted: {model}") for model, (color, marker) in styles.items()]


def _marker_boxes(ax, renderer) -> list:
    """Screen boxes of the scatter markers drawn in ``ax``."""
    from matplotlib.collections import PathCollection
    from matplotlib.transforms import Bbox

    boxes = []
    scale = ax.figure.dpi / 72
    for coll in ax.collections:
        if not isinstance(coll, PathCollection):
            continue
        xy = coll.get_offset_transform().transform(coll.get_offsets())
        sizes = coll.get_sizes()
        for k, (x, y) in enumerate(xy):
            if not np.isfinite([x, y]).all():
                continue
            size = sizes[k % len(sizes)] if len(sizes) else 36.0
            r = 0.5 * np.sqrt(size) * scale
            boxes.append(Bbox([[x - r, y - r], [x + r, y + r]]))
    return boxes


def place_labels(ax, points, *, fontsize: float = FONT, color: str = "dimgray") -> list:
    """Label points without overlaps: each ``(x, y, text)`` of ``points`` gets the first of
    a few positions around its point (then farther ones) where its text overlaps no label
    placed before and stays inside the axes. Returns the annotations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the final layout, so positions on screen are known
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed, out = [], []
    blocked = _marker_boxes(ax, renderer)  # labels keep off the points, the legend too
    legend = ax.get_legend()
    if legend is not None:
        blocked.append(legend.get_window_extent(renderer))
    candidates = [(dx * r, dy * r) for r in (1, 2, 3) for dx, dy in _LABEL_OFFSETS]
    for x, y, text in points:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        chosen = None
        for dx, dy in candidates:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              ha="center" if dx == 0 else ("left" if dx > 0 else "right"),
                              va="center" if dy == 0 else ("bottom" if dy > 0 else "top"),
                              fontsize=fontsize, color=color, annotation_clip=False)
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            fits = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
                    and box.y1 <= inside.y1)
            if fits and not any(box.overlaps(other) for other in (*placed, *blocked)):
                chosen = ann
                placed.append(box)
                break
            ann.remove()
        if chosen is not None:
            out.append(chosen)
    return out


def plot_fig3(tidy: pd.DataFrame, ax=None, *, highlight=None) -> Figure:
    """Figure 3: VTAB group means (natural, specialized, structured) against 224 px
    inference speed (V100 img/s, log scale), one colour per pre-training set; a grey line
    joins each model's three points. Highlighted models get their own colour and marker.
    Rows with ``ds == "own"`` (own full-VTAB runs, see ``fig3_data(own=...)``) are black stars
    at their model's published speed."""
    axes = panel_axes(ax, 3, (9, 10.5), stacked=True)
    styles = highlight_style(_highlights(highlight))
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
            panel_ax.scatter(pts["img_per_sec"], pts["vtab_mean"], s=24, zorder=3,
                             color=DS_COLORS[ds], label=paper.DS_LABELS[ds])
        _ring(panel_ax, part, "img_per_sec", "vtab_mean", "model", styles)
        _log_speed_axis(panel_ax)
        panel_ax.set_title(f"VTAB {group}", fontsize=FONT + 1)
        panel_ax.set_xlabel("Inference speed (img/s, V100, 224 px)", fontsize=FONT)
        panel_ax.set_ylabel("Mean top-1 (%)", fontsize=FONT)
        panel_ax.tick_params(labelsize=FONT)
    handles, _ = axes[0].get_legend_handles_labels()
    axes[0].legend(handles=handles + _highlight_handles(styles), fontsize=FONT,
                   loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for panel_ax, group in zip(axes, paper.VTAB_GROUPS, strict=True):
        part = tidy[tidy["group"] == group]
        low = part.sort_values("vtab_mean").drop_duplicates("model", keep="first")
        place_labels(panel_ax, zip(low["img_per_sec"], low["vtab_mean"], low["model"],
                                   strict=True))
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
    left, right = panel_axes(ax, 2, (9, 9), stacked=True)
    styles = highlight_style(_highlights(highlight))
    for ds in paper.DATASETS:
        for res, face in ((224, DS_COLORS[ds]), (384, "white")):
            pts = tidy[(tidy["ds"] == ds) & (tidy["resolution"] == res)]
            left.scatter(pts["img_per_sec"], pts["top1"], s=22, facecolors=face,
                         edgecolors=DS_COLORS[ds], linewidths=1.1, zorder=3)
            main = ["S/16", "B/16"] if ds == "i1k" else ["S/16", "B/16", "L/16"]
            line = pts.set_index("model").reindex(main).dropna(subset=["top1"])
            left.plot(line["img_per_sec"], line["top1"], "-", color=DS_COLORS[ds], lw=1,
                      alpha=0.8, zorder=2)
    _ring(left, tidy, "img_per_sec", "top1", "model", styles)
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
    left.legend(handles=handles + _highlight_handles(styles), fontsize=FONT,
                loc="upper left", bbox_to_anchor=(1.01, 1.0))
    left.set_title("ImageNet-1k transfer", fontsize=FONT + 1)
    labels = _plot_patch_vs_width(right, tidy[tidy["resolution"] == 224], styles)
    for panel_ax in (left, right):
        _log_speed_axis(panel_ax)
        panel_ax.set_xlabel("Inference speed (img/s, V100)", fontsize=FONT)
        panel_ax.set_ylabel("ImageNet-1k top-1 (%)", fontsize=FONT)
    best = tidy.sort_values("top1").drop_duplicates("model", keep="last")
    place_labels(left, zip(best["img_per_sec"], best["top1"], best["model"], strict=True))
    place_labels(right, labels, color="black")
    return left.figure


def _plot_patch_vs_width(ax, tidy: pd.DataFrame, styles) -> list:
    """Draw the right panel of Figure 6; returns its (x, y, model) labels to place."""
    families = (("S/16", "S/32", "Ti/16"), ("B/16", "B/32", "S/16"))
    names = list(dict.fromkeys(m for fam in families for m in fam))
    labels = []
    for ds in paper.DATASETS:
        pts = tidy[tidy["ds"] == ds].set_index("model")
        pts = pts[~pts.index.duplicated()]
        for base, patch, thin in families:
            if base not in pts.index:
                continue
            for other, style in ((patch, "-"), (thin, "--")):
                if other in pts.index:
                    seg = pts.loc[[base, other]]
                    ax.plot(seg["img_per_sec"], seg["top1"], style, color=DS_COLORS[ds],
                            marker="o", ms=4, lw=1.2)
        if ds == "i21k":
            labels = [(pts.loc[m, "img_per_sec"], pts.loc[m, "top1"], m)
                      for m in names if m in pts.index]
        _ring(ax, pts[pts.index.isin(names)], "img_per_sec", "top1", None, styles)
    handles = [
        Line2D([], [], color="gray", ls="-", label="larger patch (/32)"),
        Line2D([], [], color="gray", ls="--", label="thinner model (/16)"),
    ] + [Line2D([], [], color=DS_COLORS[d], label=paper.DS_LABELS[d]) for d in paper.DATASETS]
    ax.legend(handles=handles, fontsize=FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Larger patch vs thinner model (224 px)", fontsize=FONT + 1)
    return labels


def plot_fig1(tidy: pd.DataFrame, ax=None, *, highlight=None,
              overlay=None) -> Figure:
    """Figure 1: ImageNet-1k top-1 of B/32, B/16, L/16 against pre-training data, with
    AugReg (solid) and without (dashed); JFT-300M points from Table 3 (stars).

    ``overlay``: own ``imagenet2012`` result rows (index schema) of these models at the
    figure's resolution, drawn as black stars at their upstream's pre-training set.
    """
    (panel_ax,) = panel_axes(ax, 1, (7.5, 4.8))
    styles = highlight_style(_highlights(highlight))
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
        if model in styles:
            shown = part.dropna(subset=["top1"])
            shown = shown.assign(_x=shown["pretrain"].map(xpos))
            _ring(panel_ax, shown, "_x", "top1", "model", styles)
    own = _overlay_points(overlay, "imagenet2012")
    own = own[own["name"].isin(FIG1_MODELS) & own["ds"].isin(list(xpos))
              & own["adapt_resolution"].isin(tidy["resolution"].unique())]
    # astype(float): with no own row left, map() keeps the string dtype and "+" fails.
    own_x = own["ds"].astype(object).map(xpos).astype(float) + 0.08
    panel_ax.scatter(own_x, 100 * own["adapt_final_test"].astype(float), marker="*",
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
    handles += _highlight_handles({m: st for m, st in styles.items() if m in FIG1_MODELS})
    panel_ax.legend(handles=handles, fontsize=FONT, loc="best")
    panel_ax.set_xticks(range(len(FIG1_PRETRAIN)), [FIG1_LABELS[p] for p in FIG1_PRETRAIN])
    panel_ax.set_xlim(-0.4, len(FIG1_PRETRAIN) - 0.6)
    panel_ax.set_xlabel("Pre-training data", fontsize=FONT)
    panel_ax.set_ylabel("ImageNet-1k top-1 (%)", fontsize=FONT)
    panel_ax.tick_params(labelsize=FONT)
    panel_ax.grid(True, axis="y", alpha=0.3)
    panel_ax.set_title("AugReg vs more pre-training data", fontsize=FONT + 1)
    return panel_ax.figure
