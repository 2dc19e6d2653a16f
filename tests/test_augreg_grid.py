"""AugReg grids: the configs a grid makes, Stop and resume, the panel of notebook 5 driven
like a user would, and the figures of own runs."""

import threading

import numpy as np
import pytest

from augreg_nb import config as config_lib
from augreg_nb.callbacks import Callback
from augreg_nb.grid import accuracy_table, grid_configs, run_grid
from augreg_nb.index import COLUMNS
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
    assert saved(tmp_path / config_lib.run_name(configs[0]) / "state")
    seen = []
    done = run_grid(configs, on_run=lambda i, n, c, row: seen.append((i, row is None)))
    assert not done.stopped and len(done.rows) == 2
    assert seen == [(0, True), (0, False), (1, True), (1, False)]
    assert list(done.rows.columns[:len(COLUMNS)]) == list(COLUMNS)
    assert done.rows["reg"].tolist() == [False, True]
    assert set(done.rows["images_seen"]) == {6 * 64}
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
    panel.start_button.click()  # runs in the background, like in a notebook
    panel.thread.join(timeout=600)
    assert not panel.thread.is_alive()
    assert "finished 4 run(s)" in panel.messages.text, panel.messages.text
    assert len(panel.rows) == 4 and set(panel.rows["start"]) == {"scratch", "checkpoint"}
    assert "augreg-table" in panel.table.value and "light2, reg 0.1" in panel.table.value
    own = (tmp_path / "own.csv").read_text().splitlines()
    assert len(own) == 5  # header + one row per finished run
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
