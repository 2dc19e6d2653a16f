"""Heat-map figures: Figure 4 (upstream accuracy), Figure 5 left (selection), Figure 7.

Each ``plot_*`` takes the tidy frame of the matching builder in
:mod:`augreg_nb.figures.tidy` and returns a matplotlib Figure. They load no data, never
call ``plt.show()`` and change no global style; pass ``ax`` (one Axes per panel) to draw
into your own figure, and ``highlight="B/16"`` to mark a model's row.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from augreg_nb.figures import paper
from augreg_nb.figures.tidy import AUGS

CMAP = "RdYlGn"
#: Font size (pt) of every label: figures are at most 9 inches wide (900 px at 100 dpi, the
#: width of a notebook's output area), so 9 pt stays 9 pt on screen.
FONT = 9
#: Outline colours of highlighted rows, one per highlighted model, in order.
HIGHLIGHT_COLORS = ("black", "#d81b60", "#1e88e5", "#8e24aa", "#00897b", "#f4511e")


class NotebookFigure(Figure):
    """A plain matplotlib Figure that also shows itself in a notebook.

    Figures are made without pyplot (no global figure list, no double display); Jupyter
    shows them through ``_repr_png_`` even where pyplot's inline backend was never loaded.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100)
        return buf.getvalue()


def panel_axes(ax, n: int, figsize: tuple[float, float], *, stacked: bool = False,
               **subplot_kw) -> list:
    """``n`` Axes: the ones given (one Axes or a sequence) or a new Figure's row of panels
    (``stacked=True``: a column of panels, for wide panels)."""
    if ax is None:
        fig = NotebookFigure(figsize=figsize, layout="constrained")
        shape = (n, 1) if stacked else (1, n)
        axes = fig.subplots(*shape, squeeze=False, **subplot_kw).ravel()
        return list(axes)
    axes = list(ax) if isinstance(ax, Sequence | np.ndarray) else [ax]
    if len(axes) != n:
        raise ValueError(f"this figure has {n} panel(s); pass ax as a sequence of {n} Axes")
    return axes


def _highlights(highlight) -> list[str]:
    """Highlighted models in the order given (each gets its own colour and marker)."""
    if highlight is None:
        return []
    return [highlight] if isinstance(highlight, str) else list(dict.fromkeys(highlight))


def _text_color(cmap, norm, value) -> str:
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _draw_grid(ax, values, labels, x_edges, rows, norm, highlight, *, cmap=CMAP):
    """pcolormesh of ``values`` (rows x cols, NaN = blank) with text ``labels`` per cell."""
    cm = colormaps[cmap]
    y_edges = np.arange(len(rows) + 1)
    masked = np.ma.masked_invalid(values)
    mesh = ax.pcolormesh(x_edges, y_edges, masked, cmap=cm, norm=norm, edgecolors="white",
                         linewidth=0.4)
    xc = (x_edges[:-1] + x_edges[1:]) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = labels[i][j]
            if not text:
                continue
            color = "dimgray" if np.isnan(values[i, j]) else _text_color(cm, norm, values[i, j])
            ax.text(xc[j], i + 0.5, text, ha="center", va="center", fontsize=FONT, color=color)
    ax.set_ylim(len(rows), 0)
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_yticks(np.arange(len(rows)) + 0.5, rows)
    colors = {m: HIGHLIGHT_COLORS[k % len(HIGHLIGHT_COLORS)] for k, m in enumerate(highlight)}
    for tick in ax.get_yticklabels():
        if tick.get_text() in colors:
            tick.set_fontweight("bold")
            tick.set_color(colors[tick.get_text()])
    for i, model in enumerate(rows):
        if model in colors:
            ax.add_patch(Rectangle((x_edges[0], i), x_edges[-1] - x_edges[0], 1, fill=False,
                                   edgecolor=colors[model], linewidth=1.8, clip_on=False))
    ax.tick_params(length=0, labelsize=FONT)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return mesh


