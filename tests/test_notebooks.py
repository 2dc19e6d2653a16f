"""The notebooks: their shape (badge, Colab cell, device report, parameters, thin cells) and a
headless run of each in offline smoke mode through nbclient, with the widgets' outputs."""

from __future__ import annotations

import ast
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = (
    "01_choose_checkpoint.ipynb",
    "02_finetune.ipynb",
    "03_paper_figures.ipynb",
    "04_inference.ipynb",
    "05_augreg.ipynb",
    "06_vtab.ipynb",
    "07_rank_checkpoints.ipynb",
)
#: Cells that may not run headless (none).
SKIP_HEADLESS: tuple[str, ...] = ()
COLAB = "https://colab.research.google.com/github/augreg-nb/augreg_nb/blob/main/notebooks/"
INSTALL = ('%pip install -q '
           '"augreg_nb @ git+https://github.com/augreg-nb/augreg_nb@{AUGREG_NB_REF}"')
# nbclient's per-cell limit. How long each notebook takes is measured by the benchmarks
# (`python -m bench --only notebooks`), not asserted here: timings are no test outcome.
CELL_TIMEOUT_S = 120


def _read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_shape(name):
    from IPython.core.inputtransformer2 import TransformerManager

    nb = _read(name)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert f"({COLAB}{name})" in first.source and "colab-badge.svg" in first.source
    code = _code(nb)
    # 1. installs a pinned release only in Colab, without extras, and says whether to restart.
    setup = code[0].source
    assert 'if "google.colab" in sys.modules:' in setup
    assert INSTALL in setup and "[" not in setup.split("\n", 3)[-1]
    assert "print(restart_note(before))" in setup
    assert "enable_custom_widget_manager" not in setup  # Colab's ipywidgets 7 needs none
    # 2. the device report.
    assert "nb.device_report()" in code[1].source
    # 3. one parameters cell of literal assignments with Colab forms.
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse(tagged[0].source)
    assert tree.body and all(isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
                             for s in tree.body)
    for line in tagged[0].source.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#@param" in line, line
    # Test plumbing stays out of the user's view: the tests press the buttons themselves.
    text = "\n".join(c.source for c in nb.cells)
    assert "PRESS_BUTTONS" not in text and "does what a click does" not in text
    # Thin cells: valid IPython, no functions, classes or loops.
    for cell in code:
        src = TransformerManager().transform_cell(cell.source)
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While,
                                         ast.Lambda)), (name, cell.source)
        assert len(cell.source.splitlines()) <= 14, (name, cell.source)
    assert not SKIP_HEADLESS


# --------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernel spec running this interpreter (the project's .venv in CI)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "augreg-nb-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "augreg_nb (tests)", "language": "python",
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        yield "augreg-nb-test"


def _widget_states(nb) -> dict:
    return nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})


def _all_outputs(nb) -> list:
    """Cell outputs and the outputs captured by Output widgets."""
    outs = [o for c in _code(nb) for o in c.outputs]
    for model in _widget_states(nb).values():
        if model["model_name"] == "OutputModel":
            outs += model["state"].get("outputs", [])
    return outs


def _html_values(nb) -> list[str]:
    return [m["state"].get("value", "") for m in _widget_states(nb).values()
            if m["model_name"] == "HTMLModel"]


def _text(outputs) -> str:
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif "data" in o:
            parts.append(str(o["data"].get("text/plain", "")))
    return "\n".join(parts)


def _execute(name, kernel_name, tmp_path, monkeypatch, press: str = ""):
    """Run notebook ``name`` in smoke mode; ``press`` is code run after its last cell in
    the same kernel (pressing the panels' buttons as a user would), as an extra cell."""
    from nbclient import NotebookClient

    monkeypatch.setenv("AUGREG_NB_SMOKE", "1")
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path.parent / "user-cache"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = _read(name)
    if press:
        nb.cells.append(nbformat.v4.new_code_cell(press))
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT_S,
                            startup_timeout=90, record_timing=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / name)  # the executed notebook, for a look after a failure
    wall = time.perf_counter() - start
    print(f"{name}: {_run_seconds(nb):.1f} s top to bottom ({wall:.1f} s with kernel start/stop)")
    return nb, _run_seconds(nb)


