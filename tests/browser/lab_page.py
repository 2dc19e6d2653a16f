"""Drive a notebook in JupyterLab the way a user does, and keep evidence of what was seen.

Usage (inside a test, with a Playwright page and a running :class:`JupyterLab`)::

    nb = LabPage(page, lab, artifacts, name="demo")
    nb.open("notebooks/01_choose_checkpoint.ipynb")
    nb.run_all()                   # the menu: Run > Run All Cells
    nb.wait_until_executed()       # every code cell ran, or one failed
    nb.assert_no_errors()          # no traceback in any cell
    nb.assert_widgets_rendered()   # every widget output shows a widget, not an error
    nb.shot("after-run")           # screenshot into the artifact folders

The notebook's model (which outputs are widgets or images) is read from the page through
``window.jupyterapp`` (the server exposes it, see ``jupyter_server``); everything a user does
(menus, dropdowns, buttons) goes through the rendered page.
"""

from __future__ import annotations

import glob
import re
import time
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Locator, Page

from tests.browser.jupyter_server import JupyterLab

#: Text the widget manager shows instead of a widget whose kernel model it cannot find.
WIDGET_ERROR = "Error displaying widget"
#: Text shown while a widget view is being created.
WIDGET_LOADING = "Loading widget..."


def _js(body: str) -> str:
    """A page function whose ``nb()`` is the notebook panel in the main area."""
    return ("() => { const nb = () => window.jupyterapp.shell.currentWidget;\n"
            + body + "\n}")


_JS_KERNEL_READY = _js("""
  const panel = nb();
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
    && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
""")

# Per code cell: execution count, output types, widget and image output counts.
_JS_CELLS = _js("""
  const cells = nb().content.model.cells;
  const out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') { out.push(null); continue; }
    const outputs = c.outputs.toJSON();
    out.push({
      index: i,
      count: c.executionCount,
      source: c.sharedModel.getSource().slice(0, 2000),
      errors: outputs.filter(o => o.output_type === 'error')
                     .map(o => o.ename + ': ' + o.evalue),
      widgets: outputs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json'])
                      .length,
      images: outputs.filter(o => o.data && (o.data['image/png'] || o.data['image/svg+xml']))
                     .length,
    });
  }
  return out;
""")

_JS_IDLE = _js("""
  const k = nb().sessionContext.session.kernel;
  return !!k && k.status === 'idle';
""")


