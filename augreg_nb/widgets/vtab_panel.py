"""The VTAB panel of notebook 6: the paper's VTAB sweep of a checkpoint, with a Stop.

    from augreg_nb.widgets.vtab_panel import VtabPanel
    panel = VtabPanel(index_df, checkpoint="B/16", group="natural", workdir="runs")
    panel                          # choose; nothing runs until Start is pressed
    panel.start_button.click()     # the sweep in the background; the table fills in
    panel.stop_button.click()      # ends it at the current run's next log step
    panel.wait()                   # until it is over (scripts and tests)
    panel.table5_view; panel.figure3_view   # Table 5 / Figure 3 with your row, redrawn
    panel.table5(); panel.figure3()         # as each task finishes; or drawn once

The sweep is :func:`augreg_nb.vtab_run.run_vtab`: per task the paper's VTAB grid (learning
rates 0.001, 0.003, 0.01, 0.03 x 500 and 2500 steps), the run chosen by val accuracy, its
test accuracy the task's score. Every run keeps its own folder, so Start after Stop (or
after a kernel restart) continues where the sweep stopped; finished runs are read back.
Shorter grids can be chosen and are labelled as not the paper's; they run in a folder of
their own, so their results never mix with the paper grid's.

The data is full VTAB by default, what Table 5 reports; VTAB-1k (800 training examples per
task) can be chosen and is then shown on its own, never as "yours minus the paper's".
**Cost here** times one training step on this machine (:func:`augreg_nb.vtab_run.measure_step`)
and the plan line then says what the chosen grid costs, before Start. A status line says
what happens now (checking the datasets and the network, preparing a dataset, the run in
progress); without network the sweep ends within seconds with one message, and Stop while
a dataset is being prepared ends it at once ("stopped while preparing ...").

What the panel shows is computed by the plain functions below (:func:`task_table`,
:func:`group_means`, :func:`progress_text`, :func:`dataset_notice`), from the result rows
``run_vtab`` hands over task by task. The paper's numbers are Table 5's row of the
checkpoint's model and pre-training set (another row can be chosen for comparison).

Smoke mode runs three tasks (one per group) with a fake tiny model on TFDS mock data
(random examples with each dataset's real features, :func:`augreg_nb.mock_tfds.mock_tfds`),
two runs of two steps per task: the panel says so, and its numbers mean
nothing. The mock data is used only there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb import names as names_lib
from augreg_nb import vtab, vtab_run
from augreg_nb.widgets.common import (
    FULL_WIDTH,
    MessageArea,
    ThreadOutput,
    dropdown,
    guarded,
    message_html,
    quiet_libraries,
    show_library_messages,
    stop_on_kernel_interrupt,
    table_html,
    wait_for,
)
from augreg_nb.widgets.finetune_panel import checkpoint_choices

#: The sweeps offered: name -> (label, learning rates, lengths). Only "paper" is the paper's.
GRIDS: dict[str, tuple[str, tuple[float, ...], tuple[int, ...]]] = {
    "paper": ("the paper's grid: lr 0.001, 0.003, 0.01, 0.03 x 500 and 2500 steps (8 runs "
              "per task)", (0.001, 0.003, 0.01, 0.03), (500, 2500)),
    "short": ("shorter, NOT the paper's: lr 0.001, 0.003, 0.01, 0.03 x 500 steps (4 runs "
              "per task)", (0.001, 0.003, 0.01, 0.03), (500,)),
    "single": ("one run, NOT the paper's: lr 0.01 x 500 steps (1 run per task)",
               (0.01,), (500,)),
}
#: Smoke mode's grid: two runs of two steps per task.
SMOKE_GRID = ("smoke", ("smoke mode, NOT the paper's: lr 0.01, 0.03 x 2 steps on TFDS mock "
                        "data (2 runs per task)", (0.01, 0.03), (2,)))
#: Smoke mode's tasks: one of each group.
SMOKE_TASKS = ("dtd", "eurosat", "clevr_count")
#: Examples per split of the smoke mode's mock datasets.
SMOKE_EXAMPLES = 4
SMOKE_NOTICE = (
    "Smoke mode: every dataset is TFDS mock data (random images with the dataset's real "
    f"features, {SMOKE_EXAMPLES} per split, the same ones in every split) and the model is "
    "a fake tiny one; the accuracies below mean nothing. Without AUGREG_NB_SMOKE=1 the "
    "panel runs the real datasets and checkpoints.")
#: Resolutions offered (384: the default of augreg_nb.vtab_run, the authors' transfer one).
RESOLUTIONS = (vtab_run.DEFAULT_RESOLUTION, 224)
#: The columns of the per-task table.
TABLE_COLUMNS = ("task", "group", "status", "lr", "steps", "runs", "val %", "test %",
                 "paper %", "diff")
#: The data offered: full VTAB (Table 5's) or VTAB-1k (shown on its own).
VARIANTS = (("full VTAB: the training sets Table 5 reports", "full"),
            ("VTAB-1k: 800 examples per task, shown on its own (Table 5 is full VTAB)", "1k"))
ONE_K_NOTE = ("VTAB-1k (800 training examples per task) is shown on its own: Table 5 "
              "reports full VTAB and has no 1k numbers to compare with.")


# ------------------------------------------------------------------------ pure functions


def paper_rows() -> list[tuple[str, str]]:
    """(pretrain, model) of every row of the paper's Table 5, in the table's order."""
    from augreg_nb.figures import paper

    t5 = paper.table5_long()
    return list(dict.fromkeys(zip(t5["pretrain"], t5["model"], strict=True)))


def paper_row_for(checkpoint: str, *, smoke: bool = False) -> tuple[str, str]:
    """The Table 5 row to compare a checkpoint with: its model and pre-training set when
    Table 5 has them; else (a file, an unknown model) the recommended model's
    ImageNet-21k row: Ti/16 in smoke mode (the model the smoke mode stands in for),
    B/16 otherwise."""
    from augreg_nb.figures import paper

    rows = paper_rows()
    model, ds = (config_lib.SMOKE_MODEL if smoke else config_lib.DEFAULT_CHECKPOINT), "i21k"
    with contextlib.suppress(ValueError):
        name = names_lib.parse_name(str(checkpoint))
        if (paper.DS_TABLE5.get(name.ds), name.model) in rows:
            model, ds = name.model, name.ds
    if checkpoint in names_lib.MODELS:  # a model name means its recommended i21k upstream
        model, ds = checkpoint, "i21k"
    row = (paper.DS_TABLE5[ds], model)
    return row if row in rows else (paper.DS_TABLE5["i21k"], config_lib.DEFAULT_CHECKPOINT)


def paper_values(pretrain: str, model: str) -> dict[str, float]:
    """Table 5's numbers of one row: {task name: top-1 %} plus {"Mean_<group>": %}."""
    from augreg_nb.figures import paper

    t5 = paper.table5_long()
    part = t5[(t5["pretrain"] == pretrain) & (t5["model"] == model)]
    by_column = dict(zip(part["dataset"], part["top1"].astype(float), strict=True))
    out = {n: by_column[s.column] for n, s in vtab.SPECS.items() if s.column in by_column}
    out.update({k: v for k, v in by_column.items() if k.startswith("Mean_")})
    return out


