"""The AugReg panel of notebook 5: a small grid of settings on your data, run with a Stop.

    from augreg_nb.widgets.augreg_panel import AugregPanel
    panel = AugregPanel(model="Ti/16", task="oxford_iiit_pet", workdir="runs")
    panel = AugregPanel(folder="~/flowers")        # a folder of images, one sub-folder per class
    panel = AugregPanel(tfds="tf_flowers")         # any TFDS image classification dataset
    panel                         # choose settings; nothing runs until Start is pressed
    panel.start_button.click()    # runs the grid in the background; Stop ends it
    panel.run()                   # the same, here and now (headless runs, tests)
    panel.live_heatmap(); panel.live_compute_plot()   # your Figure 4 and 2, redrawn per run
    panel.heatmap(); panel.compute_plot()             # the same as matplotlib Figures

The data sources are notebook 2's (:mod:`augreg_nb.widgets.finetune_panel`): the paper's
tasks, a folder of images or a TFDS dataset by name. The panel reads the chosen dataset
before Start (:func:`augreg_nb.grid.check_dataset`: classes, images per split, unreadable
files, or the command that prepares it) and fits the batch to a small training split
(:func:`augreg_nb.grid.batch_for`).

The grid is :func:`augreg_nb.grid.grid_configs`: the chosen augmentations (by the paper's
names; checkpoint names use the index names, both are shown) without and with
regularisation (dropout = stochastic depth = 0.1), from scratch with the paper's upstream
recipe (Adam, weight decay 0.1, sigmoid loss) and from an AugReg checkpoint with the
transfer recipe. The runs go one after the other in a background thread
(:func:`augreg_nb.grid.run_grid` with ``on_error="continue"``): a line shows the current
run's step, loss and time left; the list of runs says of each whether it is done, failed
(with the reason, in red) or stopped, and the closing message counts them; it is green only
when every run is done. Every run keeps its own folder, so Start after Stop continues where
the grid stopped. In smoke mode the runs are the ``augreg-smoke`` preset (a tiny ViT on
scikit-learn's digits, or on your folder of images) and the ``smoke`` fine-tuning preset
from a fake checkpoint.
"""

from __future__ import annotations

import contextlib
import html
import io
import math
import os
import threading
import time
from pathlib import Path

import ipywidgets as w
import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb import grid as grid_lib
from augreg_nb import names
from augreg_nb import tasks as tasks_lib
from augreg_nb.callbacks import Callback, duration_text
from augreg_nb.figures.own_runs import plot_compute, plot_grid_heatmap
from augreg_nb.widgets.common import (
    FULL_WIDTH,
    MessageArea,
    ThreadOutput,
    describe_error,
    details_html,
    dropdown,
    figure_png,
    guarded,
    message_html,
    outcome_message,
    outcomes_html,
    quiet_libraries,
    show_library_messages,
    stop_on_kernel_interrupt,
    table_html,
    wait_for,
)
from augreg_nb.widgets.finetune_panel import (
    export_result_row,
    task_choices,
    tfds_task_name,
)

#: (preset for scratch runs, preset for runs from a checkpoint, checkpoint of those runs).
SMOKE_PRESETS = ("augreg-smoke", "smoke", config_lib.FAKE_CHECKPOINT_PREFIX + "testing")
FULL_PRESETS = ("augreg-pets-scratch", "augreg-pets-transfer", None)
#: The smoke grid: none and medium2 with dropout = stochastic depth = 0.1, from scratch
#: (the augreg-smoke preset: 600 steps of 128) and from a fake checkpoint (100 steps).
SMOKE_GRID = {"augs": ("none", "medium2"), "without_reg": False, "with_reg": True,
              "from_scratch": True, "from_checkpoint": True, "steps": None,
              "transfer_steps": 100}
NO_RUNS_YET = "No finished run yet: press Start grid, then run this cell again."
LIVE_NO_RUNS = "No finished run yet: this figure is drawn as each run of the grid finishes."
#: Models offered (the smallest first; from a checkpoint: the model's recommended upstream).
MODEL_CHOICES = ("Ti/16", "S/16", "B/32", "S/32", "B/16", "R26+S/32")


