"""AugReg grids: the configs a grid makes, Stop and resume, the panel of notebook 5 driven
like a user would, and the figures of own runs."""

import threading

import numpy as np
import pytest

from augreg_nb import config as config_lib
from augreg_nb.callbacks import Callback
from augreg_nb.grid import accuracy_table, batch_for, check_dataset, grid_configs, run_grid
from augreg_nb.index import COLUMNS
from augreg_nb.run_folder import RunFolderError
from augreg_nb.tasks import DatasetNotReadyError
from augreg_nb.testing.datasets import write_image_folder
from augreg_nb.train_state import saved
from augreg_nb.widgets.augreg_panel import AugregPanel


def test_grid_configs_cross_settings_and_starts(tmp_path):
    configs = grid_configs("augreg-smoke", augs=("none", "light2"), regs=(False, True),
                           starts=("scratch", "fake:testing"), root=tmp_path,
                           transfer_preset="smoke", overrides=["total_steps=7", "warmup_steps=1"])
    assert len(configs) == 8
    scratch, transfer = configs[:4], configs[4:]
    assert {c.recipe for c in scratch} == {"augreg"} and {c.wd for c in scratch} == {0.1}
    assert {c.recipe for c in transfer} == {"transfer"} and {c.wd for c in transfer} == {0.0}
    assert [(c.aug, c.do, c.sd) for c in scratch] == [
        ("none", 0.0, 0.0), ("none", 0.1, 0.1), ("light2", 0.0, 0.0), ("light2", 0.1, 0.1)]
    assert {c.checkpoint for c in transfer} == {"fake:testing"}
    assert {c.total_steps for c in configs} == {7}
    folders = {c.workdir for c in configs}
    assert len(folders) == 8 and all(f.startswith(str(tmp_path)) for f in folders)
    # The settings are in the run's folder name, by the index names.
    assert any("-augreg-aug_light1-wd_0.1-do_0.1-sd_0.1" in f for f in folders)


class _StopAt(Callback):
    def __init__(self, event, step):
        self.event, self.step = event, step

    def on_log(self, step, metrics):
        if step >= self.step:
            self.event.set()


def test_stop_ends_the_grid_and_start_continues(tmp_path):
    configs = grid_configs("augreg-smoke", augs=("none",), regs=(False, True),
                           root=tmp_path, overrides=[
                               "total_steps=6", "warmup_steps=1", "eval_every=0",
                               "log_every=2", "checkpoint_every=2", "export=False"])
    stop = threading.Event()
    out = run_grid(configs, callbacks=lambda c: [_StopAt(stop, 4)], stop=stop)
    assert out.stopped and out.rows.empty  # stopped inside the first run, at step 4
    assert [(o.status, o.reason) for o in out.outcomes] == [
        ("stopped", "at step 4 of 6"), ("stopped", "not started")]
    assert out.summary() == "2 stopped"
    assert saved(tmp_path / config_lib.run_name(configs[0]) / "state")
    seen = []
    done = run_grid(configs, on_run=lambda i, n, c, row: seen.append((i, row is None)))
    assert not done.stopped and len(done.rows) == 2
    assert done.summary() == "2 done" and not done.failed
    assert seen == [(0, True), (0, False), (1, True), (1, False)]
    assert list(done.rows.columns[:len(COLUMNS)]) == list(COLUMNS)
    assert done.rows["reg"].tolist() == [False, True]
    assert set(done.rows["images_seen"]) == {6 * configs[0].global_batch}
    table = accuracy_table(done.rows)
    assert list(table.columns) == ["none", "none, reg 0.1"]
    np.testing.assert_allclose(table.loc["scratch", "none"],
                               round(100 * done.rows["adapt_final_test"].iloc[0], 1))


@pytest.mark.slow
def test_the_panel_runs_a_smoke_grid_and_draws_its_figures(tmp_path):
    panel = AugregPanel(augs="light2", steps=5, transfer_steps=5,
                        workdir=tmp_path / "runs", results_csv=tmp_path / "own.csv",
                        smoke=True)
    assert [(c.aug, c.do) for c in panel.configs()] == [("light1", 0.0), ("light1", 0.1)] * 2
    assert "4 runs on digits" in panel.plan.value
    panel.scratch.value = panel.transfer.value = False
    assert panel.start_button.disabled and "choose at least one" in panel.messages.text
    panel.scratch.value = panel.transfer.value = True
    heatmap, compute = panel.live_heatmap(), panel.live_compute_plot()
    assert "No finished run yet" in heatmap.children[0].value
    _block(panel.configs()[-1])  # the last run fails for real
    lines, drawn = [], []
    panel.run_label.observe(lambda change: lines.append(change["new"]), names="value")
    heatmap.children[1].observe(lambda change: drawn.append(len(panel.rows)), names="value")
    panel.start_button.click()  # runs in the background, like in a notebook
    panel.wait(timeout=600)
    assert not panel.running
    # One progress line per run: run i of n, step of steps, loss and time left.
    assert any("run 1 of 4" in t and "step 5 of 5" in t and "loss" in t and "left" in t
               for t in lines), lines
    assert any("run 3 of 4" in t for t in lines)
    # Red, with the count and the reason; the list says which run failed and why.
    assert panel.messages.kind == "error", panel.messages.text
    assert "3 done, 1 failed" in panel.messages.text
    assert "is a file, not a folder" in panel.messages.text
    assert panel.outcomes.value.count("augreg-done") == 3
    assert panel.outcomes.value.count("augreg-failed") == 1
    assert len(panel.rows) == 3 and set(panel.rows["start"]) == {"scratch", "checkpoint"}
    assert "augreg-table" in panel.table.value and "light2, reg 0.1" in panel.table.value
    own = (tmp_path / "own.csv").read_text().splitlines()
    assert len(own) == 4  # header + one row per finished run
    # The live figures were redrawn during the grid, as runs finished (not only at its end).
    assert drawn[:3] == [0, 0, 0] and len(heatmap.children[1].value) > 1000
    assert len(compute.children[1].value) > 1000 and "3 finished" in compute.children[0].value
    assert len(panel.heatmap().axes) >= 1 and len(panel.compute_plot().axes) == 1


