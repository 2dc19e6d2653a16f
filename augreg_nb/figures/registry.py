"""The paper's figures and tables as one registry: one entry per item.

Each :class:`FigureEntry` says how to build the item's tidy data, how to draw it, its
caption, whether it needs the full index table and whether own results can be overlaid. The
figures page (:func:`augreg_nb.figures.write_all`), the report, the figure picker of
notebook 3 and the notebook's parameter list all read this registry, so a new figure is one
new entry (plus its builder and plot function)::

    from augreg_nb.figures.registry import FIGURES
    entry = FIGURES["fig4"]
    fig = entry.plot(entry.data(None), highlight=["B/16"])   # the paper's numbers

Kinds: ``figure`` (``plot(data(index), highlight=, [overlay=])`` -> matplotlib Figure),
``table`` (``plot`` styles ``data(index)`` as a pandas Styler), ``comparison`` (index-derived
numbers beside the paper's; needs the index) and ``own`` (own fine-tunes beside the
published ones: ``data(own_rows, index)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from augreg_nb.figures import compare, heatmaps, plots, tables, tidy

FIG1_NEEDS_INDEX = (
    "Figure 1 needs the full index table (the paper prints no runs without AugReg): run "
    "`augreg-nb figures --index PATH` or set AUGREG_NB_INDEX to your copy of index.csv."
)


@dataclasses.dataclass(frozen=True)
class FigureEntry:
    """One figure or table of the paper (or of own results)."""

    key: str  #: the name notebooks and the picker use ("fig4", "table3", "own", ...)
    label: str  #: the picker's label
    caption: str  #: the caption under the figure ("" where the view writes its own)
    kind: str  #: "figure", "table", "comparison" or "own"
    data: Callable[..., Any]  #: tidy-data builder: index (None: the paper's numbers) -> data
    plot: Callable[..., Any]  #: data -> matplotlib Figure (figures) or pandas Styler (tables)
    needs_index: bool = False  #: only drawn from a full index table
    overlay: bool = False  #: own result rows can be drawn on it (``overlay=``)
    file: str | None = None  #: file stem on the figures page (default: ``key``)
    missing_note: str = ""  #: what the figures page says when it cannot be drawn
    takes_own: bool = False  #: ``data(index, own=rows)`` adds own rows (full-VTAB results)

    @property
    def stem(self) -> str:
        return self.file or self.key


#: Every item, in the order pages and the picker show them.
FIGURES: dict[str, FigureEntry] = {e.key: e for e in (
    FigureEntry(
        'fig1', 'Figure 1: AugReg vs more pre-training data',
        'Figure 1: ImageNet-1k top-1 after fine-tuning at 384 px of ViT-B/32, B/16 and '
        'L/16 against the pre-training data, with AugReg (the best of the 28 '
        'augmentation and regularisation settings by upstream validation accuracy, '
        'solid) and without (no augmentation, no dropout or stochastic depth, dashed); '
        'stars: JFT-300M (Table 3).',
        kind="figure", data=tidy.fig1_data, plot=plots.plot_fig1, needs_index=True, overlay=True,
        missing_note=FIG1_NEEDS_INDEX,
    ),
    FigureEntry(
        'fig3', 'Figure 3: VTAB vs inference speed',
        'Figure 3: VTAB top-1, averaged over the natural, specialized and structured '
        'task groups, against inference speed at 224 px, for the three pre-training '
        "sets; grey lines join each model's points.",
        kind="figure", data=tidy.fig3_data, plot=plots.plot_fig3, takes_own=True,
    ),
    FigureEntry(
        'fig4', 'Figure 4: upstream accuracy per augmentation and regularisation',
        'Figure 4: Upstream validation accuracy (%) of every model for the 7 '
        'augmentation settings without and with regularisation (dropout = stochastic '
        'depth = 0.1), the best over weight decay; colour: difference to the '
        'unaugmented, unregularised cell; thin column: best regularised minus best '
        'unregularised setting.',
        kind="figure", data=tidy.fig4_data, plot=heatmaps.plot_fig4,
    ),
    FigureEntry(
        'fig5', 'Figure 5 (left): choosing checkpoints by upstream accuracy',
        'Figure 5 (left): ImageNet-21k 300ep checkpoints: test accuracy when the '
        'checkpoint is chosen by its upstream validation accuracy minus when it is '
        "chosen by the task's own validation accuracy over all 28 settings (percentage "
        'points).',
        kind="figure", data=tidy.fig5_data, plot=heatmaps.plot_fig5,
    ),
    FigureEntry(
        'fig6', 'Figure 6: ImageNet-1k transfer vs inference speed',
        'Figure 6: ImageNet-1k top-1 after fine-tuning against inference speed, for '
        'every model, pre-training set and resolution (left; S/16, B/16, L/16 joined), '
        'and a larger patch (/32) against a thinner model (/16) at 224 px (right).',
        kind="figure", data=tidy.fig6_data, plot=plots.plot_fig6, overlay=True,
    ),
    FigureEntry(
        'fig7', 'Figure 7: regularisation minus no regularisation',
        'Figure 7: Upstream validation accuracy with regularisation minus without, per '
        'augmentation setting (percentage points).',
        kind="figure", data=tidy.fig7_data, plot=heatmaps.plot_fig7,
    ),
    FigureEntry(
        'table3', 'Table 3: ImageNet-1k transfer',
        'Table 3: ImageNet-1k transfer.',
        kind="table", data=tidy.table3_data, plot=tables.style_table3,
    ),
    FigureEntry(
        'table5', 'Table 5: VTAB per task',
        'Table 5: VTAB results per task (full training sets).',
        kind="table", data=lambda index, own=None: tidy.table5_data(own=own),
        plot=tables.style_table5_groups, takes_own=True,
    ),
    FigureEntry(
        'comparison', "Comparison: index-derived numbers vs the paper's",
        '',
        kind="comparison", data=compare.compare_with_paper, plot=compare.style_comparison,
        needs_index=True,
    ),
    FigureEntry(
        'own', 'Own fine-tunes vs the published ones',
        'Own fine-tunes (black stars) beside the published fine-tune of the same '
        'checkpoint, task, schedule and resolution (hollow circles): test accuracy (%).',
        kind="own", data=tables.compare_finetunes, plot=tables.plot_finetunes, overlay=True,
        file="finetunes",
    ),
)}
#: Caption per file stem (figures and tables with a fixed caption).
CAPTIONS: dict[str, str] = {e.stem: e.caption for e in FIGURES.values() if e.caption}