#: The names Figure 4 of the paper prints for the two strongest settings.
FIGURE4_NAMES = {"strong1": "heavy1", "strong2": "heavy2"}


def aug_options() -> list[tuple[str, str]]:
    """(label, index name) of the seven settings: paper name, then the index name (or,
    for strong1/strong2, the heavy1/heavy2 that Figure 4 prints)."""
    out = []
    for a in names.AUGMENTATIONS.values():
        label = a.paper_name
        if a.paper_name != a.index_name:
            label += f" (index {a.index_name})"
        elif a.index_name in FIGURE4_NAMES:
            label += f" (Figure 4: {FIGURE4_NAMES[a.index_name]})"
        out.append((label, a.index_name))
    return out


def check_steps(value, what: str) -> int:
    """``value`` as a run length, or a ValueError that says why it is none."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number of at least 1, not {value!r}: "
                         "each run needs at least one training step")
    return int(value)


def _short_task(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a folder task named by its folder's name (a figure's title has no room
    for a path); the run folders and the exported rows keep the full path."""
    if rows.empty:
        return rows
    return rows.assign(adapt_ds=[Path(t).name if ("/" in str(t) or os.sep in str(t)) else t
                                 for t in rows["adapt_ds"]])


class _RunProgress(Callback):
    """One line for the current run, written from the grid's thread: run i of n, step of
    steps, loss, speed and the time left at that speed; the bar follows the steps."""

    def __init__(self, bar: w.IntProgress, label: w.HTML, i: int, n: int, name: str):
        self.bar, self.label, self.head = bar, label, f"run {i + 1} of {n}"
        self.name = name
        self.total, self.global_batch, self.t0 = 1, 1, time.perf_counter()

    def _show(self, text: str) -> None:
        self.label.value = (f"<span class='augreg-run-progress'><b>{self.head}</b> "
                            f"{html.escape(text)}</span><br><small style='color:#555'>"
                            f"{html.escape(self.name)}</small>")

    def on_train_begin(self, info: dict) -> None:
        self.total, self.global_batch = info["total_steps"], info["global_batch"]
        start = info["start_step"]
        self.bar.max, self.bar.value, self.bar.bar_style = max(1, self.total), start, ""
        self._show(f"finished earlier ({self.total:,} steps): reading its result"
                   if start >= self.total else
                   f"step {start:,} of {self.total:,}" + (" (resumed)" if start else "")
                   + " · building the input pipeline and compiling ...")

    def on_log(self, step: int, metrics: dict) -> None:
        self.bar.value = step
        speed = metrics.get("img_per_sec", math.nan)
        text = f"step {step:,} of {self.total:,} · loss {float(metrics['loss']):.4f}"
        if math.isfinite(speed) and speed > 0:
            left = (self.total - step) * self.global_batch / speed
            text += f" · about {duration_text(left)} left"
        self._show(text)

    def on_train_end(self, history) -> None:
        self.bar.value = self.bar.max


