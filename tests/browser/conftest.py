"""Fixtures of the browser tests: one JupyterLab and one Chromium per session, a tab per test.

Artifacts (screenshots, console logs) go to a folder under pytest's temporary directory and
are mirrored to ``/tmp/augreg_nb_e2e`` (the latest run; ``AUGREG_NB_E2E_DIR`` overrides).
When a test fails, its tab's console log, page HTML, a screenshot and the server log are
saved, and the report names the folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.browser.jupyter_server import JupyterLab
from tests.browser.lab_page import Artifacts, LabPage

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Resolve no host name but loopback: nothing the page references can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
STABLE_DIR = Path(
    os.environ.get("AUGREG_NB_E2E_DIR") or Path(tempfile.gettempdir()) / "augreg_nb_e2e"
)


@pytest.fixture(scope="session")
def e2e_artifacts(tmp_path_factory) -> Artifacts:
    return Artifacts(tmp_path_factory.mktemp("browser_e2e"), STABLE_DIR)


@pytest.fixture(scope="session")
def jupyter_lab(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ (the originals are never opened)."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    if (REPO / "notebooks").is_dir():
        shutil.copytree(REPO / "notebooks", root / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    with JupyterLab(root_dir=root, state_dir=base / "state") as lab:
        yield lab


@pytest.fixture(scope="session")
def jupyter_lab_real(tmp_path_factory):
    """JupyterLab whose kernels take a real user's path (no smoke mode), without network."""
    base = tmp_path_factory.mktemp("jupyterlab_real")
    root = base / "root"
    root.mkdir()
    if (REPO / "notebooks").is_dir():
        shutil.copytree(REPO / "notebooks", root / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    with JupyterLab(root_dir=root, state_dir=base / "state", smoke=False) as lab:
        yield lab


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """Debian's Chromium, headless, with a fresh profile; never a downloaded browser."""
    if not Path(CHROMIUM).is_file():
        how = ("install Debian's chromium package (sudo apt-get install chromium; .ci/run "
               "does this when run as root), or skip these tests with --no-browser")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{CHROMIUM} is missing: {how}")
        pytest.skip(f"{CHROMIUM} is missing: {how}")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
            device_scale_factor=1,
        )
        context.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"),
                      _refuse)
        try:
            yield context
        finally:
            context.close()


def _refuse(route) -> None:
    """Requests for anything but loopback (e.g. the Colab badge in a markdown cell) are
    refused; each tab's console log lists them as ``[requestfailed]``."""
    route.abort("blockedbyclient")


def _tab(request, chromium, lab, e2e_artifacts):
    """A new tab on ``lab``; at the end its console log is kept, its kernel shut down and the
    tab closed."""
    page = chromium.new_page()
    page.set_default_timeout(60_000)
    nb = LabPage(page, lab, e2e_artifacts, name=request.node.name)
    request.node._lab_page = nb
    yield nb
    e2e_artifacts.write_text(f"{nb.name}-console.log", "\n".join(nb.console) + "\n")
    try:
        nb.shutdown_kernel()
    except Exception:  # the tab may be broken after a failure; the server stops kernels too
        pass
    page.close()


@pytest.fixture
def lab_page(request, chromium, jupyter_lab, e2e_artifacts):
    """A new tab on the smoke-mode JupyterLab; closed (kernel shut down) at the end."""
    yield from _tab(request, chromium, jupyter_lab, e2e_artifacts)


@pytest.fixture
def lab_page_real(request, chromium, jupyter_lab_real, e2e_artifacts):
    """A new tab on the real-mode JupyterLab; closed (kernel shut down) at the end."""
    yield from _tab(request, chromium, jupyter_lab_real, e2e_artifacts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed browser test: save the evidence and say where it is."""
    report = yield
    nb = getattr(item, "_lab_page", None)
    if report.when == "call" and report.failed and nb is not None:
        saved = nb.save_evidence("FAILED")
        where = "\n".join(f"  {p}" for p in saved)
        report.sections.append((
            "browser evidence",
            f"console log, screenshot, page HTML and server log:\n{where}\n"
            f"(latest run also in {nb.artifacts.stable_dir})",
        ))
    return report
