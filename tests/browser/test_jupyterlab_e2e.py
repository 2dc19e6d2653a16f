"""The notebooks as a user sees them: JupyterLab in headless Chromium, offline smoke mode.

Run with ``python -m pytest tests/browser`` (skip locally with ``--no-browser``; CI always
runs it). Screenshots of the latest run are in ``/tmp/augreg_nb_e2e``; on failure the report
names the folder with the console log, page HTML and server log.

- ``test_widgets_reach_the_kernel``: a small generated notebook (a slider driving an output,
  a matplotlib figure) checks the set-up itself: the widget front end renders the kernel's
  widgets, a change in the browser reaches the kernel and comes back, figures are images.
"""

from __future__ import annotations

import re

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

_PROBE_CELLS = [
    """\
import ipywidgets as widgets
out = widgets.Output()
slider = widgets.IntSlider(value=3, min=0, max=10, description="n")
def show(change=None):
    out.clear_output()
    with out:
        print("squares:", [i * i for i in range(slider.value)])
slider.observe(show, names="value")
show()
widgets.VBox([slider, out])""",
    """\
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1, 4, 9])
plt.show()""",
]


def _write_probe(root) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in _PROBE_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = root / "probe" / "widgets_probe.ipynb"
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, path)
    return "probe/widgets_probe.ipynb"


def test_widgets_reach_the_kernel(lab_page, jupyter_lab):
    nb = lab_page
    nb.open(_write_probe(jupyter_lab.root_dir))
    nb.run_all()
    nb.wait_until_executed(timeout=90)
    nb.assert_no_errors()
    assert nb.assert_widgets_rendered() == [0]
    assert nb.assert_images_rendered() == [1]

    area = nb.outputs(0)
    expected = re.compile(r"squares: \[0, 1, 4\]$")
    assert expected.search(area.inner_text().strip())
    nb.shot("probe-rendered")

    # The user moves the slider: the browser's change reaches the kernel, whose observer
    # prints into the Output widget, which the browser shows.
    handle = area.locator(".widget-slider .noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    area.get_by_text("squares: [0, 1, 4, 9]").wait_for(timeout=30_000)
    assert area.locator(".widget-readout").inner_text().strip() == "4"
    nb.shot("probe-slider-moved")