def test_own_figure_2_tells_every_run_apart():
    """Start (colour), regularisation (line style) and augmentation (marker) together tell
    each run's line apart, and the legend names all three."""
    import pandas as pd

    from augreg_nb.figures.own_runs import plot_compute

    rows, histories = [], {}
    for start in ("scratch", "checkpoint"):
        for aug in ("none", "medium2"):
            name = f"{start}-{aug}"
            rows.append({"start": start, "aug": aug, "reg": False, "adapt_ds": "digits",
                         "adapt_filename": name})
            histories[name] = pd.DataFrame({"images_seen": [640, 1280],
                                            "test_accuracy": [0.2, 0.4]})
    fig = plot_compute(pd.DataFrame(rows), histories)
    lines = fig.axes[0].get_lines()
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == len(styles) == 4
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert sorted(labels) == sorted(f"{r['start']}, {r['aug']}" for r in rows)


def _block(config) -> None:
    """Make ``config``'s run fail for real: a file where its folder has to go."""
    from pathlib import Path

    Path(config.workdir).parent.mkdir(parents=True, exist_ok=True)
    Path(config.workdir).write_text("not a folder")


def test_a_failing_run_is_listed_with_its_reason_and_the_grid_goes_on(tmp_path):
    configs = grid_configs("augreg-smoke", augs=("none",), regs=(False, True), root=tmp_path)
    for c in configs:
        _block(c)
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        run_grid(configs)  # the default for scripts: the error itself
    seen = []
    out = run_grid(configs, on_error="continue",
                   on_outcome=lambda i, n, o, so_far: seen.append((i, n, o.status)))
    assert seen == [(0, 2, "failed"), (1, 2, "failed")]
    assert out.summary() == "2 failed" and out.counts() == {"done": 0, "failed": 2,
                                                             "stopped": 0}
    assert not out.stopped and out.rows.empty
    assert all("is a file, not a folder" in o.reason and o.test_accuracy is None
               for o in out.failed)
    with pytest.raises(ValueError, match="on_error"):
        run_grid(configs, on_error="ignore")


def test_batch_fits_a_small_training_split():
    assert batch_for(1438, 64) == 64 and batch_for(64, 64) == 64
    assert batch_for(12, 64) == 8 and batch_for(63, 64) == 32 and batch_for(1, 128) == 1


def test_check_dataset_reads_a_folder_and_names_what_is_missing(tmp_path, monkeypatch):
    made = write_image_folder(tmp_path / "pets")  # 3 classes x 6 images, one broken file
    report = check_dataset(made["root"])
    assert report.class_names == ("cat", "dog", "fox")
    assert sum(report.images.values()) == 18 and report.images["train"] >= 12
    assert report.unreadable["train"] == (made["corrupt"],)
    text = report.text()
    assert "3 classes (cat, dog, fox)" in text and "1 unreadable image(s)" in text
    assert made["corrupt"] in text
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with pytest.raises(DatasetNotReadyError, match="tfds build oxford_iiit_pet"):
        check_dataset("oxford_iiit_pet")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        check_dataset(str(tmp_path / "empty"))


def _panel(tmp_path, **kwargs):
    folder = write_image_folder(tmp_path / "images", per_class=8)
    kwargs = {"augs": "none", "with_reg": False, "steps": 2, "transfer_steps": 2,
              "workdir": tmp_path / "runs", "results_csv": tmp_path / "own.csv",
              "smoke": True, "folder": folder["root"], **kwargs}
    return AugregPanel(**kwargs), folder