def plot_fig4(tidy: pd.DataFrame, ax=None, *, highlight=None) -> Figure:
    """Figure 4: three heat maps (one per pre-training set) of upstream validation accuracy.

    Rows are models, columns the 7 augmentations without and with regularisation (dropout =
    stochastic depth = 0.1), then the thin "reg - noreg" column. Cells show the accuracy
    (%); colour is its difference to the model's unaugmented, unregularised cell.
    """
    axes = panel_axes(ax, 3, (9, 10.5), stacked=True, sharex=True)
    highlight = _highlights(highlight)
    cells = tidy[tidy["measure"] == "val_acc"]
    thin = tidy[tidy["measure"] == "reg_minus_noreg"]
    rows = [m for m in paper.PAPER_MODELS if m in set(tidy["model"])]
    grid = {}
    for ds in paper.DATASETS:
        wide = cells[cells["ds"] == ds].pivot_table(index="model", columns=["reg", "aug"],
                                                    values="value")
        cols = [(r, a) for r in (False, True) for a in AUGS]
        wide = wide.reindex(index=rows, columns=pd.MultiIndex.from_tuples(cols))
        t = thin[thin["ds"] == ds].set_index("model")["value"].reindex(rows)
        grid[ds] = (wide.to_numpy(dtype=float), t.to_numpy(dtype=float))
    diffs = [w - w[:, [0]] for w, _ in grid.values()] + [t for _, t in grid.values()]
    vmax = max(2.0, float(np.nanmax(np.abs(np.concatenate([d.ravel() for d in diffs])))))
    norm = TwoSlopeNorm(0.0, -vmax, vmax)
    x_edges = np.r_[np.arange(15), 14.35, 15.35]
    mesh = None
    for k, (panel_ax, ds) in enumerate(zip(axes, paper.DATASETS, strict=True)):
        wide, t = grid[ds]
        color = np.c_[wide - wide[:, [0]], np.full(len(rows), np.nan), t]
        labels = [[_fmt(v, "{:.0f}") for v in row] + ["", _fmt(tv, "{:+.0f}")]
                  for row, tv in zip(wide, t, strict=True)]
        mesh = _draw_grid(panel_ax, color, labels, x_edges, rows, norm, highlight)
        ticks = [*(np.arange(14) + 0.5), 14.85]
        panel_ax.set_xticks(ticks, [*AUGS, *AUGS, "reg - noreg"], rotation=90)
        panel_ax.axvline(7, color="black", linewidth=1.0)
        for x, text in ((3.5, "no reg"), (10.5, "reg 0.1")):
            panel_ax.text(x, -0.15, text, ha="center", va="bottom", fontsize=FONT,
                          style="italic")
        panel_ax.set_title(paper.DS_LABELS[ds], pad=16, fontsize=FONT + 2)
        if k < len(axes) - 1 and ax is None:  # one row of augmentation names, at the bottom
            panel_ax.tick_params(labelbottom=False)
    fig = axes[0].figure
    if ax is None:
        bar = fig.colorbar(mesh, ax=axes, shrink=0.5, pad=0.01)
        bar.set_label("difference to none / no reg (%)", fontsize=FONT)
        bar.ax.tick_params(labelsize=FONT)
    return fig


def plot_fig7(tidy: pd.DataFrame, ax=None, *, highlight=None) -> Figure:
    """Figure 7: regularised minus unregularised upstream accuracy per augmentation."""
    axes = panel_axes(ax, 3, (9, 4.4), sharey=True)
    highlight = _highlights(highlight)
    rows = [m for m in paper.PAPER_MODELS if m in set(tidy["model"])]
    vmax = max(2.0, float(np.nanmax(np.abs(tidy["value"]))))
    norm = TwoSlopeNorm(0.0, -vmax, vmax)
    mesh = None
    for k, (panel_ax, ds) in enumerate(zip(axes, paper.DATASETS, strict=True)):
        wide = tidy[tidy["ds"] == ds].pivot_table(index="model", columns="aug", values="value")
        values = wide.reindex(index=rows, columns=list(AUGS)).to_numpy(dtype=float)
        labels = [[_fmt(v, "{:+.0f}") for v in row] for row in values]
        mesh = _draw_grid(panel_ax, values, labels, np.arange(8), rows, norm, highlight)
        panel_ax.set_xticks(np.arange(7) + 0.5, AUGS, rotation=90)
        panel_ax.set_title(paper.DS_LABELS[ds], fontsize=FONT + 1)
        if k:
            panel_ax.tick_params(labelleft=False)
    fig = axes[0].figure
    if ax is None:
        bar = fig.colorbar(mesh, ax=axes, shrink=0.8, pad=0.01)
        bar.set_label("reg - noreg (%)", fontsize=FONT)
        bar.ax.tick_params(labelsize=FONT)
    return fig


def plot_fig5(tidy: pd.DataFrame, ax=None, *, highlight=None) -> Figure:
    """Figure 5 (left): test accuracy when the checkpoint is chosen by upstream validation
    minus when chosen by the task's own validation (percentage points); NaN shows "n/a"."""
    (panel_ax,) = panel_axes(ax, 1, (7, 4.6))
    highlight = _highlights(highlight)
    rows = [m for m in paper.PAPER_MODELS if m in set(tidy["model"])]
    rows += sorted(set(tidy["model"]) - set(rows))
    tasks = [t for t in paper.FIG5_TASKS if t in set(tidy["task"])]
    wide = tidy.pivot_table(index="model", columns="task", values="delta", dropna=False)
    values = wide.reindex(index=rows, columns=tasks).to_numpy(dtype=float)
    labels = [["n/a" if np.isnan(v) else f"{v:+.1f}" for v in row] for row in values]
    finite = np.abs(values[np.isfinite(values)])
    vmax = max(1.0, float(finite.max()) if finite.size else 1.0)
    norm = Normalize(-vmax, vmax)
    mesh = _draw_grid(panel_ax, values, labels, np.arange(len(tasks) + 1), rows, norm,
                      highlight)
    panel_ax.set_xticks(np.arange(len(tasks)) + 0.5, tasks, rotation=30, ha="right")
    panel_ax.set_title("Choosing by upstream instead of downstream validation",
                       fontsize=FONT + 1)
    fig = panel_ax.figure
    if ax is None:
        bar = fig.colorbar(mesh, ax=panel_ax, shrink=0.8, pad=0.02)
        bar.set_label("test accuracy difference (%)", fontsize=FONT)
        bar.ax.tick_params(labelsize=FONT)
    return fig


def _fmt(value: float, pattern: str) -> str:
    if np.isnan(value):
        return ""
    text = pattern.format(value)
    return "0" if text in ("-0", "+0") else text