def _pct(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return 100 * value


def task_table(names: Sequence[str], results: Mapping[str, Mapping[str, Any]],
               paper: Mapping[str, float], status: Mapping[str, str] | None = None
               ) -> pd.DataFrame:
    """One row per chosen task (Table 5 order): group, status, the chosen run's lr and
    steps, how many runs were compared, its val and test accuracy (%), the paper's test
    accuracy (%) and the difference (own - paper, points). ``results``: task -> result row
    of :func:`augreg_nb.vtab_run.task_row`; ``status``: task -> a word for tasks without
    a result ("waiting" when not given)."""
    status = status or {}
    rows = []
    for name in names:
        spec = vtab.SPECS[name]
        row = results.get(name)
        ref = paper.get(name, math.nan)
        if row is None:
            rows.append([spec.column, spec.group, status.get(name, "waiting"), math.nan,
                         math.nan, math.nan, math.nan, math.nan, ref, math.nan])
            continue
        test = _pct(row["adapt_final_test"])
        rows.append([spec.column, spec.group, "done", float(row["adapt_lr"]),
                     int(row["adapt_steps"]), int(row.get("runs", 1)),
                     _pct(row["adapt_final_val"]), test, ref, test - ref])
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for column in ("steps", "runs"):
        table[column] = table[column].astype("Int64")
    return table


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`task_table` as the panel prints it: accuracies with one decimal as Table 5
    has them, the difference with its sign, learning rates as written (0.003)."""
    def fmt(spec):
        return lambda v: "" if pd.isna(v) else format(float(v), spec)

    out = table.astype(object)
    for column in ("val %", "test %", "paper %"):
        out[column] = table[column].map(fmt(".1f"))
    out["diff"] = table["diff"].map(fmt("+.1f"))
    out["lr"] = table["lr"].map(fmt("g"))
    return out


def group_means(names: Sequence[str], results: Mapping[str, Mapping[str, Any]],
                paper: Mapping[str, float]) -> pd.DataFrame:
    """Per group with a chosen task: how many of its tasks have finished, the mean own test
    accuracy (%) over those, the paper's mean over the same tasks, and Table 5's group mean
    (over all the group's tasks). ``complete`` is True when every task of the group has
    finished: only then is the own mean Table 5's group mean."""
    rows = []
    for group in vtab.GROUPS:
        members = vtab.names(group)
        if not any(n in names for n in members):
            continue
        done = [n for n in members if n in results]
        own = [_pct(results[n]["adapt_final_test"]) for n in done]
        ref = [paper[n] for n in done if n in paper]
        rows.append({
            "group": group,
            "finished": f"{len(done)} of {len(members)}",
            "own mean %": sum(own) / len(own) if own else math.nan,
            "paper, same tasks %": sum(ref) / len(ref) if ref and len(ref) == len(done)
            else math.nan,
            "paper's group mean %": paper.get(f"Mean_{group}", math.nan),
            "complete": len(done) == len(members),
        })
    return pd.DataFrame(rows, columns=["group", "finished", "own mean %",
                                       "paper, same tasks %", "paper's group mean %",
                                       "complete"])


@dataclasses.dataclass
class Progress:
    """Where a sweep is: which task and run, and the run's step."""

    tasks: tuple[str, ...]  #: the chosen tasks, in order
    runs_per_task: int  #: runs of the grid per task
    done: tuple[str, ...] = ()  #: tasks with a result
    task: str | None = None  #: the task whose run is training now
    run: int = 0  #: that run's position in the task's grid (1-based)
    lr: float = math.nan
    steps: int = 0  #: the run's length
    step: int = 0  #: its last logged step
    loss: float = math.nan

    @property
    def runs_done(self) -> int:
        """Finished runs: all of each finished task's, those before the current run."""
        current = self.run - 1 if self.task is not None and self.task not in self.done else 0
        return len(self.done) * self.runs_per_task + max(0, current)

    @property
    def runs_total(self) -> int:
        return len(self.tasks) * self.runs_per_task


def progress_text(p: Progress) -> tuple[str, str]:
    """(overall line, current task line) of the progress display."""
    overall = (f"{len(p.done)} of {len(p.tasks)} task(s) finished · {p.runs_done} of "
               f"{p.runs_total} runs")
    if p.task is None or p.task in p.done:
        return overall, ""
    position = p.tasks.index(p.task) + 1 if p.task in p.tasks else 0
    line = (f"task {position} of {len(p.tasks)}: {vtab.SPECS[p.task].column} · run "
            f"{p.run} of {p.runs_per_task} (lr {p.lr:g}, {p.steps:,} steps) · step "
            f"{p.step:,} of {p.steps:,}")
    if math.isfinite(p.loss):
        line += f" · loss {p.loss:.4f}"
    return overall, line


def dataset_notice(status: Mapping[str, str], *, variant: str = "1k",
                   data_dir: str | None = None) -> tuple[str, str]:
    """(kind, text) telling what the chosen tasks' datasets need before Start: an error
    with the exact steps when a manual download is missing (the sweep would refuse to
    start), a note listing those TFDS will download, or ("", "") when all are prepared.

    ``status``: task -> state, as :func:`augreg_nb.vtab_run.dataset_status` gives it.
    """
    manual = [n for n, s in status.items() if s == "manual download missing"]
    if manual:
        try:
            vtab_run.check_datasets(manual, variant=variant, data_dir=data_dir)
        except vtab_run.ManualDownloadsMissing as err:
            return "error", str(err).replace("--tasks / tasks=[...] or a --group",
                                             "the tasks or a group")
    download = [n for n, s in status.items() if s == "needs download"]
    if download:
        return "note", (f"TFDS downloads and prepares {len(download)} dataset(s) when their "
                        f"task comes: {', '.join(vtab.SPECS[n].column for n in download)}.")
    return "", ""


def smoke_base(data_dir: str | os.PathLike | None = None):
    """The config of every smoke-mode run: the fake tiny model at 16 px, batch 4,
    evaluated once at the end, no checkpoints between steps."""
    c = config_lib.get_config("smoke")
    c.resolution = 16
    c.global_batch = 4
    c.micro_batches = 1
    c.eval_batch = 8
    c.log_every = 1
    c.checkpoint_every = 0
    c.eval_every = 0
    c.shuffle_buffer = 8
    c.export = False
    if data_dir is not None:
        c.data_dir = str(data_dir)
    return c


@contextlib.contextmanager
def smoke_data():
    """Smoke mode only: every TFDS dataset reads as mock data, and XLA compiles with its
    cheapest settings (each task's head size is a new compilation; the numbers of a
    smoke run are not compared with anything)."""
    import jax

    from augreg_nb.mock_tfds import mock_tfds

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        with mock_tfds(num_examples=SMOKE_EXAMPLES, seed=5):
            yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


# ------------------------------------------------------------------------ the panel


class _RunProgress:
    """A run's callback: the step and loss into the panel's progress."""

    def __init__(self, panel: VtabPanel):
        self.panel = panel

    def on_train_begin(self, info: dict) -> None:
        self.panel.progress.step = int(info["start_step"])
        self.panel._show_progress()

    def on_log(self, step: int, metrics: dict) -> None:
        self.panel.progress.step = int(step)
        self.panel.progress.loss = float(metrics.get("loss", math.nan))
        self.panel._show_progress()


class VtabPanel:
    """Checkpoint, tasks (a group or a list), the grid, resolution; Start / Stop; a progress
    line per task and overall; the table filling in task by task; group means.

    Start runs :func:`augreg_nb.vtab_run.run_vtab` in a background thread; Stop (or
    interrupting the kernel) ends it at the current run's next log step, and Start continues
    (finished runs are kept). ``panel.wait()`` blocks until the sweep is over.
    """

    def __init__(self, df: pd.DataFrame | None = None, *, checkpoint: str | None = None,
                 group: str = "all", tasks: Iterable[str] | str | None = None,
                 grid: str = "paper", resolution: int | None = None,
                 micro_batches: int = 16, workdir: str | os.PathLike = "augreg_runs",
                 smoke: bool = False, data_dir: str | None = None, variant: str = "full"):
        self.smoke = smoke
        self.root = Path(workdir)
        self.data_dir = data_dir
        self.grids = dict([SMOKE_GRID]) if smoke else dict(GRIDS)
        self.results: dict[str, dict] = {}  #: task -> its result row (the run chosen by val)
        self.runs: dict[str, pd.DataFrame] = {}  #: task -> every run of it
        self.status: dict[str, str] = {}  #: the chosen tasks' datasets (dataset_status)
        self.progress = Progress(tasks=(), runs_per_task=1)
        self.failed: tuple[str, str] | None = None  #: (task, reason) of a sweep that raised
        self.timings: dict[tuple, vtab_run.StepTiming] = {}  #: measured steps, by setting
        self.result: vtab_run.VtabResult | None = None
        self.stopped_at = ""  #: where the last sweep was stopped ("" when it was not)
        self.library_output = ""  #: what the libraries printed during the last sweep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._measuring = False
        self._cost_thread: threading.Thread | None = None
        self._results_dir: Path | None = None  # the sweep self.results belong to
        self.messages = MessageArea()

        ckpts = checkpoint_choices(df, smoke=smoke)
        if not smoke:
            checkpoint = self._checkpoint_value(ckpts, checkpoint)
            if checkpoint not in [c[1] for c in ckpts]:
                ckpts.insert(0, (checkpoint, checkpoint))
        self.checkpoint = dropdown("Checkpoint", ckpts, checkpoint or ckpts[0][1],
                                   width=FULL_WIDTH)
        self.compare = dropdown(
            "Paper's row to compare with",
            [(f"{model}, {pretrain}", f"{pretrain}|{model}") for pretrain, model in
             paper_rows()],
            "|".join(paper_row_for(self.checkpoint.value, smoke=smoke)))
        if isinstance(tasks, str):  # "dtd, svhn" (a notebook parameter); "" for none
            tasks = [t for t in tasks.replace(" ", "").split(",") if t] or None
        task_options = [(f"{vtab.SPECS[n].column} ({vtab.SPECS[n].group})", n)
                        for n in vtab.names()]
        chosen = (SMOKE_TASKS if smoke else
                  vtab_run.select_tasks(tasks) if tasks is not None else
                  vtab_run.select_tasks(None, None if group == "all" else group))
        self.group = dropdown("Tasks", [("all 19", "all")] + [
            (f"{g} ({len(vtab.names(g))})", g) for g in vtab.GROUPS] + [
            ("the tasks chosen on the right", "list")], self._group_of(chosen))
        self.tasks = w.SelectMultiple(options=task_options, value=tuple(chosen), rows=8,
                                      description="", layout=w.Layout(width="16em"))
        self.grid = dropdown("Sweep", [(label, key) for key, (label, *_) in
                                       self.grids.items()],
                             "smoke" if smoke else grid)
        self.resolution = dropdown("Resolution", [16] if smoke else list(RESOLUTIONS),
                                   16 if smoke else resolution or RESOLUTIONS[0])
        self.micro_batches = w.BoundedIntText(
            value=1 if smoke else micro_batches, min=1, max=512, description="Micro-batches",
            style={"description_width": "initial"}, layout=w.Layout(width="12em"))
        self.smoke_notice = w.HTML(message_html(SMOKE_NOTICE, "warning", title="Smoke data")
                                   if smoke else "")
        self.variant = dropdown("Data", list(VARIANTS), variant)
        self.plan = w.HTML()
        self.cost_button = w.Button(
            description="Cost here", icon="clock", layout=w.Layout(width="9em"),
            tooltip="time one training step on this machine and say what the grid costs")
        self.datasets = w.HTML()
        self.now = w.HTML()  # what happens now (checking, preparing a dataset, a run)
        # Table 5 and Figure 3 with the own row, redrawn whenever a task finishes.
        self.table5_view = w.HTML()
        self.figure3_note = w.HTML()
        self.figure3_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.figure3_view = w.VBox([self.figure3_note, self.figure3_image])
        self.start_button = w.Button(description="Start VTAB sweep", icon="play",
                                     button_style="success", layout=w.Layout(width="13em"))
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning",
                                    disabled=True,
                                    tooltip="stop at the next log step; Start continues")
        # The bars appear with the first Start (the "Now" bar only while a run trains).
        self.overall_bar = w.IntProgress(value=0, min=0, max=1,
                                         layout=w.Layout(width=FULL_WIDTH, display="none"))
        self.overall_label = w.HTML()
        self.task_bar = w.IntProgress(value=0, min=0, max=1,
                                      layout=w.Layout(width=FULL_WIDTH, display="none"))
        self.task_label = w.HTML()
        self.table = w.HTML()
        self.means = w.HTML()
        self.details = w.HTML()

        self.group.observe(self._on_group, names="value")
        self.tasks.observe(self._on_tasks, names="value")
        self.checkpoint.observe(self._on_checkpoint, names="value")
        for widget in (self.grid, self.resolution, self.micro_batches, self.compare):
            widget.observe(self._on_change, names="value")
        self.variant.observe(self._on_variant, names="value")
        self.cost_button.on_click(self._on_cost)
        self.start_button.on_click(self._on_start)
        self.stop_button.on_click(self._on_stop)
        wrap = w.Layout(flex_flow="row wrap", max_width="100%")
        self.widget = w.VBox([
            self.smoke_notice,
            self.checkpoint,
            w.HBox([w.VBox([self.group, self.grid,
                            w.HBox([self.resolution, self.micro_batches], layout=wrap),
                            self.variant, self.compare],
                           layout=w.Layout(flex="1 1 24em", min_width="0")),
                    self.tasks], layout=wrap),
            self.plan, self.datasets,
            w.HBox([self.start_button, self.stop_button, self.cost_button], layout=wrap),
            self.now, self.overall_label, self.overall_bar, self.task_label, self.task_bar,
            self.messages.widget, self.table, self.means, self.details,
        ], layout=w.Layout(max_width="100%"))
        self._on_tasks()  # and _on_change: reads what the folder finished, draws the views

    @staticmethod
    def _checkpoint_value(choices, checkpoint: str | None) -> str:
        """A model name picks its recommended checkpoint among the choices (★)."""
        checkpoint = checkpoint or config_lib.DEFAULT_CHECKPOINT
        for label, value in choices:
            if label.startswith(f"★ {checkpoint}: "):
                return value
        return checkpoint

    @staticmethod
    def _group_of(chosen: Sequence[str]) -> str:
        if tuple(chosen) == vtab.names():
            return "all"
        return next((g for g in vtab.GROUPS if tuple(chosen) == vtab.names(g)), "list")

    @classmethod
    def for_session(cls, session, **choices) -> VtabPanel:
        """The panel for a notebook Session: its index and run folder; in smoke mode the
        smoke tasks and grid (``choices`` are ignored)."""
        if session.smoke:
            choices = {}
        return cls(session.index, workdir=session.workdir, smoke=session.smoke, **choices)

    # -- state ---------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The chosen tasks, in Table 5 order."""
        return vtab_run.select_tasks(self.tasks.value) if self.tasks.value else ()

    @property
    def running(self) -> bool:
        """A sweep is going on (until its thread has shown how it ended)."""
        return self._busy

    @property
    def grid_values(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(learning rates, lengths) of the chosen sweep."""
        _, lrs, lengths = self.grids[self.grid.value]
        return lrs, lengths

    @property
    def workdir(self) -> Path:
        """The sweep's folder: one per checkpoint, resolution and grid."""
        checkpoint = self.checkpoint.value
        folder = vtab_run.default_workdir(checkpoint, variant=self.variant.value,
                                          resolution=self.resolution.value).name
        grid = self.grid.value
        return self.root / (folder if grid == "paper" else f"{folder}-{grid}")

    @property
    def one_k(self) -> bool:
        """VTAB-1k is chosen: results are shown on their own, never against Table 5."""
        return self.variant.value == "1k"

    @property
    def paper(self) -> dict[str, float]:
        """Table 5's numbers of the row chosen for comparison (none for VTAB-1k: Table 5
        reports full VTAB)."""
        if self.one_k:
            return {}
        pretrain, model = self.compare.value.split("|", 1)
        return paper_values(pretrain, model)

    @property
    def table_rows(self) -> pd.DataFrame:
        """The per-task table as shown (see :func:`task_table`)."""
        status = {n: s for n, s in self._task_status().items() if n not in self.results}
        return task_table(self.names, self.results, self.paper, status)

    @property
    def own_rows(self) -> pd.DataFrame:
        """The finished tasks' result rows (index schema plus vtab_run's extra columns)."""
        from augreg_nb.index import COLUMNS

        rows = [self.results[n] for n in self.names if n in self.results]
        return pd.DataFrame(rows, columns=[*COLUMNS, *vtab_run.EXTRA_COLUMNS])

    def _task_status(self) -> dict[str, str]:
        p = self.progress
        out = {}
        for name in self.names:
            if self.smoke:
                out[name] = "waiting (mock data)"
            else:
                out[name] = vtab_run.STATUS_WORDS.get(self.status.get(name, ""), "waiting")
            if self.failed is not None and name == self.failed[0]:
                out[name] = "failed"
            elif name == p.task and self.running:
                out[name] = f"run {p.run} of {p.runs_per_task}"
            elif name == p.task and self.stopped_at:
                out[name] = "stopped"
        return out

    def _on_group(self, change=None) -> None:
        group = self.group.value
        if group != "list":
            wanted = vtab.names(None if group == "all" else group)
            if tuple(self.tasks.value) != wanted:
                self.tasks.value = wanted  # _on_tasks follows

    def _on_tasks(self, change=None) -> None:
        group = self._group_of(self.names)
        if self.group.value != group:
            self.group.unobserve(self._on_group, names="value")
            self.group.value = group
            self.group.observe(self._on_group, names="value")
        self._check_datasets()
        self._on_change()

    def _on_checkpoint(self, change=None) -> None:
        self.compare.value = "|".join(paper_row_for(self.checkpoint.value, smoke=self.smoke))
        self._on_change()

    def _check_datasets(self) -> None:
        """The chosen tasks' datasets, before anything runs: missing manual downloads with
        their steps, up front."""
        self.datasets.value = ""
        if self.smoke or not self.names:
            self.status = {}
            return
        try:
            self.status = vtab_run.dataset_status(self.names, variant=self.variant.value,
                                                  data_dir=self.data_dir)
            kind, text = dataset_notice(self.status, variant=self.variant.value,
                                        data_dir=self.data_dir)
        except Exception as err:  # shown, never raised into the notebook
            kind, text = "warning", f"Could not check the datasets: {err}"
        if text:
            title = "Manual download needed" if kind == "error" else "Datasets"
            self.datasets.value = message_html(text, "warning" if kind == "error" else kind,
                                               title=title)

    def _on_variant(self, change=None) -> None:
        self.compare.disabled = self.one_k
        self._check_datasets()
        self._on_change()

    def _on_change(self, change=None) -> None:
        if not self.running and self._results_dir != self.workdir:
            # Another checkpoint, grid, resolution or data: another sweep, other results;
            # what was shown of the last one (messages, bars, figures) goes with it.
            self.results, self.runs, self.stopped_at, self.failed = {}, {}, "", None
            self._results_dir = self.workdir
            self._read_finished()
            if self.messages.kind != "error":
                self.messages.clear()
            self.now.value = ""
            for bar in (self.overall_bar, self.task_bar):
                bar.layout.display = "none"
            self.overall_label.value = self.task_label.value = ""
            self._redraw()
        names = self.names
        if not names:
            self.messages.error("choose at least one task (or a group)", "Setting up the sweep")
            self.start_button.disabled = True
        else:
            if not self.running and self.messages.kind == "error":
                self.messages.clear()
            blocked = any(self.status.get(n) == "manual download missing" for n in names)
            self.start_button.disabled = self.running or blocked
        lrs, lengths = self.grid_values
        runs = len(names) * len(lrs) * len(lengths)
        steps = len(names) * len(lrs) * sum(lengths)
        data = ("VTAB-1k (800 training examples per task; shown on its own)" if self.one_k
                else "full VTAB (Table 5's data)")
        self.plan.value = (
            f"<small>{len(names)} task(s) x {len(lrs) * len(lengths)} runs = {runs} runs, "
            f"{steps:,} steps in all, at {self.resolution.value} px, on {data}; each task's "
            f"run is chosen by val accuracy, its test accuracy is the task's score.<br>"
            f"<b>Cost on this machine</b>: {html.escape(self._cost_text())}<br>Runs and "
            f"results: {html.escape(str(self.workdir))} "
            f"({vtab_run.RESULTS_FILE}: one row per finished task)</small>")
        self._show_table()

    def _read_finished(self) -> None:
        """The tasks this sweep's folder has finished before (its ``vtab.csv``)."""
        path = self.workdir / vtab_run.RESULTS_FILE
        if not path.is_file():
            return
        with contextlib.suppress(Exception):  # an unreadable file: shown as not finished
            for row in vtab_run.read_results(self.workdir).to_dict("records"):
                if row.get("vtab_task") in vtab.SPECS:
                    self.results[row["vtab_task"]] = row

    # -- cost --------------------------------------------------------------------------
    def _timing_key(self) -> tuple:
        return (self.checkpoint.value, self.resolution.value, self.micro_batches.value)

    def _base_config(self):
        """The config every run of the sweep starts from (as Start builds it)."""
        if self.smoke:
            return smoke_base(self.data_dir)
        overrides = [f"micro_batches={self.micro_batches.value}"]
        if self.data_dir:
            overrides.append(f"data_dir={self.data_dir}")
        return vtab_run.base_config(self.checkpoint.value, resolution=self.resolution.value,
                                    overrides=overrides)

    def _cost_text(self) -> str:
        timing = self.timings.get(self._timing_key())
        if timing is None:
            return ("not measured yet: press Cost here to time one training step (a minute "
                    "or so on a CPU for B/16).")
        lrs, lengths = self.grid_values
        cost = vtab_run.grid_cost(self.names, variant=self.variant.value,
                                  learning_rates=lrs, lengths=lengths,
                                  seconds_per_step=timing.seconds_per_step,
                                  global_batch=timing.global_batch)
        return vtab_run.cost_text(cost, timing)

    def _on_cost(self, _button=None) -> None:
        """Time one training step in the background; the plan line then gives the cost."""
        if self.running or self._measuring:
            return
        key = self._timing_key()
        self._measuring = True
        self.cost_button.disabled = True
        self.now.value = "<b>Now</b>: timing one training step on this machine ..."

        def measure():
            try:
                self.timings[key] = vtab_run.measure_step(self._base_config())
            except Exception as err:  # shown, never raised into the notebook
                self.messages.error(err, "Timing a training step")
            finally:
                self._measuring = False
                self.cost_button.disabled = False
                self.now.value = ""
                self._on_change()

        self._cost_thread = threading.Thread(target=measure, name="augreg-vtab-cost",
                                             daemon=True)
        self._cost_thread.start()

    def _on_status(self, text: str) -> None:
        """``run_vtab``'s word on what happens now (checking, preparing a dataset)."""
        self.now.value = f"<b>Now</b>: {html.escape(text)}"

    # -- Table 5 and Figure 3, kept up to date ----------------------------------------------
    def _redraw(self) -> None:
        """Redraw :attr:`table5_view` and :attr:`figure3_view` from the results so far."""
        import io

        import matplotlib.pyplot as plt

        try:
            self.table5_view.value = self.table5().to_html()
            if self.one_k:
                self.figure3_note.value = message_html(
                    "Figure 3 plots full-VTAB group means; a VTAB-1k run is not drawn on it.",
                    "note")
                self.figure3_image.layout.display = "none"
                return
            fig = self._figure3(quiet=True)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
            plt.close(fig)
            self.figure3_image.value = buffer.getvalue()
            self.figure3_image.layout.display = ""
            self.figure3_note.value = self._figure3_note()
        except Exception as err:  # a figure never breaks the sweep
            self.figure3_note.value = message_html(f"Could not draw: {err}", "warning")

    # -- display -------------------------------------------------------------------------
    def _show_progress(self) -> None:
        p = self.progress
        overall, current = progress_text(p)
        self.overall_bar.max = max(1, p.runs_total)
        self.overall_bar.value = min(p.runs_done, self.overall_bar.max)
        self.overall_label.value = f"<b>Overall</b>: {html.escape(overall)}"
        self.overall_bar.layout.display = ""
        self.task_bar.max = max(1, p.steps)
        self.task_bar.value = min(p.step, self.task_bar.max)
        self.task_label.value = f"<b>Now</b>: {html.escape(current)}" if current else ""
        self.task_bar.layout.display = "" if current else "none"

    def _show_table(self) -> None:
        table = self.table_rows
        done = table["status"] == "done"
        means = group_means(self.names, self.results, self.paper)
        if self.one_k:  # on its own: no full-VTAB number to subtract
            self.table.value = (f"<b>Per task</b> ({html.escape(ONE_K_NOTE)})" + table_html(
                shown_table(table).drop(columns=["paper %", "diff"]), marked=list(done),
                max_height="34em"))
            self.means.value = "<b>Group means</b> (VTAB-1k)" + table_html(
                means[["group", "finished", "own mean %"]], marked=list(means["complete"]),
                float_format="{:.1f}")
            return
        self.table.value = (
            f"<b>Per task</b> (paper: Table 5, {html.escape(self.compare.label)}; diff: "
            "yours minus the paper's, points)" + table_html(
                shown_table(table), marked=list(done), max_height="34em"))
        self.means.value = ("<b>Group means</b> (Table 5's mean is over the whole group; "
                            "the own mean is Table 5's once a group is complete)"
                            + table_html(means.drop(columns="complete"),
                                         marked=list(means["complete"]),
                                         float_format="{:.1f}"))

    # -- actions -------------------------------------------------------------------------
    def _on_start(self, _button=None) -> None:
        @guarded(self.messages, "Starting the VTAB sweep")
        def start():
            if self.running:
                raise RuntimeError("the sweep is running: wait for it, or press Stop")
            if not self.names:
                raise ValueError("choose at least one task (or a group)")
            if self._measuring:
                raise RuntimeError("a training step is being timed: Start once the cost "
                                   "is shown")
            quiet_libraries()
            self._stop.clear()
            self.stopped_at, self.failed = "", None
            lrs, lengths = self.grid_values
            self.progress = Progress(tasks=self.names, runs_per_task=len(lrs) * len(lengths),
                                     done=tuple(n for n in self.names if n in self.results))
            self._show_progress()
            self._busy = True
            self.start_button.disabled = True
            self.stop_button.disabled = False
            self.task_bar.bar_style = self.overall_bar.bar_style = ""
            self.messages.show(f"VTAB sweep of {self.checkpoint.value}: "
                               f"{len(self.names)} task(s) ...", "note")
            self._on_status("starting ...")
            captured = ThreadOutput()
            self._thread = threading.Thread(target=self._run, args=(captured,),
                                            name="augreg-vtab", daemon=True)
            captured.install(self._thread)
            stop_on_kernel_interrupt(self)
            self._thread.start()

        start()

    def _callbacks(self, config) -> list:
        """Each run's callbacks (``run_vtab``'s ``callbacks``): note which run it is."""
        lrs, lengths = self.grid_values
        p = self.progress
        p.task = str(config.task).split("/", 1)[1]
        p.lr, p.steps = float(config.base_lr), int(config.total_steps)
        p.run = lengths.index(p.steps) * len(lrs) + lrs.index(p.lr) + 1
        p.step, p.loss = 0, math.nan
        self._on_status(f"{vtab.SPECS[p.task].column}: run {p.run} of {p.runs_per_task} "
                        f"(lr {p.lr:g}, {p.steps:,} steps)")
        self._show_progress()
        self._show_table()
        return [_RunProgress(self)]

    def _on_task(self, row: dict, runs: pd.DataFrame) -> None:
        name = row["vtab_task"]
        self.results[name] = dict(row)
        self.runs[name] = runs
        p = self.progress
        p.done = tuple(n for n in self.names if n in self.results)
        self._show_progress()
        self._show_table()
        self._redraw()  # Table 5 and Figure 3 below follow each finished task

    def _run(self, captured: ThreadOutput) -> None:
        """The sweep itself (in the background thread)."""
        lrs, lengths = self.grid_values
        kwargs = dict(tasks=self.names, workdir=self.workdir, learning_rates=lrs,
                      lengths=lengths, callbacks=self._callbacks, on_task=self._on_task,
                      should_stop=self._stop.is_set, variant=self.variant.value,
                      on_status=self._on_status)
        result = error = None
        try:
            if self.smoke:
                with smoke_data():
                    base = smoke_base(self.data_dir)
                    result = vtab_run.run_vtab(base=base, **kwargs)
            else:
                overrides = [f"micro_batches={self.micro_batches.value}"]
                if self.data_dir:
                    overrides.append(f"data_dir={self.data_dir}")
                result = vtab_run.run_vtab(self.checkpoint.value,
                                           resolution=self.resolution.value,
                                           overrides=overrides, **kwargs)
        except Exception as err:  # shown in the panel; the thread has no caller to tell
            error = err
        finally:
            show_library_messages(self, captured)
            self._busy = False
            self.stop_button.disabled = True
            self._on_change()  # Start comes back on
        # The closing message last: whoever waits for it finds the buttons as they stay.
        if error is not None:
            self._failed(error)
        elif result is not None:
            self._finished(result)

    def _failed(self, error: BaseException) -> None:
        """A sweep that raised: red, with the reason, on the task it was at (never green)."""
        p = self.progress
        task = p.task if p.task is not None and p.task not in p.done else None
        self.failed = (task or "", str(error))
        self.task_bar.bar_style = self.overall_bar.bar_style = "danger"
        self.now.value = ""
        self._show_table()
        where = f" at {vtab.SPECS[task].column}" if task else ""
        self.messages.error(error, f"The VTAB sweep{where}")

    def _finished(self, result: vtab_run.VtabResult) -> None:
        self.result = result
        p = self.progress
        done = len(p.done)
        self.now.value = ""
        if result.stopped and result.stopped_reason.startswith("stopped while preparing"):
            self.stopped_at = result.stopped_reason.split(";")[0].removeprefix("stopped at ")
            self.task_bar.bar_style = "warning"
            self.messages.show(
                f"{result.stopped_reason} ({done} of {len(p.tasks)} task(s) finished; "
                "finished runs are kept)", "warning", title="Stopped")
        elif result.stopped:
            where = "between tasks"
            if p.task is not None and p.task not in p.done:
                where = (f"{vtab.SPECS[p.task].column}, run {p.run} of {p.runs_per_task} "
                         f"(step {p.step:,} of {p.steps:,})")
            self.stopped_at = where
            self.task_bar.bar_style = "warning"
            self.messages.show(
                f"stopped at {where}; Start resumes ({done} of {len(p.tasks)} task(s) "
                "finished; finished runs are kept)", "warning", title="Stopped")
        else:
            p.task = None
            self.overall_bar.bar_style = "success"
            self._show_progress()
            below = (" — the tables below show them on their own (VTAB-1k)" if self.one_k
                     else " — Table 5 and Figure 3 below show them next to the paper's")
            self.messages.show(
                f"finished: {done} task(s); results in {result.workdir / vtab_run.RESULTS_FILE}"
                + below, "info", title="VTAB sweep finished")
        self._show_table()
        self._redraw()

    def stop(self, reason: str = "Stop pressed") -> None:
        """End the sweep at the current run's next log step, or at once while a dataset is
        being prepared (finished runs are kept)."""
        if self.running:
            self._stop.set()
            self.stop_button.disabled = True
            self.messages.show(f"{reason}: stopping ... (a run at its next log step, the "
                               "preparation of a dataset at once)", "note")

    def _on_stop(self, _button=None) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the sweep is over. An interrupt (Ctrl-C, the kernel's stop button)
        while waiting stops the sweep instead of raising."""
        wait_for(self, self._thread, timeout)

    # -- Table 5 and Figure 3 --------------------------------------------------------------
    def table5(self):
        """Table 5 with your row ("Own: ...") under the paper's; the row compared with and
        yours are shaded. Before the first finished task, the paper's alone. For VTAB-1k,
        your results alone (Table 5 reports full VTAB)."""
        from augreg_nb import figures

        if self.one_k:
            shown = shown_table(self.table_rows).drop(columns=["paper %", "diff"])
            return shown.style.hide(axis="index").set_caption(
                f"Your VTAB-1k results. {ONE_K_NOTE}")
        own = self.own_rows if self.results else None
        tidy = figures.table5_data(own=own)
        model = self.compare.value.split("|", 1)[1]
        mine = tidy[tidy["pretrain"].str.startswith("Own: ")]["model"].tolist()
        return figures.style_table5(tidy, highlight=list(dict.fromkeys([model, *mine])))

    def figure3(self):
        """Figure 3 with your complete groups' means as black stars (at the published speed
        of your model); a note says what is missing when there is no star yet. A VTAB-1k
        run is not drawn on it (Figure 3 is full VTAB): the paper's figure alone."""
        return self._figure3(quiet=False)

    def _figure3_note(self) -> str:
        text = self._no_star_text()
        return message_html(text, "note") if text else ""

    def _no_star_text(self) -> str:
        """Why Figure 3 has no star of yours ("" when it has one)."""
        from augreg_nb import figures

        if self.one_k:
            return "Figure 3 plots full-VTAB group means; a VTAB-1k run is not drawn on it."
        own = self.own_rows if self.results else None
        data = figures.fig3_data(own=own)
        if not data[(data["ds"] == "own")].dropna(subset=["img_per_sec", "vtab_mean"]).empty:
            return ""
        means = group_means(self.names, self.results, self.paper)
        done = ", ".join(f"{r.group} {r.finished}" for r in means.itertuples())
        return ("No own point yet: a group's mean is drawn once every task of the group has "
                f"finished (now: {done or 'nothing run'}), for a model with a published speed "
                "(Table 3).")

    def _figure3(self, *, quiet: bool):
        from augreg_nb import figures

        own = self.own_rows if self.results and not self.one_k else None
        if not quiet and self._no_star_text():
            print(self._no_star_text())
        return figures.plot_fig3(figures.fig3_data(own=own),
                                 highlight=self.compare.value.split("|", 1)[1])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
