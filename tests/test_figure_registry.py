"""The figure registry drives the figures page, the picker and notebook 3's choices."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from augreg_nb.figures import registry
from augreg_nb.widgets import figure_picker

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_paper_figures.ipynb"


def _param_choices(name: str) -> list[str]:
    """The ``#@param [...]`` list of parameter ``name`` in notebook 3's parameters cell."""
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        match = re.search(rf"^{name} = .*#@param (\[.*\])", source, flags=re.M)
        if cell["cell_type"] == "code" and match:
            return ast.literal_eval(match.group(1))
    raise AssertionError(f"notebook 3 has no #@param list for {name}")


def test_notebook_3_offers_exactly_the_registry():
    assert _param_choices("FIGURE") == list(registry.FIGURES)


def test_the_picker_lists_come_from_the_registry():
    assert list(figure_picker.ITEMS) == list(registry.FIGURES)
    assert set(figure_picker.NEEDS_INDEX) == {
        k for k, e in registry.FIGURES.items() if e.needs_index}
    assert set(figure_picker.OVERLAY_ITEMS) == {"fig1", "fig6"}


def test_every_entry_is_complete():
    kinds = {"figure", "table", "comparison", "own"}
    for key, entry in registry.FIGURES.items():
        assert entry.key == key and entry.kind in kinds and entry.label
        assert callable(entry.data) and callable(entry.plot)
        if entry.kind in ("figure", "table", "own"):
            assert entry.caption, key
    assert {e.stem for e in registry.FIGURES.values() if e.caption} == set(registry.CAPTIONS)
