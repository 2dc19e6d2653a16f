"""Colab as it is: install augreg_nb the way the notebooks do, into Colab's versions, and test.

Run from a checkout (standard library only; ``.ci/run`` runs it before the test suite)::

    python3 tests/colab/check.py                  # about 6 minutes on 2 free cores
    python3 tests/colab/check.py --python /path/to/python3.13 --keep /tmp/colab-env

Steps, each timed:

1. Build a virtual environment with Python 3.13 (Colab's) from the shipped version list
   ``colab-runtime-*.txt`` (the newest one here), used as requirements *and* as pip
   constraints, with ``pins.txt`` (versions the list does not name but Colab's image needs,
   each with its reason) as further constraints; record ``pip freeze``.
2. Run the notebooks' install cell in IPython there, as Colab runs it: ``google.colab`` is
   loaded, the modules a Colab kernel has imported at start are imported, and the cell's
   ``git+https`` address is replaced by this checkout (``file://``); every other pip argument
   is the cell's own. The cell must succeed and its last line must say that no restart is
   needed; the git ref the cell names (``AUGREG_NB_REF``) must exist in this repository
   (``tests/test_colab.py`` also installs through it from a ``git+file://`` clone).
3. ``pip freeze`` again: every preinstalled distribution must keep its version, apart from
   :data:`ALLOWED_CHANGES` (each with its reason). Additions are listed; the diff is printed.
4. Install the test tools that Colab lacks (:data:`TEST_TOOLS`) under the same constraints, so
   none of Colab's versions moves (the ``test`` extra cannot be used: it asks for a newer
   ipykernel than Colab's), and check that nothing preinstalled moved.
5. Run the unit tests of the code that goes through Colab's libraries (:data:`COLAB_TESTS`,
   not slow, no browser) and every notebook headless in smoke mode (``AUGREG_NB_SMOKE=1``,
   nbclient, Colab's ipykernel) against the *installed* package.

Exit status 0 when every step passed. Refreshing the version list: see its header.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINS = HERE / "pins.txt"
REPO = HERE.parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

#: Preinstalled distributions the install may change, with the reason. Empty: Colab's
#: versions satisfy every requirement of the package, so pip has no reason to touch them.
ALLOWED_CHANGES: dict[str, str] = {}

#: What the tests need beyond Colab's list (pytest, nbclient, nbformat, scipy, scikit-learn
#: and ipykernel are Colab's own): the options in pyproject's pytest addopts, ruff for the
#: lint test, xdist to use both cores of a CI machine.
TEST_TOOLS = ("pytest-socket>=0.7", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "ruff>=0.6")

#: Modules a Colab kernel has loaded before the first cell runs (besides IPython and
#: ipykernel): the install must not replace them under it.
KERNEL_IMPORTS = ("ipywidgets", "numpy", "pandas", "matplotlib", "PIL", "requests", "tqdm")

#: The test files that run there: those whose code paths go through the libraries Colab
#: pins (jax, flax, optax, TensorFlow, tensorflow-datasets, ipywidgets 7, pandas, matplotlib,
#: numpy, ml_collections, safetensors) and every notebook. Left out, to keep CI's time in
#: bounds: tests of the package's own plumbing on the standard library and requests
#: (downloads, sources, failure paths, names, the import graph, packaging, lint, bench, the
#: sweep and grid bookkeeping), which the main suite runs on Python 3.11.
COLAB_TESTS = (
    "test_models.py", "test_attention.py", "test_regularisation.py", "test_checkpoint.py",
    "test_timm_convert.py", "test_inference.py", "test_compile_cache.py",
    "test_train_engine.py", "test_train.py", "test_schedule.py", "test_upstream_recipe.py",
    "test_augreg_train.py", "test_config.py", "test_preprocess.py", "test_augment.py",
    "test_input_pipeline.py", "test_tasks.py", "test_vtab_tasks.py", "test_widgets.py",
    "test_finetune_panel.py", "test_inference_panel.py", "test_index_browser.py",
    "test_paper_tables.py",
    "test_vtab_panel.py", "test_notebooks.py", "test_figures.py",
    "test_figures_readability.py", "test_index.py", "test_index_queries.py", "test_colab.py",
    "test_multiprocess.py", "test_fewshot.py", "test_rank.py", "test_rank_panel.py",
    "test_matmul_dtype.py",
)
#: Of those, the tests that are not slow, and every notebook test (the execution of 02, 04,
#: 05, 06 and 07 is marked slow).
PYTEST_ARGS = (*(f"tests/{name}" for name in COLAB_TESTS),
               "-m", "not browser", "-k", "not slow or test_notebooks",
               "-p", "no:cacheprovider", "--dist", "loadfile",
               "--import-mode=append", "-q")

GIT_ADDRESS = re.compile(r"git\+https://[^\"'\s@]+@\{AUGREG_NB_REF\}")
#: The cell's form field naming the git ref it installs.
REF_FIELD = re.compile(r'^AUGREG_NB_REF = "([^"]+)"', re.M)


def version_list() -> Path:
    """The newest shipped Colab version list (``colab-runtime-YYYY-MM.txt``)."""
    lists = sorted(HERE.glob("colab-runtime-*.txt"))
    if not lists:
        raise SystemExit(f"no colab-runtime-*.txt in {HERE}")
    return lists[-1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_freeze(text: str) -> dict[str, str]:
    """``pip freeze`` output as ``{canonical name: version or direct URL}``."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("-e "):
            continue
        if " @ " in line:
            name, _, ref = line.partition(" @ ")
        else:
            name, _, ref = line.partition("==")
        found[canonical(name)] = ref.strip()
    return found


