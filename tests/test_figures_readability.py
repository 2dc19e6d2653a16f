"""The figures at notebook width: readable labels, no overlapping model names, highlighted
models told apart. Sizes are computed here from matplotlib's own artists."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Annotation, Text

from augreg_nb.figures.synthetic import paper_index
from augreg_nb.widgets.figure_picker import render

#: Width of a notebook's output area (px) and the dpi notebooks show figures at.
NOTEBOOK_WIDTH_PX = 900
DPI = 100
ITEMS = ("fig1", "fig3", "fig4", "fig5", "fig6", "fig7", "own")


def _own_rows() -> pd.DataFrame:
    """Two own result rows in the index schema (all 21 columns, unknown ones empty): a
    digits run and a Ti/16 ImageNet one."""
    from augreg_nb.index import COLUMNS

    rows = [
        {"name": "testing", "ds": "i21k", "adapt_ds": "digits", "adapt_resolution": 32,
         "adapt_final_val": 0.64, "adapt_final_test": 0.58,
         "adapt_filename": "fake-testing--digits-steps_300-lr_0.03-res_32"},
        {"name": "Ti/16", "ds": "i21k", "adapt_ds": "imagenet2012", "adapt_resolution": 384,
         "adapt_final_val": 0.81, "adapt_final_test": 0.78,
         "adapt_filename": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
                           "--imagenet2012-steps_20k-lr_0.03-res_384"},
    ]
    return pd.DataFrame([{c: r.get(c, np.nan) for c in COLUMNS} for r in rows])


def _render(item, highlight=("B/16", "L/16", "S/32")):
    index = paper_index().copy()
    index.attrs["synthetic"] = True
    source = "index" if item == "fig1" else "paper"
    return render(item, source=source, index=index, highlight=list(highlight),
                  own=_own_rows()).figure


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    return canvas.get_renderer()


@pytest.mark.parametrize("item", ITEMS)
def test_every_label_is_at_least_9_pt_at_notebook_width(item):
    fig = _render(item)
    _drawn(fig)
    width_px = fig.get_figwidth() * DPI
    shrink = min(1.0, NOTEBOOK_WIDTH_PX / width_px)  # a wider image is scaled down
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    smallest = min(texts, key=lambda t: t.get_fontsize())
    on_screen = smallest.get_fontsize() * shrink
    assert on_screen >= 9, f"{item}: {smallest.get_text()!r} is {on_screen:.1f} pt on screen"


@pytest.mark.parametrize("item", ("fig3", "fig6"))
def test_model_labels_do_not_overlap(item):
    fig = _render(item)
    renderer = _drawn(fig)
    for ax in fig.axes:
        boxes = [(a.get_text(), a.get_window_extent(renderer)) for a in ax.texts
                 if isinstance(a, Annotation)]
        assert len(boxes) >= 5, f"{item}: too few model labels in {ax.get_title()!r}"
        for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), f"{item}, {ax.get_title()!r}: {ta!r} overlaps {tb!r}"
        legend = ax.get_legend()
        if legend is not None:
            lb = legend.get_window_extent(renderer)
            assert not any(box.overlaps(lb) for _, box in boxes), f"{item}: label under legend"


@pytest.mark.parametrize("item", ("fig1", "fig3", "fig6"))
def test_highlighted_models_are_told_apart(item):
    models = ("B/16", "L/16") if item == "fig1" else ("B/16", "L/16", "S/32")
    fig = _render(item, highlight=models)
    _drawn(fig)
    styles = set()
    for ax in fig.axes:
        for coll in ax.collections:
            faces = coll.get_facecolors()
            if len(coll.get_offsets()) and len(faces) == 0 or (
                    len(faces) and np.allclose(faces[:, 3], 0)):
                edge = tuple(np.round(coll.get_edgecolors()[0], 3))
                path = tuple(map(tuple, np.round(coll.get_paths()[0].vertices, 3)))
                styles.add((edge, path))
    assert len(styles) == len(models), f"{item}: {len(styles)} highlight styles for {models}"
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in
              ax.get_legend().get_texts()}
    assert {f"highlighted: {m}" for m in models} <= labels
