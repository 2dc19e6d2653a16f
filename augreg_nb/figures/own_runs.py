"""Figures of your own AugReg runs (:mod:`augreg_nb.grid`): a Figure-4-style heat map and a
Figure-2-style plot of accuracy against training compute, from scratch vs from a checkpoint.

    from augreg_nb.figures.own_runs import plot_grid_heatmap, plot_compute
    plot_grid_heatmap(result.rows)                   # starts x (reg, aug), test accuracy
    plot_compute(result.rows, result.histories)      # accuracy vs images seen, per run

The paper's Figure 2 plots the accuracy on a task against the compute spent on that task,
for models trained there from scratch (with AugReg) and for pre-trained models fine-tuned;
here the compute is the number of training images seen (steps x batch), which is
proportional to FLOPs for one model and resolution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from augreg_nb.figures.heatmaps import FONT, _draw_grid, panel_axes
from augreg_nb.figures.tidy import AUGS
from augreg_nb.names import index_to_paper_aug

#: Colour of each start in :func:`plot_compute`.
START_COLORS = {"scratch": "tab:orange", "checkpoint": "tab:blue"}
#: Marker of each augmentation (the paper's names) in :func:`plot_compute`.
AUG_MARKERS = dict(zip(AUGS, "osD^v<>", strict=False))


def plot_grid_heatmap(rows: pd.DataFrame, ax=None, *,
                      measure: str = "adapt_final_test") -> Figure:
    """Heat map of a grid's runs: one row per start, columns the augmentations (the paper's
    names and order) without and with regularisation; cells show the accuracy (%), colour
    its difference to the row's none / no-reg cell (as in the paper's Figure 4)."""
    (axis,) = panel_axes(ax, 1, (6.5, 1.8 + 0.45 * max(1, rows["start"].nunique())))
    if rows.empty:
        raise ValueError("no finished runs to plot: run the grid first")
    rows = rows.assign(aug=rows["aug"].map(index_to_paper_aug))
    augs = [a for a in AUGS if a in set(rows["aug"])]
    regs = [r for r in (False, True) if r in set(rows["reg"])]
    starts = [s for s in ("scratch", "checkpoint") if s in set(rows["start"])]
    wide = rows.pivot_table(index="start", columns=["reg", "aug"], values=measure,
                            aggfunc="mean") * 100
    cols = [(r, a) for r in regs for a in augs]
    values = wide.reindex(index=starts, columns=pd.MultiIndex.from_tuples(cols)).to_numpy(float)
    base = values[:, [0]]
    diff = values - base
    vmax = max(2.0, float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 2.0)
    labels = [["" if np.isnan(v) else f"{v:.0f}" for v in row] for row in values]
    mesh = _draw_grid(axis, diff, labels, np.arange(len(cols) + 1), starts,
                      TwoSlopeNorm(0.0, -vmax, vmax), set())
    axis.set_xticks(np.arange(len(cols)) + 0.5, [a for _, a in cols], rotation=90)
    if len(regs) == 2:
        axis.axvline(len(augs), color="black", linewidth=1.0)
    for k, reg in enumerate(regs):
        axis.text(k * len(augs) + len(augs) / 2, -0.15, "reg 0.1" if reg else "no reg",
                  ha="center", va="bottom", fontsize=FONT + 1, style="italic")
    task = ", ".join(sorted(set(rows["adapt_ds"].astype(str))))
    axis.set_title(f"Your runs on {task}: {measure.replace('adapt_final_', '')} accuracy (%)",
                   pad=26, fontsize=FONT + 3)
    fig = axis.figure
    if ax is None:
        bar = fig.colorbar(mesh, ax=axis, shrink=0.8, pad=0.01)
        bar.set_label("vs none, no reg (%)", fontsize=FONT + 1)
        bar.ax.tick_params(labelsize=FONT)
    return fig


def plot_compute(rows: pd.DataFrame, histories: dict[str, pd.DataFrame], ax=None, *,
                 split: str = "test") -> Figure:
    """Accuracy against training images seen for every run: each evaluation of a run is a
    point, from scratch in orange, from a checkpoint in blue, regularised runs dashed, one
    marker per augmentation; the label names all three. Log x axis, as in the paper's Figure 2."""
    (axis,) = panel_axes(ax, 1, (6.0, 4.0))
    if rows.empty:
        raise ValueError("no finished runs to plot: run the grid first")
    column = f"{split}_accuracy"
    for _, row in rows.iterrows():
        h = histories.get(row["adapt_filename"])
        if h is None or column not in h:
            continue
        h = h.dropna(subset=[column])
        reg = ", reg" if row["reg"] else ""
        aug = index_to_paper_aug(row["aug"])
        axis.plot(h["images_seen"], 100 * h[column], marker=AUG_MARKERS.get(aug, "o"),
                  markersize=5,
                  color=START_COLORS.get(row["start"], "gray"),
                  linestyle="--" if row["reg"] else "-",
                  label=f"{row['start']}, {aug}{reg}")
    axis.set_xscale("log")
    axis.set_xlabel("training images seen on the task (steps x batch)")
    axis.set_ylabel(f"{split} accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=FONT, ncol=2)
    task = ", ".join(sorted(set(rows["adapt_ds"].astype(str))))
    axis.set_title(f"From scratch vs transfer on {task} (cf. the paper's Figure 2)",
                   fontsize=FONT + 3)
    return axis.figure
