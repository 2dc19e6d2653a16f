"""The smoke preset needs nothing beyond the core dependencies (and a TensorFlow).

A wheel installed with only ``dependencies`` from pyproject.toml, plus the ``tf`` extra's
TensorFlow that Colab and the accelerator images already ship, must run
``augreg-nb finetune --preset smoke``. Installing such an environment from the package index
takes a quarter of an hour, so the test builds the same environment inside this one: it reads
the dependency closure of those requirements from the installed distributions' metadata and
runs the command in a child interpreter where every other installed distribution (pytest,
scikit-learn, nbclient, playwright, jupyterlab, ...) cannot be imported.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]

# Runs first in the child: refuses top-level modules of the distributions outside the closure.
_BLOCKER = """
import importlib.abc, json, os, sys

class _OutsideTheCoreInstall(importlib.abc.MetaPathFinder):
    blocked = frozenset(json.loads(os.environ["AUGREG_NB_TEST_BLOCKED"]))

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(
                f"{name} is not part of the core install (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _OutsideTheCoreInstall())
"""


def _closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """Canonical names of the installed distributions ``requirements`` pull in."""
    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        text, active = todo.pop()
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (*active, "")):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # an optional dependency this machine does not have
        seen.add(name)
        todo += [(r, tuple(req.extras)) for r in dist.requires or ()]
    return seen


def _blocked_modules(allowed: set[str]) -> set[str]:
    blocked = set()
    for module, dists in md.packages_distributions().items():
        if module.startswith("_") or module == "augreg_nb":
            continue  # interpreter internals (.pth hooks) and the package under test
        if not any(canonicalize_name(d) in allowed for d in dists):
            blocked.add(module)
    return blocked


def test_the_closure_reads_the_metadata():
    core = _closure(["flax"])
    assert {"flax", "jax", "optax", "numpy"} <= core
    assert "pytest" not in core


@pytest.mark.slow
def test_the_smoke_preset_runs_on_the_core_dependencies(tmp_path):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    allowed = _closure(project["dependencies"]) | _closure(project["optional-dependencies"]["tf"])
    blocked = _blocked_modules(allowed)
    # The test extra's libraries are installed here and must be refused in the child.
    assert {"sklearn", "pytest", "nbclient", "playwright"} <= blocked, sorted(blocked)

    env = dict(os.environ, AUGREG_NB_TEST_BLOCKED=json.dumps(sorted(blocked)),
               AUGREG_NB_CACHE=str(tmp_path / "cache"), TFDS_DATA_DIR=str(tmp_path / "tfds"),
               HF_HOME=str(tmp_path / "hf"), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                         os.environ.get("PYTHONPATH")])))
    code = _BLOCKER + (
        "from augreg_nb.cli import main\n"
        f"code = main(['finetune', '--preset', 'smoke', '--workdir', {str(tmp_path / 'run')!r}])\n"
        "assert 'sklearn' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    found = re.search(r"^adapt_final_test\s+([0-9.]+)$", proc.stdout, re.M)
    assert found, proc.stdout[-3000:]
    assert float(found.group(1)) > 0.3, proc.stdout[-3000:]  # ten classes: chance is 0.1
    assert list((tmp_path / "run").rglob("*.npz")), "the run exported no checkpoint"


def test_the_blocker_refuses_what_is_outside_the_closure(tmp_path):
    env = dict(os.environ, AUGREG_NB_TEST_BLOCKED=json.dumps(["sklearn"]))
    code = _BLOCKER + "import sklearn\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "not part of the core install" in proc.stderr
