"""The VTAB panel of notebook 6: its table, group means, progress text and dataset notice
(pure functions, against numbers written out here), the panel's controls, and a smoke-mode
sweep driven through its buttons: Start, the table filling in, Stop, Start resuming it."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

pytest.importorskip("tensorflow")

from augreg_nb import vtab, vtab_run  # noqa: E402
from augreg_nb.widgets import vtab_panel as vp  # noqa: E402
from augreg_nb.widgets.vtab_panel import Progress, VtabPanel  # noqa: E402

#: Table 5 of the paper, ImageNet-21k (300ep), written out from the paper.
B16_I21K = {"dtd": 79.1, "svhn": 97.0, "eurosat": 98.7, "clevr_count": 99.7,
            "Mean_natural": 91.8, "Mean_specialized": 91.6, "Mean_structured": 79.2}
TI16_I21K = {"dtd": 73.1, "eurosat": 98.5, "clevr_count": 98.3}
NATURAL_B16_I21K = [96.0, 93.2, 79.1, 99.6, 94.7, 83.0, 97.0]


def row(task, test, val=0.5, lr=0.01, steps=500, runs=8):
    return {"vtab_task": task, "adapt_final_test": test, "adapt_final_val": val,
            "adapt_lr": lr, "adapt_steps": steps, "runs": runs}


def test_paper_values_and_the_row_compared_with():
    values = vp.paper_values("ImageNet-21k (300ep)", "B/16")
    for name, top1 in B16_I21K.items():
        assert values[name] == pytest.approx(top1)
    assert [values[n] for n in vtab.names("natural")] == pytest.approx(NATURAL_B16_I21K)
    assert len([k for k in values if not k.startswith("Mean_")]) == 19
    assert vp.paper_row_for("B/16") == ("ImageNet-21k (300ep)", "B/16")
    assert vp.paper_row_for("S_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0") == (
        "ImageNet-1k (300ep)", "S/32")
    assert vp.paper_row_for("/some/file.npz") == ("ImageNet-21k (300ep)", "B/16")
    assert vp.paper_row_for("fake:testing", smoke=True) == ("ImageNet-21k (300ep)", "Ti/16")


def test_task_table_rows():
    paper = {"dtd": 79.1, "svhn": 97.0}
    table = vp.task_table(["dtd", "svhn", "eurosat"],
                          {"svhn": row("svhn", 0.9125, val=0.935, lr=0.003, steps=2500)},
                          paper, {"dtd": "run 3 of 8"})
    assert list(table.columns) == list(vp.TABLE_COLUMNS)
    assert list(table["task"]) == ["DTD", "SVHN", "EuroSAT"]
    assert list(table["group"]) == ["natural", "natural", "specialized"]
    assert list(table["status"]) == ["run 3 of 8", "done", "waiting"]
    svhn = table.iloc[1]
    assert (svhn["lr"], svhn["steps"], svhn["runs"]) == (0.003, 2500, 8)
    assert svhn["val %"] == pytest.approx(93.5) and svhn["test %"] == pytest.approx(91.25)
    assert svhn["paper %"] == 97.0 and svhn["diff"] == pytest.approx(91.25 - 97.0)
    assert table.iloc[0]["paper %"] == 79.1 and math.isnan(table.iloc[0]["test %"])
    assert math.isnan(table.iloc[2]["paper %"])  # no paper number given for it


def test_group_means_partial_and_complete():
    paper = vp.paper_values("ImageNet-21k (300ep)", "B/16")
    tests = [0.90, 0.80, 0.70, 0.95, 0.85, 0.75, 0.65]
    results = {n: row(n, t) for n, t in zip(vtab.names("natural"), tests, strict=True)}
    results["eurosat"] = row("eurosat", 0.97)
    names = vtab.names("natural") + ("eurosat", "camelyon")
    means = vp.group_means(names, results, paper).set_index("group")
    assert list(means.index) == ["natural", "specialized"]  # no structured task chosen
    natural = means.loc["natural"]
    assert natural["finished"] == "7 of 7" and natural["complete"]
    assert natural["own mean %"] == pytest.approx(100 * sum(tests) / 7)
    assert natural["paper, same tasks %"] == pytest.approx(sum(NATURAL_B16_I21K) / 7)
    assert natural["paper's group mean %"] == 91.8
    special = means.loc["specialized"]
    assert special["finished"] == "1 of 4" and not special["complete"]
    assert special["own mean %"] == pytest.approx(97.0)
    assert special["paper, same tasks %"] == pytest.approx(98.7)  # EuroSAT alone
    assert special["paper's group mean %"] == 91.6


def test_progress_text():
    p = Progress(tasks=("dtd", "eurosat", "clevr_count"), runs_per_task=8)
    assert vp.progress_text(p) == ("0 of 3 task(s) finished · 0 of 24 runs", "")
    p.done, p.task, p.run, p.lr, p.steps, p.step = ("dtd",), "eurosat", 3, 0.01, 500, 120
    p.loss = 1.23456
    overall, current = vp.progress_text(p)
    assert overall == "1 of 3 task(s) finished · 10 of 24 runs"
    assert current == ("task 2 of 3: EuroSAT · run 3 of 8 (lr 0.01, 500 steps) · step 120 "
                       "of 500 · loss 1.2346")
    p.done = ("dtd", "eurosat", "clevr_count")
    assert vp.progress_text(p) == ("3 of 3 task(s) finished · 24 of 24 runs", "")


def test_dataset_notice_gives_the_manual_steps_up_front(tmp_path):
    status = vtab_run.dataset_status(["dtd", "resisc45"], data_dir=str(tmp_path))
    kind, text = vp.dataset_notice(status, data_dir=str(tmp_path))
    assert kind == "error"
    for needed in ("1 chosen VTAB task(s) need a manual download", "- resisc45:",
                   "NWPU-RESISC45", str(tmp_path / "downloads" / "manual"),
                   "tfds build resisc45:3.0.0", "leave them out: choose the tasks or a group"):
        assert needed in text, needed
    kind, text = vp.dataset_notice({"dtd": "needs download", "svhn": "prepared"})
    assert kind == "note" and "1 dataset(s)" in text and "DTD" in text and "SVHN" not in text
    assert vp.dataset_notice({"dtd": "prepared"}) == ("", "")


def test_panel_controls_without_running_anything(tmp_path):
    from augreg_nb import index as index_lib

    catalogue = index_lib.load_index("catalogue")
    panel = VtabPanel(catalogue, checkpoint="B/16", group="specialized",
                      workdir=tmp_path / "runs", data_dir=str(tmp_path))
    assert panel.checkpoint.value.startswith("B_16-i21k-300ep-")  # the recommended one
    assert panel.names == vtab.names("specialized")
    assert panel.compare.value == "ImageNet-21k (300ep)|B/16"
    # Resisc45 and Retinopathy need files by hand: said before Start, which is off.
    assert "Manual download needed" in panel.datasets.value
    assert "kaggle.com" in panel.datasets.value and panel.start_button.disabled
    assert "needs a manual step" in panel.table.value
    panel.tasks.value = ("camelyon", "eurosat")
    assert panel.group.value == "list" and not panel.start_button.disabled
    assert "Manual download" not in panel.datasets.value and "Camelyon" in panel.datasets.value
    panel.group.value = "natural"
    assert panel.tasks.value == vtab.names("natural")
    assert "7 task(s) x 8 runs = 56 runs" in panel.plan.value
    assert "at 384 px" in panel.plan.value
    assert panel.workdir.name == panel.workdir.name.split("-short")[0]
    panel.grid.value = "short"
    assert "NOT the paper's" in panel.grid.label
    assert "7 task(s) x 4 runs = 28 runs" in panel.plan.value
    assert panel.workdir.name.endswith("-short")  # never mixed with the paper grid's runs
    table = panel.table_rows
    assert list(table["paper %"]) == pytest.approx(NATURAL_B16_I21K)
    panel.tasks.value = ()
    assert panel.start_button.disabled and panel.messages.kind == "error"
    assert not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.slow
def test_smoke_sweep_fills_the_table_stops_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    panel = VtabPanel(workdir=tmp_path / "runs", smoke=True, data_dir=str(tmp_path))
    assert panel.names == vp.SMOKE_TASKS
    assert "TFDS mock data" in panel.smoke_notice.value
    assert "NOT the paper's" in panel.grid.label
    assert panel.stop_button.disabled
    panel.start_button.click()
    assert panel.running and panel.start_button.disabled and not panel.stop_button.disabled
    deadline = time.monotonic() + 120
    while not panel.results and panel.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(panel.results) == ["dtd"]  # the table fills in as tasks finish
    assert "1 of 3 task(s) finished" in panel.overall_label.value
    panel.stop_button.click()
    panel.wait(120)
    assert panel.messages.kind == "warning", panel.messages.text
    assert panel.messages.text.startswith("stopped at ") and "Start resumes" in panel.messages.text
    assert len(panel.results) < 3 and panel.result.stopped
    assert not panel.start_button.disabled and panel.stop_button.disabled
    assert panel.stopped_at and panel.messages.text.startswith(f"stopped at {panel.stopped_at}")
    assert "Traceback" not in panel.library_output
    first = sorted((panel.workdir / "dtd").glob("*/result.json"))
    assert len(first) == 2
    stamps = [p.stat().st_mtime_ns for p in first]

    panel.start_button.click()
    panel.wait(180)
    assert panel.messages.kind == "info", panel.messages.text
    assert panel.messages.text.startswith("finished: 3 task(s)")
    assert not panel.start_button.disabled and panel.stop_button.disabled
    assert [p.stat().st_mtime_ns for p in first] == stamps  # read back, not trained again
    assert "3 of 3 task(s) finished · 6 of 6 runs" in panel.overall_label.value
    assert panel.overall_bar.value == panel.overall_bar.max == 6
    # The table against what the sweep wrote: per task the run with the best val.
    on_disk = vtab_run.read_results(panel.workdir)
    table = panel.table_rows.set_index("task")
    for name in vp.SMOKE_TASKS:
        runs = pd.read_csv(panel.workdir / name / "sweep.csv")
        best = runs.loc[runs["adapt_final_val"].idxmax()]
        shown = table.loc[vtab.SPECS[name].column]
        assert shown["status"] == "done" and shown["runs"] == 2
        assert shown["lr"] == best["adapt_lr"] and shown["steps"] == 2
        assert shown["test %"] == pytest.approx(100 * best["adapt_final_test"])
        assert shown["paper %"] == TI16_I21K[name]
        assert on_disk.set_index("vtab_task").loc[name, "adapt_final_test"] == \
            pytest.approx(best["adapt_final_test"])
    assert "augreg-table" in panel.table.value and "Group means" in panel.means.value
    assert "1 of 7" in panel.means.value
    html = panel.table5().to_html()
    assert "Own: unknown data" in html and "testing" in html
    fig = panel.figure3()
    assert len(fig.axes) >= 3


def test_shown_table_prints_one_decimal_like_table5():
    table = vp.task_table(["dtd", "svhn"], {"svhn": row("svhn", 0.96, val=0.935, lr=0.003)},
                          {"dtd": 79.1, "svhn": 97.0})
    shown = vp.shown_table(table)
    assert shown.iloc[1][["lr", "val %", "test %", "paper %", "diff"]].tolist() == [
        "0.003", "93.5", "96.0", "97.0", "-1.0"]
    assert shown.iloc[0][["lr", "test %", "paper %", "diff"]].tolist() == ["", "", "79.1", ""]


def _panel(tmp_path, **kwargs):
    return VtabPanel(checkpoint="B/16", workdir=tmp_path / "runs", data_dir=str(tmp_path),
                     **kwargs)


def test_full_vtab_by_default_and_1k_on_its_own(tmp_path):
    panel = _panel(tmp_path, tasks="dtd, svhn")
    assert panel.variant.value == "full" and not panel.one_k
    assert "-full-" in panel.workdir.name and "full VTAB (Table 5's data)" in panel.plan.value
    assert "yours minus the paper's" in panel.table.value
    assert "Table 5" in panel.table5_view.value and panel.figure3_image.value
    panel.results = {"svhn": {**row("svhn", 0.9), "adapt_ds": "vtab1k/svhn"}}
    panel.variant.value = "1k"  # another sweep: its own folder, nothing of the full one
    assert panel.one_k and "-1k-" in panel.workdir.name and panel.results == {}
    assert panel.compare.disabled and panel.paper == {}
    panel.results = {"svhn": row("svhn", 0.9)}
    panel._show_table()
    assert "yours minus" not in panel.table.value and "paper %" not in panel.table.value
    assert "shown on its own" in panel.table.value
    html = panel.table5().to_html()
    assert "Own:" not in html and "Table 5 reports full VTAB" in html and "90.0" in html
    panel._redraw()
    assert "not drawn on it" in panel.figure3_note.value
    assert panel.figure3_image.layout.display == "none"


def test_finished_tasks_of_the_folder_are_shown_when_the_panel_opens(tmp_path):
    panel = _panel(tmp_path, tasks="dtd, svhn")
    panel.workdir.mkdir(parents=True)
    pd.DataFrame([{**row("dtd", 0.75), "adapt_ds": "vtab/dtd"}]).to_csv(
        panel.workdir / vtab_run.RESULTS_FILE, index=False)
    again = _panel(tmp_path, tasks="dtd, svhn")
    assert list(again.results) == ["dtd"]
    assert again.table_rows.set_index("task").loc["DTD", "test %"] == pytest.approx(75.0)


def test_a_sweep_that_raises_is_red_with_its_reason(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        kwargs["on_status"]("checking the datasets of 1 task(s) ...")
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(vtab_run, "run_vtab", boom)
    panel = _panel(tmp_path, tasks="dtd")
    panel.start_button.click()
    panel.wait(30)
    assert panel.messages.kind == "error" and "the disk is full" in panel.messages.text
    assert panel.overall_bar.bar_style == "danger" and panel.task_bar.bar_style == "danger"
    assert "success" not in (panel.overall_bar.bar_style, panel.task_bar.bar_style)
    assert not panel.start_button.disabled and panel.now.value == ""


def test_no_network_says_so_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(vtab_run, "PROBE_HOST", "augreg-nb-test.invalid")
    panel = _panel(tmp_path, tasks="dtd, clevr_count")
    assert "needs a download" in panel.table.value  # per task, before Start
    started = time.perf_counter()
    panel.start_button.click()
    panel.wait(30)
    assert time.perf_counter() - started < 5
    assert panel.messages.kind == "error"
    assert "this machine seems to have no network" in panel.messages.text
    assert "needs a download: DTD, Clevr-Count" in panel.messages.text


def test_stop_while_preparing_a_dataset(tmp_path, monkeypatch):
    from tests.vtab_children import slow_child

    def slow_prepare(task_name, *, data_dir=None, should_stop=None, on_status=None):
        on_status("preparing DTD: TFDS downloads 629 MB and prepares it ...")
        vtab_run.run_stoppable(slow_child, (60.0,), what="DTD", should_stop=should_stop)

    monkeypatch.setattr(vtab_run, "prepare_task", slow_prepare)
    monkeypatch.setattr(vtab_run, "network_problem", lambda: None)
    panel = _panel(tmp_path, tasks="dtd")
    panel.start_button.click()
    deadline = time.monotonic() + 30
    while "preparing DTD" not in panel.now.value and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Now</b>: preparing DTD: TFDS downloads 629 MB" in panel.now.value
    stopped = time.perf_counter()
    panel.stop_button.click()
    panel.wait(30)
    assert time.perf_counter() - stopped < 5
    assert panel.messages.kind == "warning"
    assert panel.messages.text.startswith("stopped while preparing DTD")
    assert panel.result.stopped and not panel.results


@pytest.mark.slow
def test_cost_here_times_a_step_and_states_the_grid(tmp_path):
    panel = VtabPanel(workdir=tmp_path / "runs", smoke=True, data_dir=str(tmp_path))
    assert "not measured yet" in panel.plan.value
    panel.cost_button.click()
    panel._cost_thread.join(120)
    assert "On this machine the chosen grid takes about" in panel.plan.value, panel.plan.value
    assert "3 task(s) x 2 runs = 6 runs, 12 training steps" in panel.plan.value