def _run_seconds(nb) -> float:
    """Seconds from the first cell's start to the last cell's reply (kernel clock)."""
    from datetime import datetime

    times = [c.metadata["execution"] for c in _code(nb) if "execution" in c.metadata]
    first = datetime.fromisoformat(times[0]["iopub.execute_input"].replace("Z", "+00:00"))
    last = datetime.fromisoformat(times[-1]["shell.execute_reply"].replace("Z", "+00:00"))
    return (last - first).total_seconds()


def _check_common(nb, name):
    outputs = _all_outputs(nb)
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    shown_errors = [v for v in _html_values(nb) if "augreg-error" in v]
    assert not shown_errors, f"{name} showed an error message: {shown_errors[0]}"
    assert "Traceback" not in _text(outputs)
    report = _text(_code(nb)[1].outputs)
    assert "CPU:" in report and "x cpu" in report
    assert "Smoke mode" in _text(outputs)
    return outputs


def _pngs(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_01_choose_checkpoint_runs(kernel_name, tmp_path, monkeypatch):
    nb, _ = _execute("01_choose_checkpoint.ipynb", kernel_name, tmp_path, monkeypatch,
                     press="browser.fetch_button.click()\nprint(browser.messages.text)")
    outputs = _check_common(nb, "01")
    htmls = _html_values(nb)
    assert any("shipped offline catalogue" in v and "incomplete" in v for v in htmls)
    table = next(v for v in htmls if "augreg-table" in v)
    assert "Ti/16" in table and "☆" in table  # the fine-tune of the recommended checkpoint
    assert "R26+S/32" not in table  # the filters start at Ti/16 in smoke mode
    text = _text(outputs)
    assert "is ready:" in text and "from bucket-https" in text


@pytest.mark.slow
def test_02_finetune_runs(kernel_name, tmp_path, monkeypatch):
    nb, _ = _execute("02_finetune.ipynb", kernel_name, tmp_path, monkeypatch, press=(
        "panel.start_button.click()\npanel.wait()\npanel.export_button.click()\n"
        "print(panel.messages.text)\nprint('plot PNG bytes:', len(panel.plot.value))\n"
        "panel.history"))
    outputs = _check_common(nb, "02")
    text = _text(outputs)
    assert "plot PNG bytes: 0" not in text and "plot PNG bytes:" in text  # the live plot
    assert any("Final accuracy" in v and "Your run: test accuracy" in v
               for v in _html_values(nb))
    assert "result row appended to" in text and ".npz" in text
    history = next(o for o in _code(nb)[-1].outputs
                   if o.get("output_type") == "execute_result")["data"]["text/html"]
    assert "val_accuracy" in history and "test_accuracy" in history


def test_03_paper_figures_runs(kernel_name, tmp_path, monkeypatch):
    # A result exported by notebook 2 in smoke mode: the shared file under the user's cache.
    from augreg_nb.widgets.finetune_panel import export_result_row

    shared = tmp_path.parent / "user-cache" / "smoke" / "augreg_results.csv"
    if shared.exists():
        shared.unlink()
    export_result_row({"name": "testing", "adapt_ds": "digits", "adapt_resolution": 32,
                       "adapt_final_val": 0.3, "adapt_final_test": 0.25,
                       "adapt_filename": "fake--digits-20-0.03-32"}, shared)
    nb, _ = _execute("03_paper_figures.ipynb", kernel_name, tmp_path, monkeypatch, press=(
        "picker.item.value = 'own'\npicker.reload_button.click()\n"
        "print(picker.own_status.value)\nprint(picker.shown.item)"))
    outputs = _check_common(nb, "03")
    assert _pngs(outputs) >= 2  # the picked figure and Figure 4 drawn by the library call
    lib = next(c for c in _code(nb) if "figures.plot_fig4" in c.source)
    assert _pngs(lib.outputs) == 1
    text = _text(_code(nb)[-1].outputs)
    assert "1 own result row(s) read from" in text and str(shared) in text
    assert text.strip().endswith("own")
    # Pandas shows the explanations of the missing figures whole, not cut at 50 characters.
    from augreg_nb import figures

    why = next(c for c in _code(nb) if "NOT_REPRODUCIBLE" in c.source).outputs[0]
    for reason in figures.NOT_REPRODUCIBLE.values():
        assert reason in why["data"]["text/plain"].replace("\n", " ") or \
            reason in why["data"].get("text/html", "")


@pytest.mark.slow
def test_04_inference_runs(kernel_name, tmp_path, monkeypatch):
    nb, _ = _execute("04_inference.ipynb", kernel_name, tmp_path, monkeypatch, press=(
        "panel.load_button.click()\npanel.classify_button.click()\n"
        "print(panel.messages.text)"))
    outputs = _check_common(nb, "04")
    assert _pngs(outputs) >= 1  # the top-5 chart
    assert "classified 3 image(s)" in _text(outputs)
    assert any("1,000 classes, 384 px" in v for v in _html_values(nb))


@pytest.mark.slow
def test_07_rank_checkpoints_runs(kernel_name, tmp_path, monkeypatch):
    nb, _ = _execute("07_rank_checkpoints.ipynb", kernel_name, tmp_path, monkeypatch, press=(
        "panel.estimate_button.click()\npanel.wait()\nprint(panel.plan_html.value)\n"
        "panel.start_button.click()\npanel.wait()\nprint(panel.messages.text)\n"
        "panel.plot()\nprint('CHECKPOINT =', repr(panel.winner))"))
    outputs = _check_common(nb, "07")
    text = _text(outputs)
    assert "No ranking yet" in text  # the plot cell before Start says so
    assert "Cost here" in text and "ranked 3 candidate(s) on digits" in text
    assert "CHECKPOINT = 'fake:" in text
    htmls = _html_values(nb)
    assert any("Smoke data" in v for v in htmls)
    assert any("augreg-table" in v and "fake:Ti/16" in v for v in htmls)
    assert _pngs(outputs) >= 1


# --------------------------------------------------------------------------- helpers


def test_colab_helpers_match_the_notebooks():
    from augreg_nb import notebook as nbh

    assert not nbh.in_colab() and nbh.enable_colab_widgets() is False
    assert "[" not in nbh.COLAB_INSTALL
    for name in NOTEBOOKS:
        nb = _read(name)
        assert nbh.colab_badge(name) in nb.cells[0].source
        assert f'"{nbh.COLAB_INSTALL}"' in _code(nb)[0].source
        assert f'AUGREG_NB_REF = "{nbh.COLAB_REF}"' in _code(nb)[0].source


def test_smoke_session_serves_fake_checkpoints_on_loopback_only(tmp_path, monkeypatch):
    import os

    from augreg_nb import notebook as nbh
    from augreg_nb.checkpoint import read_npz
    from augreg_nb.sources import resolve_checkpoint

    monkeypatch.setenv("AUGREG_NB_SMOKE", "1")
    monkeypatch.setenv("AUGREG_NB_INDEX", str(tmp_path / "not-used.csv"))
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "user-cache"))
    before = dict(os.environ)
    session = nbh.start()
    env = session.smoke_env
    try:
        assert session.smoke and nbh.setup_smoke() is env  # one smoke set-up per process
        assert session.index.attrs["provenance"]["kind"] == "catalogue"
        assert session.workdir.parent == env.root
        # Own results: one file under the user's cache, shared by notebooks 2 and 3.
        assert session.results_csv == tmp_path / "user-cache" / "smoke" / "augreg_results.csv"
        assert "Smoke mode" in session.report and "CPU:" in session.report
        assert os.environ["AUGREG_NB_BUCKET_URL"].startswith("http://127.0.0.1:")
        assert os.environ["HF_ENDPOINT"].startswith("http://127.0.0.1:")
        assert "AUGREG_NB_INDEX" not in os.environ
        up, ft = env.checkpoints
        resolved = resolve_checkpoint(ft, progress=False)
        assert resolved.source == "bucket-https"
        assert resolved.path.is_relative_to(env.root)
        shapes = {k: v.shape for k, v in read_npz(resolved.path).items()}
        assert shapes["head/kernel"] == (192, 1000)  # Ti/16 ImageNet head, published layout
        assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 577, 192)  # 384 px
        assert ft.startswith(up + "--")
    finally:
        env.close()
    assert dict(os.environ) == before
    assert not env.root.exists()


