"""The AugReg panel of notebook 5: a small grid of settings on your data, run with a Stop.

    from augreg_nb.widgets.augreg_panel import AugregPanel
    panel = AugregPanel(model="Ti/16", task="oxford_iiit_pet", workdir="runs")
    panel                         # choose settings; nothing runs until Start is pressed
    panel.start_button.click()    # runs the grid in the background; Stop ends it
    panel.run()                   # the same, here and now (headless runs, tests)
    panel.heatmap(); panel.compute_plot()   # your Figure 4 and Figure 2 from the runs

The grid is :func:`augreg_nb.grid.grid_configs`: the chosen augmentations (by the paper's
names; checkpoint names use the index names, both are shown) without and with
regularisation (dropout = stochastic depth = 0.1), from scratch with the paper's upstream
recipe (Adam, weight decay 0.1, sigmoid loss) and from an AugReg checkpoint with the
transfer recipe. Every run keeps its own folder, so Start after Stop continues where the
grid stopped. In smoke mode the runs are the ``augreg-smoke`` preset (a tiny ViT on
scikit-learn's digits) and the ``smoke`` fine-tuning preset from a fake checkpoint.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import ipywidgets as w
import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb import grid as grid_lib
from augreg_nb import names
from augreg_nb.figures.own_runs import plot_compute, plot_grid_heatmap
from augreg_nb.widgets.common import (
    MessageArea,
    dropdown,
    guarded,
    stop_on_kernel_interrupt,
    table_html,
    wait_for,
)
from augreg_nb.widgets.finetune_panel import export_result_row, task_choices

#: (preset for scratch runs, preset for runs from a checkpoint, checkpoint of those runs).
SMOKE_PRESETS = ("augreg-smoke", "smoke", config_lib.FAKE_CHECKPOINT_PREFIX + "testing")
FULL_PRESETS = ("augreg-pets-scratch", "augreg-pets-transfer", None)
#: The smoke grid: none and medium2, without regularisation, from scratch and from a fake
#: checkpoint, 30 steps each: 4 runs in under two minutes on 2 CPU cores (each run spends
#: most of its 20-35 s building its input pipeline and compiling its step).
SMOKE_GRID = {"augs": ("none", "medium2"), "without_reg": True, "with_reg": False,
              "from_scratch": True, "from_checkpoint": True, "steps": 30,
              "transfer_steps": 30}
NO_RUNS_YET = "No finished run yet: press Start grid, then run this cell again."
#: Models offered (the smallest first; from a checkpoint: the model's recommended upstream).
MODEL_CHOICES = ("Ti/16", "S/16", "B/32", "S/32", "B/16", "R26+S/32")


def aug_options() -> list[tuple[str, str]]:
    """(label, index name) of the seven settings: paper name, then the index name."""
    return [(a.paper_name if a.paper_name == a.index_name
             else f"{a.paper_name} (index {a.index_name})", a.index_name)
            for a in names.AUGMENTATIONS.values()]


class AugregPanel:
    """Model, task, augmentations, regularisation, starts and steps; Start / Stop; results."""

    def __init__(self, *, model: str = "Ti/16", task: str = "oxford_iiit_pet",
                 augs=("none", "light1", "medium2"), without_reg: bool = True,
                 with_reg: bool = True, from_scratch: bool = True,
                 from_checkpoint: bool = True, steps: int | None = None,
                 transfer_steps: int | None = None, workdir: str | os.PathLike = "augreg_runs",
                 results_csv: str | os.PathLike | None = None, smoke: bool = False):
        self.smoke = smoke
        self.presets = SMOKE_PRESETS if smoke else FULL_PRESETS
        self.workdir = Path(workdir)
        self.results_csv = Path(results_csv) if results_csv else None
        self.result = grid_lib.GridResult.empty()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.messages = MessageArea()
        models = ["testing"] if smoke else list(MODEL_CHOICES)
        self.model = dropdown("Model", models, "testing" if smoke else model)
        tasks = task_choices(smoke=smoke)
        self.task = dropdown("Task", tasks, config_lib.SMOKE_TASK if smoke else task)
        if isinstance(augs, str):  # "none, light2, medium2"
            augs = [a for a in augs.replace(" ", "").split(",") if a]
        augs = [config_lib.index_aug(a) for a in augs]  # paper names too ("light2")
        self.augs = w.SelectMultiple(options=aug_options(), value=tuple(augs), rows=7,
                                     description="Augmentation",
                                     style={"description_width": "initial"})
        self.reg_off = w.Checkbox(value=without_reg, description="no regularisation")
        self.reg_on = w.Checkbox(value=with_reg, description="dropout = sd = 0.1")
        self.scratch = w.Checkbox(value=from_scratch, description="from scratch")
        self.transfer = w.Checkbox(value=from_checkpoint,
                                   description="from an AugReg checkpoint")
        self.steps = self._steps_box("Steps from scratch", steps, self.presets[0])
        self.transfer_steps = self._steps_box("Steps from a checkpoint", transfer_steps,
                                              self.presets[1])
        self.plan = w.HTML()
        self.start_button = w.Button(description="Start grid", icon="play",
                                     button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True)
        self.runs_bar = w.IntProgress(value=0, min=0, max=1, description="Runs")
        self.progress = w.Output()
        self.table = w.HTML()
        for widget in (self.model, self.task, self.augs, self.reg_off, self.reg_on,
                       self.scratch, self.transfer, self.steps, self.transfer_steps):
            widget.observe(self._on_change, names="value")
        self.start_button.on_click(self._on_start)
        self.stop_button.on_click(self._on_stop)
        self.widget = w.VBox([
            w.HBox([self.model, self.task, self.steps, self.transfer_steps],
                   layout=w.Layout(flex_flow="row wrap")),
            w.HBox([self.augs, w.VBox([self.reg_off, self.reg_on, self.scratch,
                                       self.transfer])]),
            self.plan,
            w.HBox([self.start_button, self.stop_button, self.runs_bar]),
            self.progress, self.table, self.messages.widget,
        ])
        self._on_change()

    @staticmethod
    def _steps_box(description: str, steps: int | None, preset: str) -> w.BoundedIntText:
        value = steps or config_lib.get_config(preset).total_steps
        return w.BoundedIntText(value=value, min=1, max=10**7, description=description,
                                style={"description_width": "initial"},
                                layout=w.Layout(width="auto"))

    @classmethod
    def for_session(cls, session, **choices) -> AugregPanel:
        """The panel for a notebook Session: its run folder and results file. In smoke mode
        the grid is :data:`SMOKE_GRID` (``choices`` are ignored)."""
        if session.smoke:
            choices = dict(SMOKE_GRID)
        return cls(workdir=Path(session.workdir) / "augreg_grid",
                   results_csv=session.results_csv, smoke=session.smoke, **choices)

    # -- state ---------------------------------------------------------------------------
    def configs(self) -> list:
        """The configs Start runs now, scratch runs first."""
        scratch_preset, transfer_preset, checkpoint = self.presets
        starts = (["scratch"] if self.scratch.value else []) + \
            ([checkpoint or self.model.value] if self.transfer.value else [])
        regs = [r for r, on in ((False, self.reg_off.value), (True, self.reg_on.value)) if on]
        if not (starts and regs and self.augs.value):
            raise ValueError("choose at least one augmentation, one regularisation and one "
                             "start (from scratch or from a checkpoint)")
        overrides = [f"task={self.task.value}", f"model={self.model.value}"]
        configs = grid_lib.grid_configs(
            scratch_preset, augs=self.augs.value, regs=regs, starts=starts,
            root=self.workdir, transfer_preset=transfer_preset, overrides=overrides)
        for c in configs:
            box = self.steps if config_lib.is_scratch(c.checkpoint) else self.transfer_steps
            if c.total_steps != box.value:
                c.total_steps = int(box.value)
                c.warmup_steps = min(c.warmup_steps, c.total_steps // 5)
                c.eval_every = c.checkpoint_every = max(1, c.total_steps // 5)
                c.workdir = str(self.workdir / config_lib.run_name(c))
        return configs

    @property
    def rows(self) -> pd.DataFrame:
        """The finished runs (index-schema rows plus start, reg, images_seen, seconds)."""
        return self.result.rows

    def _on_change(self, change=None) -> None:
        try:
            configs = self.configs()
        except ValueError as err:
            self.messages.error(err, "Setting up the grid")
            self.start_button.disabled = True
            return
        self.messages.clear()
        self.start_button.disabled = self.thread is not None and self.thread.is_alive()
        images = sum(c.total_steps * c.global_batch for c in configs)
        self.plan.value = (
            f"<small>{len(configs)} runs on {self.task.value}, {images:,} training images "
            f"in all; runs under {self.workdir}</small>")

    # -- actions -------------------------------------------------------------------------
    def run(self) -> grid_lib.GridResult:
        """Run the grid now (blocking) and show the results; returns them."""
        from augreg_nb.callbacks import ProgressBar

        configs = self.configs()
        self.stop_event.clear()
        self.runs_bar.max, self.runs_bar.value = len(configs), 0
        self.start_button.disabled, self.stop_button.disabled = True, False

        def on_run(i, n, config, row):
            if row is None:
                self.messages.show(f"run {i + 1} of {n}: {config_lib.run_name(config)}", "note")
            else:
                self.runs_bar.value = i + 1
                if self.results_csv is not None:
                    export_result_row(row, self.results_csv)

        try:
            with self.progress:
                self.progress.clear_output()
                self.result = grid_lib.run_grid(
                    configs, callbacks=lambda c: [ProgressBar(leave=False)],
                    stop=self.stop_event, on_run=on_run)
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
        done = len(self.result.rows)
        self.messages.show(
            f"stopped after {done} finished run(s); Start continues" if self.result.stopped
            else f"finished {done} run(s)", "warning" if self.result.stopped else "info")
        table = grid_lib.accuracy_table(self.rows)
        self.table.value = table_html(table.reset_index()) if len(table) else ""
        return self.result

    def _on_start(self, _button=None) -> None:
        @guarded(self.messages, "Running the grid")
        def start():
            self.thread = threading.Thread(target=guarded(self.messages, "The grid")(self.run),
                                           daemon=True)
            stop_on_kernel_interrupt(self)
            self.thread.start()

        start()

    @property
    def running(self) -> bool:
        """A grid started with the Start button is still running."""
        return self.thread is not None and self.thread.is_alive()

    def stop(self, reason: str = "Stop pressed") -> None:
        """End the grid at the current run's next log step (Start continues it)."""
        self.stop_event.set()
        self.messages.show(f"{reason}: stopping after the current log step ...", "note")

    def _on_stop(self, _button=None) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a grid started with the Start button has ended. An interrupt
        (Ctrl-C, the kernel's stop button) while waiting stops the grid instead of raising."""
        wait_for(self, self.thread, timeout)

    def heatmap(self):
        """Your Figure-4-style heat map of the finished runs (test accuracy); before the
        first finished run, a note saying so (None)."""
        if self.rows.empty:
            print(NO_RUNS_YET)
            return None
        return plot_grid_heatmap(self.rows)

    def compute_plot(self):
        """Your Figure-2-style plot: accuracy against training images seen, per run (None
        and a note before the first finished run)."""
        if self.rows.empty:
            print(NO_RUNS_YET)
            return None
        return plot_compute(self.rows, self.result.histories)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