class Artifacts:
    """Screenshots and logs of a test run, written to a per-run folder and a stable one.

    ``run_dir`` is under pytest's temporary folder (kept per run); ``stable_dir`` (for
    example ``/tmp/augreg_nb_e2e``) holds each test's files of its latest run: a test's old
    files there are removed when it starts (only its own, so parallel workers can share it).
    """

    def __init__(self, run_dir: Path, stable_dir: Path):
        self.run_dir = Path(run_dir)
        self.stable_dir = Path(stable_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stable_dir.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

    def clear(self, prefix: str) -> None:
        """Remove ``{prefix}-*`` files of an earlier run from the stable folder."""
        for old in self.stable_dir.glob(f"{glob.escape(prefix)}-*"):
            old.unlink(missing_ok=True)

    def write_bytes(self, name: str, data: bytes) -> Path:
        for folder in (self.run_dir, self.stable_dir):
            (folder / name).write_bytes(data)
        self.files.append(name)
        return self.run_dir / name

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8", errors="replace"))


class LabPage:
    """One browser tab of JupyterLab showing one notebook."""

    def __init__(self, page: Page, lab: JupyterLab, artifacts: Artifacts, name: str):
        self.page = page
        self.lab = lab
        self.artifacts = artifacts
        self.name = name  # prefix of this tab's artifact files
        artifacts.clear(name)
        self.console: list[str] = []
        self._t0 = time.monotonic()
        self._shots = 0
        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self._log(f"[pageerror] {err}"))
        page.on("requestfailed", lambda r: self._log(f"[requestfailed] {r.url} {r.failure}"))

    # -- evidence -------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        self.console.append(f"{time.monotonic() - self._t0:7.2f}s {line}")

    def _on_console(self, msg: ConsoleMessage) -> None:
        self._log(f"[{msg.type}] {msg.text}")

    def shot(self, label: str, locator: Locator | None = None) -> Path:
        """Screenshot of the page (or of ``locator``'s element) as ``{name}-NN-{label}.png``."""
        self._shots += 1
        target = locator if locator is not None else self.page
        data = target.screenshot(animations="disabled")
        return self.artifacts.write_bytes(f"{self.name}-{self._shots:02d}-{label}.png", data)

    def save_evidence(self, label: str) -> list[Path]:
        """Console log, page HTML, a screenshot and the server log (used on failure)."""
        saved = [self.artifacts.write_text(f"{self.name}-{label}-console.log",
                                           "\n".join(self.console) + "\n")]
        try:
            saved.append(self.shot(label))
            saved.append(self.artifacts.write_text(f"{self.name}-{label}-page.html",
                                                   self.page.content()))
        except Exception as err:  # the page may be gone; the logs still help
            self._log(f"[evidence] could not capture the page: {err}")
        saved.append(self.artifacts.write_text(f"{self.name}-{label}-jupyterlab.log",
                                               self.lab.log_tail(200_000)))
        return saved

    # -- notebook ------------------------------------------------------------------------
    def open(self, path: str, timeout: float = 90) -> None:
        """Open ``path`` (relative to the server's root) in a fresh workspace; wait until
        the notebook is shown and its kernel is connected and idle."""
        workspace = re.sub(r"[^A-Za-z0-9]+", "-", self.name)
        self.page.goto(self.lab.url(f"lab/workspaces/{workspace}/tree/{path}") + "&reset")
        self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(
            timeout=timeout * 1000)
        self.page.wait_for_function(_JS_KERNEL_READY, timeout=timeout * 1000)

    def run_all(self) -> None:
        """Run > Run All Cells, through the menu bar."""
        self.page.locator("li.lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        self.page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()

    def cells(self) -> list[dict]:
        """Code cells of the notebook model: count, source head, errors, widgets, images."""
        return [c for c in self.page.evaluate(_JS_CELLS) if c is not None]

    def wait_until_executed(self, timeout: float = 240) -> list[dict]:
        """Wait until every code cell has run (or one raised) and the kernel is idle."""
        deadline = time.monotonic() + timeout
        while True:
            cells = self.cells()
            failed = any(c["errors"] for c in cells)
            done = all(c["count"] is not None for c in cells)
            if (done or failed) and self.page.evaluate(_JS_IDLE):
                return cells
            if time.monotonic() > deadline:
                pending = [c["index"] for c in cells if c["count"] is None]
                raise AssertionError(
                    f"{self.name}: cells {pending} had not run after {timeout:.0f} s"
                )
            self.page.wait_for_timeout(500)

    def run_notebook(self, path: str, timeout: float = 240) -> list[int]:
        """Open ``path``, Run All, wait until every cell has run, and check that no cell
        raised and every widget output rendered; the indexes of the widget cells."""
        self.open(path)
        self.run_all()
        self.wait_until_executed(timeout=timeout)
        self.assert_no_errors()
        return self.assert_widgets_rendered()

    def assert_no_page_errors(self) -> None:
        """No uncaught exception in the page's JavaScript (widget views included)."""
        errors = [line for line in self.console if "[pageerror]" in line]
        assert not errors, f"{self.name}: errors in the page:\n" + "\n".join(errors)

    def assert_no_errors(self) -> None:
        errors = [(c["index"], e, c["source"]) for c in self.cells() for e in c["errors"]]
        assert not errors, f"{self.name}: cells raised:\n" + "\n".join(
            f"cell {i}: {e}\n  source: {s[:300]!r}" for i, e, s in errors
        )

    def cell(self, index: int) -> Locator:
        """The rendered cell ``index`` (all cells are in the DOM: windowing is off)."""
        return self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)

    def outputs(self, index: int) -> Locator:
        return self.cell(index).locator(".jp-Cell-outputArea")

    def assert_widgets_rendered(self, timeout: float = 30) -> list[int]:
        """Every cell whose outputs hold widgets shows rendered widget views: no error text,
        none still loading, and at least one ipywidgets DOM element per widget output."""
        cells = [c for c in self.cells() if c["widgets"]]
        deadline = time.monotonic() + timeout
        for c in cells:
            area = self.outputs(c["index"])
            while True:
                text = area.inner_text()
                views = area.locator(".jupyter-widgets.lm-Widget:not(.jp-OutputArea-output)")
                rendered = views.count()
                if WIDGET_ERROR in text:
                    raise AssertionError(
                        f"{self.name}: cell {c['index']} shows {WIDGET_ERROR!r}: the widget "
                        f"front end and the kernel disagree.\n  source: {c['source'][:300]!r}"
                    )
                if WIDGET_LOADING not in text and rendered >= c["widgets"]:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name}: cell {c['index']} has {c['widgets']} widget outputs but "
                        f"{rendered} rendered widget views after {timeout:.0f} s "
                        f"(text: {text[:300]!r})"
                    )
                self.page.wait_for_timeout(250)
        return [c["index"] for c in cells]

    def assert_images_rendered(self, timeout: float = 30) -> list[int]:
        """Every image output is an ``<img>`` the browser decoded (natural size > 0);
        returns the indices of the cells that show images."""
        cells = [c for c in self.cells() if c["images"]]
        for c in cells:
            imgs = self.outputs(c["index"]).locator(
                ".jp-RenderedImage img, .jp-RenderedSVG svg")
            imgs.nth(c["images"] - 1).wait_for(timeout=timeout * 1000)
            assert imgs.count() == c["images"], (
                f"{self.name}: cell {c['index']} has {c['images']} image outputs but shows "
                f"{imgs.count()}"
            )
            for i in range(imgs.count()):
                img = imgs.nth(i)
                img.scroll_into_view_if_needed()
                size = img.evaluate(
                    "e => e.tagName.toLowerCase() === 'img' ? "
                    "(e.complete ? [e.naturalWidth, e.naturalHeight] : [0, 0]) : "
                    "[e.getBoundingClientRect().width, e.getBoundingClientRect().height]")
                assert min(size) > 0, (
                    f"{self.name}: image {i} of cell {c['index']} did not render (size {size})"
                )
        return [c["index"] for c in cells]

    def shutdown_kernel(self) -> None:
        """Kernel > Shut Down Kernel, so the next notebook does not share the CPU with it."""
        self.page.evaluate(_js("return nb().sessionContext.shutdown();"))
