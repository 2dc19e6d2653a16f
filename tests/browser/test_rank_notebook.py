"""Notebook 7 in JupyterLab (headless Chromium, smoke mode): rank, stop, continue, plot.

Run with ``python -m pytest tests/browser -k rank``; the set-up and helpers are those of
``test_jupyterlab_e2e`` (screenshots in ``/tmp/augreg_nb_e2e``).
"""

from __future__ import annotations

import pytest

from tests.browser.test_jupyterlab_e2e import (
    _assert_fits,
    _button,
    _rerun_cell,
    _shown_image,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

NOTEBOOK_7 = "notebooks/07_rank_checkpoints.ipynb"


def test_rank_notebook_stops_continues_and_hands_over_the_winner(lab_page):
    nb = lab_page
    nb.run_notebook(NOTEBOOK_7, timeout=180)
    cells = nb.cells()
    panel_cell = next(c["index"] for c in cells if c["widgets"] and "RankPanel" in c["source"])
    area = nb.outputs(panel_cell)
    for label in ("Estimate cost", "Start ranking", "Stop"):
        assert _button(area, label).is_visible(), f"no {label} button in the panel"
    text = " ".join(area.inner_text().split())
    assert "Smoke data" in text and "fake:testing-hybrid" in text, text[:500]
    _assert_fits(area, "the ranking panel before Start")
    nb.shot("panel", area)

    # Start, then Stop at once: it ends before the next batch and says Start continues.
    _button(area, "Start ranking").click()
    _button(area, "Stop").click()  # Playwright waits until Start has enabled it
    stopped = area.locator(".augreg-warning", has_text="Start continues")
    stopped.wait_for(timeout=120_000)
    assert "Traceback" not in area.inner_text()
    nb.shot("stopped", area)

    _button(area, "Start ranking").click()
    area.locator(".augreg-info", has_text="ranked 3 candidate(s) on digits").wait_for(
        timeout=240_000)
    table = area.locator("table").first
    assert table.locator("tbody tr").count() == 3
    winner = area.locator(".augreg-info", has_text="CHECKPOINT =")
    assert "02_finetune" in winner.inner_text()
    assert _button(area, "Start ranking").is_enabled()
    assert not _button(area, "Stop").is_enabled()
    _assert_fits(area, "the ranking panel after the ranking")
    nb.shot("ranked", area)

    index = next(c["index"] for c in cells if c["source"].strip() == "panel.plot()")
    cell = _rerun_cell(nb, index)
    assert not cell["errors"] and cell["images"] >= 1, cell
    _shown_image(nb, nb.outputs(index), None, "the ranking plot")
    nb.shot("plot", nb.outputs(index))
    nb.assert_no_errors()