def freeze_diff(before: dict[str, str], after: dict[str, str],
                allowed: dict[str, str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """``(changed, allowed_changed, added)`` lines between two parsed freezes.

    ``changed`` are preinstalled distributions that moved or vanished and are not in
    ``allowed``; a non-empty ``changed`` fails the check.
    """
    allowed = ALLOWED_CHANGES if allowed is None else allowed
    changed, ok, added = [], [], []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            added.append(f"+ {name} {new}")
        elif name in allowed:
            ok.append(f"~ {name} {old} -> {new or '(removed)'}   ({allowed[name]})")
        else:
            changed.append(f"! {name} {old} -> {new or '(removed)'}")
    return changed, ok, added


def install_cell(notebooks: list[Path] = NOTEBOOKS) -> str:
    """The source of the notebooks' install cell (the first code cell, the same in each)."""
    sources = {}
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        code = next(c for c in cells if c["cell_type"] == "code")
        src = code["source"]
        sources[path.name] = "".join(src) if isinstance(src, list) else src
    if len(set(sources.values())) != 1:
        raise SystemExit(f"the notebooks' install cells differ: {sorted(sources)}")
    return next(iter(sources.values()))


def local_cell(cell: str, repo: Path = REPO) -> str:
    """The install cell with its ``git+https`` address replaced by ``file://`` of ``repo``."""
    new, count = GIT_ADDRESS.subn(repo.as_uri(), cell)
    if count != 1:
        raise SystemExit("the install cell has no single `git+https://...@{AUGREG_NB_REF}` "
                         "address; update GIT_ADDRESS in tests/colab/check.py to the new cell")
    return new


def install_ref(cell: str) -> str:
    """The git ref (branch, tag or commit) the install cell's ``AUGREG_NB_REF`` names."""
    found = REF_FIELD.findall(cell)
    if len(found) != 1:
        raise SystemExit('the install cell has no single `AUGREG_NB_REF = "..."` line')
    return found[0]


def resolve_ref(ref: str, repo: Path = REPO) -> str | None:
    """The commit ``ref`` names in the git checkout ``repo`` (as a branch, a tag, a commit
    or, in a CI checkout without local branches, ``origin/<ref>``); None where none."""
    for name in (ref, f"origin/{ref}"):
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                               f"{name}^{{commit}}"], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.strip()
    return None


def pip_install_args(cell: str) -> list[str]:
    """The arguments of the cell's ``%pip install`` line (for the report)."""
    import shlex

    for line in cell.splitlines():
        words = line.strip()
        if words.startswith("%pip "):
            return shlex.split(words)[1:]
    raise SystemExit("the install cell has no %pip line")


def find_python(given: str | None) -> str:
    """Python 3.13: ``--python``, ``$AUGREG_NB_COLAB_PYTHON``, ``python3.13`` on PATH, pyenv."""
    candidates = [given, os.environ.get("AUGREG_NB_COLAB_PYTHON"), shutil.which("python3.13")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")))
    candidates += ["/usr/bin/python3.13", "/usr/local/bin/python3.13"]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys, venv; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 13)":
            return exe
    raise SystemExit("Python 3.13 (with venv) not found: pass --python or set "
                     "AUGREG_NB_COLAB_PYTHON")


class Steps:
    """Runs and times the steps; prints one line per step."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times: list[tuple[str, float]] = []

    def run(self, title: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        print(f"--- {title}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True, **kwargs)
        self.times.append((title, time.perf_counter() - t0))
        print(f"    {self.times[-1][1]:.0f} s", flush=True)
        return proc

    def summary(self) -> str:
        lines = [f"{t:6.0f} s  {title}" for title, t in self.times]
        lines.append(f"{time.perf_counter() - self.start:6.0f} s  total wall time")
        return "\n".join(lines)


def freeze(pip: list[str], path: Path) -> str:
    """``pip freeze`` of the environment, also written to ``path``."""
    text = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True).stdout
    path.write_text(text)
    return text


DRIVER = """
import sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # what the cell looks for
for name in sys.argv[2].split(","):
    __import__(name)
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
result = shell.run_cell(open(sys.argv[1]).read())
code = shell.user_ns.get("_exit_code", 0)
sys.exit(0 if result.success and code == 0 else 1)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", help="Python 3.13 to build the environment with")
    parser.add_argument("--keep", type=Path,
                        help="work in this folder (venv/, the pip freezes) and keep it")
    parser.add_argument("--no-cache", action="store_true", help="pip --no-cache-dir (cold)")
    parser.add_argument("--workers", type=int, default=2,
                        help="pytest-xdist workers for the tests (default: 2, a CI machine)")
    args = parser.parse_args(argv)

    listed = version_list()
    python = find_python(args.python)
    work = args.keep or Path(tempfile.mkdtemp(prefix="augreg-colab-"))
    env = work / "venv"
    if env.exists():
        shutil.rmtree(env)
    work.mkdir(parents=True, exist_ok=True)
    bin_ = env / "bin"
    pip = [str(bin_ / "python"), "-m", "pip"]
    quiet = ["-q", "--disable-pip-version-check"] + (["--no-cache-dir"] if args.no_cache else [])
    cell = install_cell()
    print(f"Colab version list: {listed.relative_to(REPO)}; Python: {python}")
    print(f"install cell's pip arguments: {pip_install_args(cell)}")
    steps = Steps()
    failures: list[str] = []
    ref = install_ref(cell)
    if shutil.which("git") and (REPO / ".git").exists() and resolve_ref(ref) is None:
        failures.append(f"the install cell's AUGREG_NB_REF {ref!r} is no branch, tag or "
                        "commit of this repository: Colab could not install it")
    try:
        steps.run("environment", [python, "-m", "venv", str(env)], check=True)
        constraints = ["-c", str(listed), "-c", str(PINS)]
        steps.run("Colab's versions", [*pip, "install", *quiet, *constraints, "-r", str(listed)],
                  check=True)
        before = parse_freeze(freeze(pip, work / "freeze-colab.txt"))

        cell_file = work / "install_cell.py"
        cell_file.write_text(local_cell(cell))
        proc = steps.run("the notebooks' install cell",
                         [str(bin_ / "python"), "-c", DRIVER, str(cell_file),
                          ",".join(KERNEL_IMPORTS)],
                         capture_output=True, cwd=work)
        print(proc.stdout + proc.stderr)
        note = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode != 0:
            failures.append("the install cell failed")
        elif "no restart needed" not in note:
            failures.append(f"the install cell asks for a restart: {note}")

        after = parse_freeze(freeze(pip, work / "freeze-after-install.txt"))
        changed, ok, added = freeze_diff(before, after)
        print("pip freeze, before -> after the install cell:")
        print("\n".join(changed + ok + added) or "(no difference)")
        if changed:
            failures.append("the install cell changed preinstalled packages: "
                            + ", ".join(line[2:] for line in changed))

        steps.run("test tools", [*pip, "install", *quiet, *constraints, *TEST_TOOLS], check=True)
        tools = parse_freeze(freeze(pip, work / "freeze-with-test-tools.txt"))
        moved, _, _ = freeze_diff(after, tools, allowed={})
        if moved:
            failures.append("installing the test tools moved: " + ", ".join(moved))

        where = subprocess.run([str(bin_ / "python"), "-c",
                                "import augreg_nb; print(augreg_nb.__file__)"],
                               capture_output=True, text=True, cwd=work).stdout.strip()
        print(f"tests import augreg_nb from {where}")
        proc = steps.run("unit tests and the notebooks (smoke mode)",
                         [str(bin_ / "pytest"), *PYTEST_ARGS, "-n", str(args.workers)],
                         cwd=REPO)
        if proc.returncode != 0:
            failures.append(f"pytest failed (exit status {proc.returncode})")
    finally:
        print(steps.summary())
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("COLAB CHECK FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("Colab check passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