class AugregPanel:
    """Model, data (task, folder or TFDS dataset), augmentations, regularisation, starts
    and steps; Start / Stop; each run's progress and outcome; accuracy table and figures."""

    def __init__(self, *, model: str = "Ti/16", task: str = "oxford_iiit_pet",
                 folder: str = "", tfds: str = "",
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
        self.report: grid_lib.DatasetReport | None = None  #: the checked dataset
        self._checked: tuple[str, str] | None = None  # (task name, error) last checked
        self._not_prepared = False  # the last check found a dataset Start can prepare
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.library_output = ""  #: what the libraries printed during the last grid
        self.messages = MessageArea()
        models = ["testing"] if smoke else list(MODEL_CHOICES)
        self.model = dropdown("Model", models, "testing" if smoke else model)
        tasks = task_choices(smoke=smoke)
        self.task = dropdown("Task", tasks, config_lib.SMOKE_TASK if smoke else task)
        # A folder needs no download: offered in smoke mode too; a TFDS dataset is not.
        self.folder = w.Text(value=str(folder or ""), description="or a folder of images",
                             placeholder="path/to/images with one sub-folder per class",
                             continuous_update=False, style={"description_width": "initial"},
                             layout=w.Layout(width=FULL_WIDTH))
        self.tfds = w.Text(value=str(tfds or ""), description="or a TFDS dataset",
                           placeholder="tf_flowers, or tf_flowers?train=train[:80%]"
                                       "&val=train[80%:90%]&test=train[90%:]",
                           continuous_update=False, style={"description_width": "initial"},
                           layout=w.Layout(width=FULL_WIDTH,
                                           display="none" if smoke else None))
        self.data_info = w.HTML()
        if isinstance(augs, str):  # "none, light2, medium2"
            augs = [a for a in augs.replace(" ", "").split(",") if a]
        augs = [config_lib.index_aug(a) for a in augs]  # paper names too ("light2")
        self.augs = w.SelectMultiple(options=aug_options(), value=tuple(augs), rows=7,
                                     description="Augmentation",
                                     style={"description_width": "initial"},
                                     layout=w.Layout(width="25em", max_width="100%"))
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
        self.run_bar = w.IntProgress(value=0, min=0, max=1, description="Steps")
        self.run_label = w.HTML()
        self.outcomes = w.HTML()
        self.table = w.HTML()
        self.details = w.HTML()
        self._live: dict[str, tuple[w.HTML, w.Image]] = {}
        for widget in (self.task, self.folder, self.tfds):
            widget.observe(self._on_source, names="value")
        for widget in (self.model, self.augs, self.reg_off, self.reg_on,
                       self.scratch, self.transfer, self.steps, self.transfer_steps):
            widget.observe(self._on_change, names="value")
        self.start_button.on_click(self._on_start)
        self.stop_button.on_click(self._on_stop)
        wrap = w.Layout(flex_flow="row wrap", max_width="100%")
        self.widget = w.VBox([
            w.HBox([self.model, self.task, self.steps, self.transfer_steps], layout=wrap),
            self.folder, self.tfds, self.data_info,
            w.HBox([self.augs, w.VBox([self.reg_off, self.reg_on, self.scratch,
                                       self.transfer])], layout=wrap),
            self.plan,
            w.HBox([self.start_button, self.stop_button, self.runs_bar], layout=wrap),
            w.HBox([self.run_bar], layout=wrap), self.run_label,
            self.outcomes, self.table, self.messages.widget, self.details,
        ], layout=w.Layout(max_width="100%"))
        self._on_source()

    @staticmethod
    def _steps_box(description: str, steps: int | None, preset: str) -> w.IntText:
        # IntText, not BoundedIntText: a bounded box silently turns -5 into 1; here a
        # value below 1 is refused with a message (check_steps).
        value = config_lib.get_config(preset).total_steps if steps is None else steps
        return w.IntText(value=value, description=description,
                         style={"description_width": "initial"},
                         layout=w.Layout(width="auto"))

    @classmethod
    def for_session(cls, session, **choices) -> AugregPanel:
        """The panel for a notebook Session: its run folder and results file. In smoke mode
        the grid is :data:`SMOKE_GRID` (of ``choices`` only ``folder`` is kept)."""
        if session.smoke:
            choices = {**SMOKE_GRID, "folder": choices.get("folder", "")}
        return cls(workdir=Path(session.workdir) / "augreg_grid",
                   results_csv=session.results_csv, smoke=session.smoke, **choices)

    # -- state ---------------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        """The grid's task: the folder of images or the TFDS dataset (``tfds:<name>``)
        when one is given, else the chosen task."""
        folder, dataset = self.folder.value.strip(), self.tfds.value.strip()
        if folder:
            return str(Path(folder).expanduser())
        return tfds_task_name(dataset) if dataset else self.task.value

    def _check_source(self) -> None:
        folder = self.folder.value.strip()
        if folder and self.tfds.value.strip():
            raise ValueError("both a folder of images and a TFDS dataset are given: clear "
                             "one of the two fields")
        if folder and not Path(folder).expanduser().is_dir():
            raise ValueError(f"{folder!r} is not a folder: give a folder of images with one "
                             "sub-folder per class (e.g. flowers/daisy/*.jpg, "
                             "flowers/roses/*.jpg), or clear the field to use the Task")

    def check_data(self) -> grid_lib.DatasetReport:
        """Read the chosen dataset (:func:`augreg_nb.grid.check_dataset`) and show what it
        offers; raises what makes it unusable (not prepared: with the command to run)."""
        self._check_source()
        name = self.task_name
        quiet_libraries()  # the digits' first build and TFDS print nothing into the notebook
        try:
            self.report = grid_lib.check_dataset(name)
        except Exception as err:
            self.report, self._checked = None, (name, describe_error(err))
            self._not_prepared = isinstance(err, tasks_lib.DatasetNotReadyError)
            raise
        self._checked = (name, "")
        self.data_info.value = message_html(self.report.text(), "note", title="Data")
        return self.report

    def configs(self) -> list:
        """The configs Start runs now, scratch runs first."""
        scratch_preset, transfer_preset, checkpoint = self.presets
        steps = check_steps(self.steps.value, "Steps from scratch")
        transfer_steps = check_steps(self.transfer_steps.value, "Steps from a checkpoint")
        self._check_source()
        if self._checked is not None and self._checked[0] == self.task_name \
                and self._checked[1] and self.report is None and not self._not_prepared:
            raise ValueError(self._checked[1])  # the data cannot be read: no grid on it
        starts = (["scratch"] if self.scratch.value else []) + \
            ([checkpoint or self.model.value] if self.transfer.value else [])
        regs = [r for r, on in ((False, self.reg_off.value), (True, self.reg_on.value)) if on]
        if not (starts and regs and self.augs.value):
            raise ValueError("choose at least one augmentation, one regularisation and one "
                             "start (from scratch or from a checkpoint)")
        overrides = [f"task={self.task_name}", f"model={self.model.value}"]
        configs = grid_lib.grid_configs(
            scratch_preset, augs=self.augs.value, regs=regs, starts=starts,
            root=self.workdir, transfer_preset=transfer_preset, overrides=overrides)
        train_images = self.report.images["train"] if self._report_is_current() else None
        for c in configs:
            n = steps if config_lib.is_scratch(c.checkpoint) else transfer_steps
            if c.total_steps != n:
                c.total_steps = n
                c.warmup_steps = min(c.warmup_steps, n // 5)
                c.eval_every = c.checkpoint_every = max(1, n // 5)
            if train_images is not None:  # a small dataset: a batch it can fill
                c.global_batch = grid_lib.batch_for(train_images, c.global_batch)
                c.micro_batches = math.gcd(c.micro_batches, c.global_batch)
            c.workdir = str(self.workdir / config_lib.run_name(c))
            config_lib.validate(c)
        return configs

    def _report_is_current(self) -> bool:
        return self.report is not None and self._checked == (self.task_name, "")

    @property
    def rows(self) -> pd.DataFrame:
        """The finished runs (index-schema rows plus start, reg, images_seen, seconds)."""
        return self.result.rows

    def _on_source(self, change=None) -> None:
        """A new data source: read it, then redo the plan."""
        self.report = None
        printed = io.StringIO()
        try:
            # What TFDS prints while it reads (or first builds) a dataset goes to the panel's
            # library messages, not into the cell. Not while a grid runs: its thread's
            # output is being routed already.
            with (contextlib.redirect_stdout(printed) if not self.running
                  else contextlib.nullcontext()):
                self.check_data()
        except tasks_lib.DatasetNotReadyError as err:
            # Start prepares it when the network allows; say so and how to do it by hand.
            self.data_info.value = message_html(
                f"{err}\nStart grid prepares it first (this needs the network).", "warning",
                title="Data not prepared yet")
        except Exception as err:
            self.data_info.value = ""
            self.messages.error(err, "Reading the data")
            self.start_button.disabled = True
            return
        finally:
            if printed.getvalue().strip():
                self.details.value = details_html(printed.getvalue(), "library messages")
        self._on_change()

    def _on_change(self, change=None) -> None:
        try:
            configs = self.configs()
        except ValueError as err:
            self.messages.error(err, "Setting up the grid")
            self.start_button.disabled = True
            return
        if not self.running:
            self.messages.clear()
            self.start_button.disabled = False
        images = sum(c.total_steps * c.global_batch for c in configs)
        sizing = ""
        if self._report_is_current():
            train = self.report.images["train"]
            epochs = sorted({round(c.total_steps * c.global_batch / train, 1) for c in configs})
            batches = sorted({c.global_batch for c in configs})
            sizing = (f"; {train:,} training images: "
                      f"{' / '.join(f'{e:g}' for e in epochs)} epochs per run, batch "
                      f"{' / '.join(map(str, batches))}")
        self.plan.value = (
            f"<small>{len(configs)} runs on {html.escape(self.task_name)}, {images:,} "
            f"training images in all{sizing}; runs under {html.escape(str(self.workdir))}"
            "</small>")

    # -- actions -------------------------------------------------------------------------
    def _outcome_items(self, configs, outcomes, current: int | None):
        items = []
        for i, c in enumerate(configs):
            label = (f"{'scratch' if config_lib.is_scratch(c.checkpoint) else 'checkpoint'}"
                     f", {names.index_to_paper_aug(config_lib.index_aug(c.aug))}"
                     f"{', reg 0.1' if c.do or c.sd else ''}")
            if i < len(outcomes):
                o = outcomes[i]
                detail = (f"test accuracy {o.test_accuracy:.1%} in {o.seconds:.0f} s"
                          if o.status == grid_lib.DONE else o.reason)
                items.append((label, o.status, detail))
            elif i == current:
                items.append((label, "running", ""))
            else:
                items.append((label, "waiting", ""))
        return items

    def run(self) -> grid_lib.GridResult:
        """Run the grid now (blocking) and show the results; returns them. A run that fails
        is listed with its reason and the grid goes on; the closing message counts the
        runs done, failed and stopped (red when any failed)."""
        configs = self.configs()
        self.stop_event.clear()
        self.result = grid_lib.GridResult.empty()
        self.runs_bar.max, self.runs_bar.value = len(configs), 0
        self.runs_bar.bar_style = ""
        self.start_button.disabled, self.stop_button.disabled = True, False
        outcomes: list[grid_lib.RunOutcome] = []
        self.outcomes.value = self.run_label.value = ""

        def on_run(i, n, config, row):
            if row is None:
                self.outcomes.value = outcomes_html(self._outcome_items(configs, outcomes, i))
            elif self.results_csv is not None:
                export_result_row(row, self.results_csv)

        def on_outcome(i, n, outcome, so_far):
            outcomes.append(outcome)
            self.runs_bar.value = sum(o.reason != "not started" for o in outcomes)
            self.outcomes.value = outcomes_html(self._outcome_items(configs, outcomes, i + 1))
            if outcome.status == grid_lib.FAILED:
                self.run_bar.bar_style = "danger"
                self.messages.show(outcome.reason, "error", title=f"Run {i + 1} of {n} failed")
            elif outcome.status == grid_lib.DONE:
                self._redraw(so_far)

        def progress(config):
            i = len(outcomes)
            return [_RunProgress(self.run_bar, self.run_label, i, len(configs),
                                 config_lib.run_name(config))]

        try:
            self._prepare_data()
            self.outcomes.value = outcomes_html(self._outcome_items(configs, outcomes, 0))
            self.result = grid_lib.run_grid(
                configs, callbacks=progress, stop=self.stop_event,
                on_run=on_run, on_outcome=on_outcome, on_error="continue")
        except Exception as err:  # not a run's failure: the grid could not start
            self.runs_bar.bar_style = "danger"
            self.messages.error(err, "The grid")
            raise
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
        counts = self.result.counts()
        self.runs_bar.bar_style = ("danger" if counts["failed"] else
                                   "warning" if counts["stopped"] else "success")
        outcome_message(self.messages, counts, "The grid",
                        [f"run {i + 1}: {o.reason}" for i, o in enumerate(self.result.outcomes)
                         if o.status == grid_lib.FAILED])
        self.run_label.value = ""
        table = grid_lib.accuracy_table(self.rows)
        self.table.value = table_html(table.reset_index()) if len(table) else ""
        self._redraw()
        return self.result

    def _prepare_data(self) -> None:
        """Before the first run: a dataset that is not prepared is prepared once (or the
        grid does not start, with the reason); a dataset with no training image stops
        here too."""
        try:
            self.check_data()
        except tasks_lib.DatasetNotReadyError:
            self.messages.show(f"preparing {self.task_name} before the first run ...", "note")
            tasks_lib.prepare(self.task_name)
            self.check_data()

    def _redraw(self, result: grid_lib.GridResult | None = None) -> None:
        """Draw the live heat map and Figure 2 from ``result`` (default: the last grid's)."""
        if not self._live:
            return
        result = result or self.result
        rows, histories = result.rows, result.histories
        for kind, (note, image) in self._live.items():
            if rows.empty:  # no image (an empty one shows as a broken picture)
                note.value, image.value = f"<i>{LIVE_NO_RUNS}</i>", b""
                image.layout.display = "none"
                continue
            figure = (plot_grid_heatmap(_short_task(rows)) if kind == "heatmap"
                      else plot_compute(_short_task(rows), histories))
            image.value = figure_png(figure)
            image.layout.display = None
            note.value = f"<small>{len(rows)} finished run(s)</small>"

    def _live_view(self, kind: str) -> w.VBox:
        if kind not in self._live:
            self._live[kind] = (w.HTML(), w.Image(format="png", layout=w.Layout(
                max_width="100%", height="auto")))
            self._redraw()
        note, image = self._live[kind]
        return w.VBox([note, image], layout=w.Layout(max_width="100%"))

    def live_heatmap(self) -> w.VBox:
        """Your Figure-4-style heat map as a widget, redrawn as each run finishes."""
        return self._live_view("heatmap")

    def live_compute_plot(self) -> w.VBox:
        """Your Figure-2-style plot as a widget, redrawn as each run finishes."""
        return self._live_view("compute")

    def _on_start(self, _button=None) -> None:
        @guarded(self.messages, "Running the grid")
        def start():
            if self.running:
                raise RuntimeError("a grid is running: wait for it, or press Stop")
            self.configs()  # a choice that makes no grid is reported here, not in the thread
            quiet_libraries()
            self.messages.show("starting the grid ...", "note")
            captured = ThreadOutput()
            self.thread = threading.Thread(target=self._run_captured, args=(captured,),
                                           name="augreg-grid", daemon=True)
            captured.install(self.thread)
            stop_on_kernel_interrupt(self)
            self.thread.start()

        start()

    def _run_captured(self, captured: ThreadOutput) -> None:
        try:
            self.run()
        except Exception:  # already shown in red by run(); the thread has no caller
            pass
        finally:
            show_library_messages(self, captured)

    @property
    def running(self) -> bool:
        """A grid started with the Start button is still running."""
        return self.thread is not None and self.thread.is_alive()

    def stop(self, reason: str = "Stop pressed") -> None:
        """End the grid after the current run's current step (Start continues it)."""
        self.stop_event.set()
        self.messages.show(f"{reason}: stopping after the current step ...", "note")

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
        return plot_grid_heatmap(_short_task(self.rows))

    def compute_plot(self):
        """Your Figure-2-style plot: accuracy against training images seen, per run (None
        and a note before the first finished run)."""
        if self.rows.empty:
            print(NO_RUNS_YET)
            return None
        return plot_compute(_short_task(self.rows), self.result.histories)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