def test_the_panel_reads_a_folder_of_images_and_sizes_the_grid_to_it(tmp_path):
    panel, folder = _panel(tmp_path)
    info = panel.data_info.value
    assert "3 classes (cat, dog, fox)" in info and "unreadable" in info, info
    train = panel.report.images["train"]
    assert train < 64 and "epochs per run" in panel.plan.value
    configs = panel.configs()
    assert {c.task for c in configs} == {folder["root"]}
    assert {c.global_batch for c in configs} == {batch_for(train, 64)}
    assert all(c.workdir.startswith(str(tmp_path / "runs")) and
               "/" not in c.workdir.removeprefix(str(tmp_path / "runs") + "/")
               for c in configs)  # one folder per run, though the task is a path
    assert not panel.start_button.disabled and panel.messages.kind is None
    panel.folder.value = str(tmp_path / "nowhere")
    assert panel.start_button.disabled and "is not a folder" in panel.messages.text
    empty = tmp_path / "empty" / "cat"
    empty.mkdir(parents=True)
    panel.folder.value = str(empty.parent)  # a folder without images: no grid on it
    assert panel.start_button.disabled and "no images found" in panel.messages.text
    panel.reg_on.value = True  # another choice does not make it usable
    assert panel.start_button.disabled and "no images found" in panel.messages.text
    panel.folder.value = folder["root"]
    assert not panel.start_button.disabled and panel.messages.kind is None
    panel.tfds.value = "tf_flowers"
    assert panel.start_button.disabled and "both a folder" in panel.messages.text
    panel.tfds.value = ""
    assert not panel.start_button.disabled


def test_the_panel_refuses_steps_below_one_instead_of_running_one(tmp_path):
    panel, _ = _panel(tmp_path)
    panel.steps.value = -5
    assert panel.start_button.disabled
    assert "Steps from scratch must be a whole number of at least 1, not -5" in \
        panel.messages.text and panel.messages.kind == "error"
    panel.start_button.click()
    assert panel.thread is None  # nothing started
    panel.steps.value = 3
    panel.transfer_steps.value = 0
    assert panel.start_button.disabled and "Steps from a checkpoint" in panel.messages.text
    panel.transfer_steps.value = 2
    assert not panel.start_button.disabled and panel.messages.kind is None


def test_the_panel_shows_failed_runs_in_red_never_as_finished(tmp_path):
    panel, _ = _panel(tmp_path)
    configs = panel.configs()
    assert len(configs) == 2
    for c in configs:
        _block(c)
    panel.start_button.click()  # in the background, as in a notebook
    panel.wait(timeout=300)
    assert not panel.running
    assert panel.messages.kind == "error", panel.messages.text
    assert "The grid failed" in panel.messages.widget.value
    assert "2 failed" in panel.messages.text and "is a file, not a folder" in panel.messages.text
    assert panel.outcomes.value.count("augreg-failed") == 2
    assert "augreg-done" not in panel.outcomes.value
    assert panel.runs_bar.bar_style == "danger" and panel.runs_bar.value == 2
    assert not panel.start_button.disabled and panel.stop_button.disabled
    assert panel.rows.empty and not (tmp_path / "own.csv").exists()


def test_the_panel_says_a_dataset_is_not_prepared_and_how_to_prepare_it(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    panel = AugregPanel(task="oxford_iiit_pet", from_checkpoint=False, augs="none",
                        with_reg=False, workdir=tmp_path / "runs")
    assert "tfds build oxford_iiit_pet" in panel.data_info.value
    assert not panel.start_button.disabled  # Start would prepare it with the network
    panel.start_button.click()
    panel.wait(timeout=120)
    assert panel.messages.kind == "error", panel.messages.text
    assert "The grid failed" in panel.messages.widget.value
    assert "oxford_iiit_pet" in panel.messages.text and "AUGREG_NB_OFFLINE" in \
        panel.messages.text
    assert panel.rows.empty and panel.runs_bar.bar_style == "danger"
    with pytest.raises(DatasetNotReadyError):
        panel.run()  # the same, here and now: the error itself


def test_notebook_5_and_its_panel_name_the_settings_alike():
    import json
    from pathlib import Path

    from augreg_nb.names import AUGMENTATIONS
    from augreg_nb.widgets.augreg_panel import aug_options

    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "05_augreg.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    labels = [label for label, _ in aug_options()]
    for setting in AUGMENTATIONS.values():
        assert f"`{setting.paper_name}`" in text, setting.paper_name
        assert any(label.startswith(setting.paper_name) for label in labels)
    # Figure 4's heavy1/heavy2 are named only beside strong1/strong2, never instead of them.
    assert "`heavy1`" not in text and "strong2 (Figure 4: heavy2)" in labels


def test_stop_before_the_first_run_lists_every_run_as_stopped(tmp_path, monkeypatch):
    panel, _ = _panel(tmp_path)
    prepare = panel._prepare_data

    def prepare_then_stop():  # Stop pressed while the data was being read
        prepare()
        panel.stop()

    monkeypatch.setattr(panel, "_prepare_data", prepare_then_stop)
    result = panel.run()
    assert result.stopped and result.summary() == "2 stopped" and result.rows.empty
    assert panel.messages.kind == "warning" and "Start continues" in panel.messages.text
    assert panel.outcomes.value.count("augreg-stopped") == 2
    assert "not started" in panel.outcomes.value and panel.runs_bar.bar_style == "warning"
