"""The Colab install cell: its restart note, and the pieces of the Colab-like check.

The check itself (``tests/colab/check.py``: Colab's versions on Python 3.13, the install
cell, the unit tests and notebooks there) runs from ``.ci/run``; these tests cover its logic
and the facts it relies on, in seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from augreg_nb import colab

REPO = Path(__file__).resolve().parents[1]


def _load_check():
    spec = importlib.util.spec_from_file_location("colab_check", REPO / "tests/colab/check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()


# --------------------------------------------------------------------------- restart note


def test_changes_compare_canonical_names():
    before = {"Jupyter_Core": "5.9.1", "ipywidgets": "7.7.1", "gone": "1.0"}
    after = {"jupyter-core": "5.9.1", "IPyWidgets": "8.1.9", "augreg_nb": "0.1.0"}
    assert [str(c) for c in colab.changes(before, after)] == [
        "augreg-nb (none) -> 0.1.0", "gone 1.0 -> (removed)", "ipywidgets 7.7.1 -> 8.1.9"]


def test_only_changed_imported_distributions_need_a_restart():
    # numpy is installed here, so packages_distributions() maps the module to it.
    before = {"numpy": "1.0", "pandas": "2.0", "augreg_nb": "0.0.9"}
    after = {"numpy": "2.0", "pandas": "2.1", "augreg-nb": "0.1.0", "new-dist": "1.0"}
    stale = colab.stale_imports(before, after, modules=["numpy.linalg", "json"])
    assert [str(c) for c in stale] == ["numpy 1.0 -> 2.0"]  # pandas: not imported
    note = colab.restart_note(before, after, modules=["numpy.linalg"])
    assert note.startswith(f"Restart the session ({colab.RESTART_MENU})")
    assert "numpy 1.0 -> 2.0" in note and "pandas" not in note and "\n" not in note
    quiet = colab.restart_note(before, {**after, "numpy": "1.0"}, modules=["numpy", "json"])
    assert quiet == "augreg_nb 0.1.0: no package this kernel has imported changed, " \
                    "no restart needed."


def _write_dist(root: Path, version: str) -> None:
    """A minimal installed distribution ``fake-widgets`` (module ``fake_widgets``)."""
    for old in root.glob("fake_widgets-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = root / f"fake_widgets-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-widgets\n"
                                   f"Version: {version}\n")
    (info / "top_level.txt").write_text("fake_widgets\n")
    (root / "fake_widgets").mkdir(exist_ok=True)
    (root / "fake_widgets" / "__init__.py").write_text(f"__version__ = {version!r}\n")


def test_restart_note_sees_an_upgrade_of_an_imported_module_on_disk(tmp_path, monkeypatch):
    _write_dist(tmp_path, "7.7.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_widgets", raising=False)
    before = colab.installed_versions()
    assert before["fake-widgets"] == "7.7.1"
    importlib.import_module("fake_widgets")
    assert "no restart needed" in colab.restart_note(before)
    _write_dist(tmp_path, "8.1.9")  # what pip does: new files, new dist-info
    importlib.invalidate_caches()
    assert colab.installed_versions()["fake-widgets"] == "8.1.9"
    note = colab.restart_note(before)
    assert "Restart the session" in note and "fake-widgets 7.7.1 -> 8.1.9" in note
    # Not imported yet: the new version is what the kernel will import, no restart.
    sys.modules.pop("fake_widgets")
    assert "no restart needed" in colab.restart_note(before)


def test_installed_versions_match_the_imported_modules():
    import numpy

    versions = colab.installed_versions()
    assert versions["numpy"] == numpy.__version__
    assert "numpy" in colab.imported_distributions()


# --------------------------------------------------------------------------- the check


def test_install_cell_is_the_same_everywhere_and_pip_installs_without_upgrades():
    cell = check.install_cell()
    args = check.pip_install_args(cell)
    assert args[0] == "install"
    assert not {"-U", "--upgrade", "--force-reinstall", "--no-deps"} & set(args)
    (req,) = [a for a in args if not a.startswith("-") and a != "install"]
    assert req.startswith("augreg_nb @ git+https://") and "[" not in req
    local = check.local_cell(cell, REPO)
    assert f'"augreg_nb @ {REPO.as_uri()}"' in local
    assert local.replace(REPO.as_uri(), "") == check.GIT_ADDRESS.sub("", cell)


def test_freeze_diff_fails_on_changed_preinstalled_packages_only():
    before = check.parse_freeze("ipywidgets==7.7.1\nJupyter_Core==5.9.1\nkeep==1\n")
    after = check.parse_freeze("ipywidgets==8.1.9\njupyter-core==5.9.1\n"
                               "augreg_nb @ file:///src/augreg_nb\nml-collections==1.1.0\n")
    changed, ok, added = check.freeze_diff(before, after, allowed={"keep": "a reason"})
    assert changed == ["! ipywidgets 7.7.1 -> 8.1.9"]
    assert ok == ["~ keep 1 -> (removed)   (a reason)"]
    assert added == ["+ augreg-nb file:///src/augreg_nb", "+ ml-collections 1.1.0"]
    assert all(reason.strip() for reason in check.ALLOWED_CHANGES.values())


def _colab_versions() -> dict[str, str]:
    text = check.version_list().read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("googlecolab/backend-info" in line for line in header)  # the source
    assert any(re.search(r"\d{4}-\d{2}-\d{2}", line) for line in header)  # and its date
    return check.parse_freeze(text)


def test_colab_versions_satisfy_every_dependency():
    """Installing into Colab has no reason to move Colab's packages: each core requirement
    that Colab ships is met by Colab's version (the check proves the rest by installing)."""
    colab_versions = _colab_versions()
    assert colab_versions["jax"] == "0.7.2" and colab_versions["ipywidgets"] == "7.7.1"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    met = []
    for dep in map(Requirement, deps):
        version = colab_versions.get(check.canonical(dep.name))
        if version is not None:
            assert dep.specifier.contains(version), f"{dep} excludes Colab's {version}"
            met.append(dep.name)
    assert {"jax", "flax", "optax", "ipywidgets", "tensorflow-datasets"} <= set(met)
    assert not any(Requirement(d).name == "jupyterlab" for d in deps)


