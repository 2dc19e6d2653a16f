"""Repository rules that CI enforces: lint, stripped notebooks, README <-> .ci/run."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    proc = subprocess.run(
        [ruff, "check", "augreg_nb", "tests", "bench"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; strip them with "
        "`jupyter nbconvert --clear-output --inplace notebooks/*.ipynb`"
    )


def _readme_commands():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _readme_commands()
    assert len(blocks) >= 2, "README quickstart must have the set-up and the test command"
    test_cmd = blocks[1].strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), f"{test_cmd!r} is not a line of .ci/run"


def test_every_readme_cli_command_parses():
    """Each `augreg-nb ...` line of the README names real sub-commands and flags.

    The commands themselves run in the modules' own tests (on fakes); this keeps the README
    from drifting away from the command line.
    """
    import shlex

    from augreg_nb.cli import build_parser

    parser = build_parser()
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # joins continued lines
            words = shlex.split(line, comments=True)
            if ">" in words:  # drop a shell redirection
                words = words[: words.index(">")]
            if words and words[-1] == "&":  # started in the background
                words = words[:-1]
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # leading VAR=value assignments
            if words[:3] == ["python", "-m", "augreg_nb"]:
                words = ["augreg-nb", *words[3:]]
            if words and words[0].endswith("augreg-nb"):
                lines.append(words)
    assert len(lines) >= 15, lines
    for words in lines:
        try:
            args = parser.parse_args(words[1:])
        except SystemExit as exit_:  # argparse reports unknown flags this way
            raise AssertionError(f"README command does not parse: {' '.join(words)}") from exit_
        assert getattr(args, "func", None) is not None, words