@pytest.mark.slow
def test_05_augreg_runs(kernel_name, tmp_path, monkeypatch):
    nb, _ = _execute("05_augreg.ipynb", kernel_name, tmp_path, monkeypatch, press=(
        # Shorter runs than the smoke grid's (a minute or two): the cell has 120 s.
        "panel.steps.value, panel.transfer_steps.value = 60, 20\n"
        "panel.start_button.click()\npanel.wait()\n"
        "print('runs', len(panel.configs()), panel.messages.kind, panel.messages.text)\n"
        "print('live figures:', [len(v.children[1].value) for v in "
        "(panel.live_heatmap(), panel.live_compute_plot())])\n"
        "display(panel.heatmap())\ndisplay(panel.compute_plot())\n"
        "panel.rows[['filename', 'aug', 'adapt_final_test', 'seconds']]"))
    outputs = _check_common(nb, "05")
    text = _text(outputs)
    runs = re.search(r"runs (\d+) (\w+) (\d+) done", text)
    assert runs, text[-2000:]
    assert runs.group(2) == "info" and runs.group(1) == runs.group(3)  # green: all done
    live = re.search(r"live figures: \[(\d+), (\d+)\]", text)
    assert live and min(map(int, live.groups())) > 1000  # redrawn by the grid, no re-run
    assert _pngs(outputs) >= 3  # the paper's Figure 4, own heat map, own Figure 2
    rows = next(o for o in _code(nb)[-1].outputs
                if o.get("output_type") == "execute_result")["data"]["text/html"]
    assert "medium2" in rows and "scratch" in rows
    assert any("augreg-table" in v and "scratch" in v for v in _html_values(nb))


