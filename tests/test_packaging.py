"""A wheel built from this tree carries every sub-package and the shipped data."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "augreg_nb").rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {found - listed}"


@pytest.mark.slow
def test_wheel_contains_code_and_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("augreg_nb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (REPO / "augreg_nb").rglob("*.py"):
        assert str(module.relative_to(REPO)) in names, module
    for data in (REPO / "data").rglob("*"):
        if data.is_file():
            assert "augreg_nb/_data/" + str(data.relative_to(REPO / "data")) in names, data