@pytest.mark.parametrize("name", ["jax", "flax", "optax"])
def test_lower_bounds_are_the_tested_colab_versions(name):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (dep,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    assert str(dep.specifier) == f">={_colab_versions()[name]}"


def test_uploads_in_the_ipywidgets_7_format_colab_has():
    """ipywidgets 7's FileUpload value is ``{name: {"metadata": {...}, "content": bytes}}``
    (8's: a tuple of dicts with ``name``); the inference panel reads both."""
    import io

    import numpy as np
    from PIL import Image

    from augreg_nb.widgets import inference_panel as ip

    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    meta = {"name": "half.png", "type": "image/png", "size": len(buf.getvalue()),
            "lastModified": 0}
    got = ip.uploaded_images({"half.png": {"metadata": meta, "content": buf.getvalue()}})
    np.testing.assert_array_equal(np.asarray(got["half.png"]), image)


def test_the_colab_check_runs_test_files_that_exist():
    """A renamed or removed test file must not silently drop out of the Colab check."""
    missing = [name for name in check.COLAB_TESTS if not (REPO / "tests" / name).is_file()]
    assert not missing, f"tests/colab/check.py names test files that do not exist: {missing}"
    assert "test_notebooks.py" in check.COLAB_TESTS


# --------------------------------------------------------------------------- the ref it installs


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-inside-work-tree"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


needs_git = pytest.mark.skipif(not _in_git_checkout(), reason="needs git and a git checkout")


def test_every_notebook_names_the_same_default_ref():
    from augreg_nb import notebook as nbh

    cells = {path.name: check.install_cell([path]) for path in check.NOTEBOOKS}
    assert len(cells) == 7  # every notebook, 01 to 07
    assert {name: check.install_ref(cell) for name, cell in cells.items()} == {
        name: nbh.COLAB_REF for name in cells}
    with pytest.raises(SystemExit, match="AUGREG_NB_REF"):
        check.install_ref("%pip install x")


@needs_git
def test_the_ref_every_notebook_installs_exists_in_this_repository():
    """Colab installs ``git+https://...@{AUGREG_NB_REF}``: a tag that was never pushed (as
    ``v0.1.0`` once was) fails the first cell and with it the whole notebook."""
    for path in check.NOTEBOOKS:
        ref = check.install_ref(check.install_cell([path]))
        assert check.resolve_ref(ref) is not None, (
            f"{path.name} installs AUGREG_NB_REF={ref!r}, which is no branch, tag or commit "
            f"of this repository")
    assert check.resolve_ref("v0.0.0-never-tagged") is None


@needs_git
def test_the_install_cells_pip_arguments_install_the_package_from_a_git_url(tmp_path):
    """The cell's exact ``%pip install`` arguments, with the GitHub address replaced by a
    ``git+file://`` clone of this repository: pip resolves the ref, builds the package and
    installs it with its data (offline: no dependencies, the build tools already here)."""
    cell = check.install_cell()
    ref = check.install_ref(cell)
    commit = check.resolve_ref(ref)
    clone = tmp_path / "augreg_nb.git"
    _git("clone", "-q", "--mirror", REPO.as_uri(), str(clone), cwd=tmp_path)
    if ref != commit and subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "--verify", "--quiet", ref],
            capture_output=True).returncode != 0:
        _git("branch", ref, commit, cwd=clone)  # a CI checkout holds it as origin/<ref> only
    args = check.pip_install_args(cell)
    (address,) = [a for a in args if "git+https://" in a]
    # file://localhost/...: pip's older URL parser wants a host in a git+file URL.
    served = "file://localhost" + clone.as_posix()
    url = check.GIT_ADDRESS.sub(f"git+{served}@{ref}", address)
    local = [url if a == address else a for a in args]
    assert local[0] == "install" and len(local) == len(args)
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *local, "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (info,) = target.glob("augreg_nb-*.dist-info")
    direct = json.loads((info / "direct_url.json").read_text())
    assert direct["url"] == served and direct["vcs_info"]["commit_id"] == commit
    assert (target / "augreg_nb" / "colab.py").is_file()
    assert list((target / "augreg_nb" / "_data").rglob("*.csv"))  # the shipped tables