@pytest.mark.slow
def test_06_vtab_runs(kernel_name, tmp_path, monkeypatch):
    nb, _ = _execute("06_vtab.ipynb", kernel_name, tmp_path, monkeypatch, press=(
        "panel.start_button.click()\npanel.wait()\nprint(panel.messages.text)\n"
        "print(panel.overall_label.value)\ndisplay(panel.table5())\n"
        "display(panel.figure3())\npanel.own_rows[['vtab_task', 'adapt_final_test', 'runs']]"))
    outputs = _check_common(nb, "06")
    text = _text(outputs)
    assert "finished: 3 task(s)" in text
    assert "3 of 3 task(s) finished · 6 of 6 runs" in text
    htmls = _html_values(nb)
    assert any("Smoke data" in v and "TFDS mock data" in v for v in htmls)
    assert any("augreg-table" in v and "Clevr-Count" in v and "done" in v for v in htmls)
    assert _pngs(outputs) >= 1  # Figure 3 after the sweep (the view above is a widget)
    rows = next(o for o in _code(nb)[-1].outputs
                if o.get("output_type") == "execute_result")["data"]["text/html"]
    assert "clevr_count" in rows and "eurosat" in rows
    assert any("Own: unknown data" in o.get("data", {}).get("text/html", "")
               for o in _code(nb)[-1].outputs + outputs)
