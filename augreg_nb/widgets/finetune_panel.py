"""The fine-tuning panel of notebook 2: pick a run of the paper's sweep, start it, watch it.

The pure functions build what the panel runs and shows::

    from augreg_nb.widgets.finetune_panel import FinetunePanel, make_config, published_result

    config = make_config(checkpoint="Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
                         task="oxford_iiit_pet", resolution=224, lr=0.003, steps=500)
    published_result(index_df, config)    # the published accuracy of this run, if known

    panel = FinetunePanel(index_df, workdir="runs", results_csv="augreg_results.csv")
    panel                                  # displays it; nothing runs until Start is pressed
    panel.start_button.click()             # fine-tunes (in the background): progress, live plot
    panel.stop_button.click()              # ends it after the current step; Start resumes
    panel.wait()                           # until the run is over (scripts and tests)
    panel.export_button.click()            # appends the result row to results_csv

The run is :func:`augreg_nb.train.finetune` with the paper's recipe
(:func:`augreg_nb.config.preset_for`: warm-up from the paper's Table 4, batch 512, SGD with
momentum); ``micro_batches`` splits each step so it fits the accelerator's memory without
changing the result. The run's folder keeps its state, so pressing Start again after an
interruption resumes it. Besides the sweep's tasks the panel fine-tunes on a folder of images
(its path) or on any TFDS image classification dataset (its name, e.g. ``tf_flowers``; the
run's task is then ``tfds:tf_flowers``, see :func:`augreg_nb.tasks.get_task`). In smoke mode
the choices are the ``smoke`` preset's: a tiny model from a fake checkpoint on
the digits shipped with the package.
"""

from __future__ import annotations

import csv
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb import names
from augreg_nb import tasks as tasks_lib
from augreg_nb.callbacks import LivePlot, StopFlag, duration_text
from augreg_nb.index import COLUMNS
from augreg_nb.train import TrainingStopped, finetune
from augreg_nb.widgets.common import (
    FULL_WIDTH,
    MessageArea,
    ThreadOutput,
    dropdown,
    figure_png,
    guarded,
    message_html,
    quiet_libraries,
    set_options,
    show_library_messages,
    stop_on_kernel_interrupt,
    table_html,
    wait_for,
)
from augreg_nb.widgets.index_browser import recommended_files

#: The tasks of the paper's sweep, with their run lengths (steps).
PAPER_TASKS: dict[str, tuple[int, ...]] = {
    name: tasks_lib.get_task(name).sweep_steps for name in tasks_lib.list_tasks()
}
SMOKE_CHECKPOINT = config_lib.FAKE_CHECKPOINT_PREFIX + "testing"
#: A run expected to take longer than this (seconds) on a CPU is paused after its first
#: measured step, to say how long it would take.
LONG_RUN_S = 600


def checkpoint_choices(df: pd.DataFrame | None, *, smoke: bool = False) -> list[tuple[str, str]]:
    """(label, checkpoint) choices: the recommended upstream of each model (★), then the
    other upstream checkpoints of the table; in smoke mode only the fake test model, the
    one that runs offline."""
    out: list[tuple[str, str]] = []
    if smoke:  # offline: only the fake model (a real checkpoint needs a download)
        return [("fake tiny test model (smoke mode)", SMOKE_CHECKPOINT)]
    if df is None or len(df) == 0:
        return out

    rec = recommended_files(df)
    ups = df.drop_duplicates("filename")
    order = {m: i for i, m in enumerate(names.MODELS)}
    rows = sorted(
        zip(ups["name"].astype(object), ups["filename"].astype(object), strict=True),
        key=lambda r: (r[1] not in rec, order.get(r[0], 99), r[1]),
    )
    out += [(f"{'★ ' if f in rec else ''}{m}: {f}", f) for m, f in rows]
    return out


def task_choices(*, smoke: bool = False) -> list[str]:
    """Tasks offered: the paper's sweep; in smoke mode only the offline digits task (the
    sweep's datasets need downloads)."""
    return [config_lib.SMOKE_TASK] if smoke else list(PAPER_TASKS)


def is_folder_task(task: str) -> bool:
    """``task`` names a folder of images (one sub-folder per class), not a registered task:
    a path (it has a separator) or an existing folder."""
    if task in PAPER_TASKS or task == config_lib.SMOKE_TASK or is_tfds_task(task):
        return False
    return "/" in task or os.sep in task or Path(task).expanduser().is_dir()


def is_tfds_task(task: str) -> bool:
    """``task`` names a TFDS dataset: ``tfds:<name>[?train=...&val=...&test=...]``."""
    return task.strip().lower().startswith(tasks_lib.TFDS_PREFIX)


def tfds_task_name(text: str) -> str:
    """The task name for what a user typed in the TFDS field: ``tf_flowers`` ->
    ``tfds:tf_flowers``; a name that already starts with ``tfds:`` is kept."""
    text = text.strip()
    return text if is_tfds_task(text) else tasks_lib.TFDS_PREFIX + text


def _paper_recipe(task: str) -> bool:
    return task in PAPER_TASKS or is_folder_task(task) or is_tfds_task(task)


def steps_choices(task: str) -> list[int]:
    """Run lengths offered for ``task``: the paper's two (Table 4), the four of Table 4 for
    a folder of images or a TFDS dataset, or the smoke preset's."""
    if task in PAPER_TASKS:
        return list(PAPER_TASKS[task])
    if is_folder_task(task) or is_tfds_task(task):
        return sorted(tasks_lib.WARMUP_STEPS)
    smoke = config_lib.get_config("smoke").total_steps
    return sorted({20, smoke, 100})


def default_steps(task: str) -> int:
    """The shorter paper length of a sweep task; the smoke preset's length otherwise."""
    if task in PAPER_TASKS:
        return PAPER_TASKS[task][0]
    if is_folder_task(task) or is_tfds_task(task):
        return min(tasks_lib.WARMUP_STEPS)
    return config_lib.get_config("smoke").total_steps


def resolution_choices(task: str) -> list[int]:
    return list(config_lib.SWEEP_RESOLUTIONS) if _paper_recipe(task) else \
        [config_lib.get_config("smoke").resolution]


def make_config(
    *,
    checkpoint: str,
    task: str,
    resolution: int,
    lr: float,
    steps: int,
    micro_batches: int | None = None,
    workdir: str | os.PathLike | None = None,
):
    """The locked config of one run: the paper's preset for a sweep task or a folder of
    images (``task`` is then its path), the ``smoke`` preset (with these choices) for the
    offline digits task. ``workdir``: the folder under which the run gets its own
    sub-folder (named after the run)."""
    if _paper_recipe(task):
        config = config_lib.preset_for(task, steps, lr, resolution, checkpoint=checkpoint,
                                       micro_batches=micro_batches or 8)
    else:
        config = config_lib.get_config("smoke")
        config.task = task
        config.total_steps = int(steps)
        config.warmup_steps = config_lib.warmup_for(int(steps))
        config.base_lr = float(lr)
        config.resolution = int(resolution)
        config.eval_every = max(1, int(steps) // 2)
        config.checkpoint_every = config.eval_every
        if micro_batches:
            config.micro_batches = int(micro_batches)
    config.checkpoint = checkpoint
    if not checkpoint.startswith(config_lib.FAKE_CHECKPOINT_PREFIX):
        config.model = None  # read off the checkpoint
    if workdir is not None:
        config.workdir = str(Path(workdir) / config_lib.run_name(config))
    return config


def published_result(df: pd.DataFrame | None, config) -> dict[str, Any] | None:
    """The published row of the same run (upstream, task, steps, lr, resolution), or None.

    Returns {adapt_filename, adapt_final_val, adapt_final_test, source}; None when the
    checkpoint has no published name or the table has no such row (or no accuracy).
    """
    if df is None:
        return None
    try:
        up = names.parse_name(str(config.checkpoint)).upstream
        wanted = up.finetuned(config.task, config.total_steps, config.base_lr,
                              config.resolution).filename
    except ValueError:
        return None
    rows = df[df["adapt_filename"].astype(object) == wanted]
    rows = rows.dropna(subset=["adapt_final_test"])
    if rows.empty:
        return None
    row = rows.iloc[0]
    source = row["source"] if "source" in rows.columns else \
        (df.attrs.get("provenance") or {}).get("source", "index table")
    return {"adapt_filename": wanted, "adapt_final_val": float(row["adapt_final_val"]),
            "adapt_final_test": float(row["adapt_final_test"]), "source": str(source)}


def comparison_text(result_row: Mapping[str, Any], published: Mapping[str, Any] | None) -> str:
    """Own final accuracy beside the published one for the same configuration."""
    own_test = float(result_row["adapt_final_test"])
    own_val = float(result_row["adapt_final_val"])
    lines = [f"Your run: test accuracy {own_test:.2%} (val {own_val:.2%})."]
    if published is None:
        lines.append("No published number for this configuration: the index table has no "
                     "row for this checkpoint, task, steps, learning rate and resolution.")
    else:
        diff = 100 * (own_test - published["adapt_final_test"])
        lines.append(f"Published: test accuracy {published['adapt_final_test']:.2%} "
                     f"(val {published['adapt_final_val']:.2%}) — difference {diff:+.2f} "
                     f"points. Source: {published['source']}.")
    return "\n".join(lines)


def export_result_row(row: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Append ``row`` (index schema) to the CSV at ``path`` (replacing an earlier row of the
    same ``adapt_filename``); the file is rewritten atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([{c: row.get(c, math.nan) for c in COLUMNS}])
    if path.is_file() and path.stat().st_size:
        old = pd.read_csv(path)
        old = old[old["adapt_filename"] != row["adapt_filename"]]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    new.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)
    tmp.replace(path)
    return path


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Own result rows exported by the panel (empty DataFrame when there are none)."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.read_csv(path)


class _ProgressWidgets:
    """A callback drawing the run's progress into panel widgets (safe from a thread):
    a bar over the steps and a line with loss, speed and the time left at that speed.

    Until the first step is done (it compiles the training step: seconds to minutes) the
    line counts the seconds spent, so there is something to watch. The time left is the
    wall time per step measured since the first log of this session (evaluations and saves
    included, the compilation not), so a resumed run is timed by its own steps.
    """

    #: Seconds between the updates of the line while the first step compiles.
    TICK_S = 1.0

    def __init__(self, bar: w.IntProgress, label: w.HTML, on_estimate=None):
        self.bar, self.label = bar, label
        self.on_estimate = on_estimate  # called (step, seconds per step, seconds left)
        self.global_batch = 1
        self.total = 1
        self.seconds_per_step = math.nan
        self.last_loss = math.nan
        self.finished_before = False
        self._first: tuple[float, int] | None = None  # (time, step) of the first log
        self._begun = math.nan
        self._started_step = 0
        self._compiled = threading.Event()
        self._ticker: Any = None
        #: said at the end of the line from now on (Stop's "stopping after ..."), so that
        #: neither the ticker nor the next log line wipes it
        self.stop_note = ""

    def on_train_begin(self, info: dict) -> None:
        self.total, self.global_batch = info["total_steps"], info["global_batch"]
        self.bar.max = max(1, self.total)
        self.bar.value = info["start_step"]
        self.bar.bar_style = ""
        start = self._started_step = info["start_step"]
        self.finished_before = start >= self.total
        self._first, self._begun = None, time.monotonic()
        if self.finished_before:
            self.label.value = f"this run finished earlier: its {self.total:,} steps, curves " \
                               "and result"
            return
        self._compiled.clear()
        self.label.value = self._compiling_text(0.0)
        self._ticker = threading.Thread(target=self._tick, name="augreg-compile-ticker",
                                        daemon=True)
        self._ticker.start()

    def _compiling_text(self, elapsed: float) -> str:
        start = self._started_step
        where = f"step {start:,} of {self.total:,}" + (" (resumed)" if start else "")
        return (f"{where} · compiling the training step and running the first one: "
                f"{elapsed:.0f} s so far (it takes seconds to minutes; later steps are faster)"
                + self._note())

    def _note(self) -> str:
        return f" · {self.stop_note}" if self.stop_note else ""

    def _tick(self) -> None:
        while not self._compiled.wait(self.TICK_S):
            self.label.value = self._compiling_text(time.monotonic() - self._begun)

    def _first_step_done(self) -> None:
        self._compiled.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def time_left(self, step: int, now: float) -> float:
        """Seconds left at ``step``: wall time per step since the first log of this session
        times the steps left (NaN until two logs are apart)."""
        if self._first is None or step <= self._first[1]:
            return math.nan
        t0, s0 = self._first
        return (self.total - step) * (now - t0) / (step - s0)

    def on_log(self, step: int, metrics: dict) -> None:
        self._first_step_done()
        now = time.monotonic()
        self.bar.value = step
        self.last_loss = float(metrics["loss"])
        speed = metrics.get("img_per_sec", math.nan)
        text = f"step {step:,} of {self.total:,} · loss {metrics['loss']:.4f}"
        if math.isfinite(speed) and speed > 0:
            self.seconds_per_step = self.global_batch / speed
            text += f" · {speed:.1f} img/s"
        left = self.time_left(step, now)
        if not math.isfinite(left) and math.isfinite(self.seconds_per_step):
            left = (self.total - step) * self.seconds_per_step  # one log so far: its speed
        if math.isfinite(left):
            text += f" · about {duration_text(left)} left"
        if math.isfinite(self.seconds_per_step) and self.on_estimate is not None:
            self.on_estimate(step, self.seconds_per_step,
                             (self.total - step) * self.seconds_per_step)
        if self._first is None:
            self._first = (now, step)
        self.label.value = text + self._note()

    def on_eval(self, step: int, metrics: dict) -> None:
        if "val_accuracy" in metrics:
            self.label.value += f" · val {metrics['val_accuracy']:.4f}"

    def on_train_end(self, history) -> None:
        self._first_step_done()
        self.bar.value = self.bar.max
        if not self.finished_before:
            loss = f" · last loss {self.last_loss:.4f}" if math.isfinite(self.last_loss) else ""
            self.label.value = f"trained: {self.total:,} steps{loss} (saving the result ...)"

    def close(self) -> None:
        """Stop the compile ticker (the run ended before its first step)."""
        self._first_step_done()


def stop_wait_text(progress: _ProgressWidgets | None) -> str:
    """What Stop waits for: the current step, with how long a step took so far."""
    per_step = math.nan if progress is None else progress.seconds_per_step
    if progress is None or not math.isfinite(per_step):
        return ("stopping after the current step; the first step also compiles, which can "
                "take a minute or more on a CPU ...")
    return (f"stopping after the current step (a step takes about "
            f"{duration_text(per_step)} here) ...")


def folder_summary(path: str | os.PathLike, *, check_limit: int = 5000) -> dict[str, Any]:
    """What a folder of images holds as a task, before any run: its classes, the images
    per split (as :func:`augreg_nb.tasks.folder_task` splits them) and the files that cannot
    be read as images (opened and verified with PIL; the first ``check_limit`` only).

    Returns {classes, per_split: {split: count}, unreadable: [path], checked, layout}.
    """
    from PIL import Image

    task = tasks_lib.folder_task(path)
    files = task.folder.files
    unreadable, checked = [], 0
    for split in ("train", "val", "test"):
        for file, _ in files.get(split, ()):
            if checked >= check_limit:
                break
            checked += 1
            try:
                with Image.open(file) as image:
                    image.verify()
            except Exception:  # any reason PIL cannot read it
                unreadable.append(file)
    return {"classes": list(task.class_names), "layout": task.folder.layout,
            "per_split": {k: len(v) for k, v in files.items()},
            "unreadable": unreadable, "checked": checked,
            "total": sum(len(v) for v in files.values())}


def folder_summary_html(path: str | os.PathLike) -> str:
    """:func:`folder_summary` as a short note (or the reason the folder is no task)."""
    try:
        info = folder_summary(path)
    except (OSError, ValueError) as err:
        return message_html(str(err), "error", title="This folder is no image task")
    classes = info["classes"]
    shown = ", ".join(classes[:8]) + (f", ... ({len(classes) - 8} more)"
                                       if len(classes) > 8 else "")
    splits = ", ".join(f"{split} {n:,}" for split, n in info["per_split"].items())
    lines = [f"{len(classes)} classes: {shown}",
             f"images per split: {splits} ({info['layout']} layout)"]
    bad = info["unreadable"]
    checked = (f"of the first {info['checked']:,} checked" if info["checked"] < info["total"]
               else f"of {info['checked']:,}")
    if bad:
        names = ", ".join(os.path.relpath(f, path) for f in bad[:5])
        lines.append(f"unreadable files {checked}: {len(bad)} ({names}"
                     f"{', ...' if len(bad) > 5 else ''}); the run skips them")
    else:
        lines.append(f"unreadable files {checked}: none")
    return message_html("\n".join(lines), "warning" if bad else "note",
                        title=f"Folder {Path(path).name}")


def _on_cpu() -> bool:
    import jax

    return jax.default_backend() == "cpu"


class FinetunePanel:
    """Checkpoint, task, resolution, learning rate and steps; Start and Stop; live plot;
    Export.

    Start runs :func:`augreg_nb.train.finetune` in a background thread, so the notebook
    stays responsive and Stop (or interrupting the kernel) can end the run after the current
    step, with its state saved: pressing Start again resumes it. Pressing Start on a finished
    run shows its curves and result; choosing another configuration clears them first.
    ``panel.wait()`` blocks until the run is over (scripts and tests).
    """

    def __init__(self, df: pd.DataFrame | None, *, workdir: str | os.PathLike = "augreg_runs",
                 results_csv: str | os.PathLike = "augreg_results.csv", smoke: bool = False,
                 checkpoint: str | None = None, task: str | None = None,
                 resolution: int | None = None, lr: float | None = None,
                 steps: int | None = None, micro_batches: int | None = None,
                 temporary_workdir: bool = False):
        self.df = df
        #: ``workdir`` is removed with the kernel (smoke mode's temporary folder): Export
        #: then names no checkpoint file as a result, since it would not outlive the session.
        self.temporary_workdir = temporary_workdir
        self.workdir = Path(workdir)
        self.results_csv = Path(results_csv)
        self.smoke = smoke
        self.result: Any = None
        self.stopped: Any = None  #: the TrainingStopped of the last run, if it was stopped
        self.published: dict | None = None
        self.figure: Any = None
        self.library_output = ""  #: what the libraries printed during the last run
        self._thread: Any = None
        self._stop: Any = None
        self._shown_run: str | None = None  # workdir whose curves/result are on show
        self._measured: set[str] = set()  # runs whose duration was already announced
        self._progress: _ProgressWidgets | None = None  # the running run's progress line
        self._measuring = False
        self.estimate: tuple[int, float, float] | None = None  #: (step, s/step, s left)
        self.messages = MessageArea()
        ckpts = checkpoint_choices(df, smoke=smoke)
        if checkpoint and checkpoint not in [c[1] for c in ckpts]:
            ckpts.insert(0, (checkpoint, checkpoint))
        tasks = task_choices(smoke=smoke)
        self.checkpoint = dropdown("Checkpoint", ckpts, checkpoint or ckpts[0][1],
                                   width=FULL_WIDTH)
        self.task = dropdown("Task", tasks, task or tasks[0])
        self.resolution = dropdown("Resolution", resolution_choices(self.task.value),
                                   resolution)
        self.lr = dropdown("Learning rate", list(tasks_lib.LEARNING_RATES),
                           lr if lr is not None else (0.03 if smoke else 0.003))
        self.steps = dropdown("Steps", steps_choices(self.task.value),
                              steps or default_steps(self.task.value))
        if micro_batches is None:
            micro_batches = config_lib.get_config("smoke").micro_batches if smoke else 8
        self.micro_batches = w.BoundedIntText(value=micro_batches, min=1, max=512,
                                              description="Micro-batches",
                                              style={"description_width": "initial"},
                                              layout=w.Layout(width="auto"))
        # Read when Enter is pressed or the field is left: each value scans the folder.
        self.folder = w.Text(value="", description="or a folder of images",
                             placeholder="path/to/images with one sub-folder per class",
                             continuous_update=False,
                             style={"description_width": "initial"},
                             layout=w.Layout(width=FULL_WIDTH,
                                             display="none" if smoke else None))
        # Any TFDS dataset; hidden in smoke mode like the folder (both need downloads).
        self.tfds = w.Text(value="", description="or a TFDS dataset",
                           placeholder="tf_flowers, or tf_flowers?train=train[:80%]"
                                       "&val=train[80%:90%]&test=train[90%:]",
                           continuous_update=False, style={"description_width": "initial"},
                           layout=w.Layout(width=FULL_WIDTH,
                                           display="none" if smoke else None))
        self.preset = w.HTML()
        self.folder_info = w.HTML()  # what a folder of images holds, before Start
        self.start_button = w.Button(description="Start fine-tuning", icon="play",
                                     button_style="success")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="warning",
                                    disabled=True,
                                    tooltip="stop after the current step; Start resumes")
        self.export_button = w.Button(description="Export result", icon="save",
                                      disabled=True)
        self.bar = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width=FULL_WIDTH))
        self.bar_label = w.HTML()
        # Hidden while empty: an Image without a picture is a broken-image icon.
        self.plot = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto",
                                                          display="none"))
        self.summary = w.HTML()
        self.details = w.HTML()
        self.task.observe(self._on_task, names="value")
        self.folder.observe(self._on_task, names="value")
        self.tfds.observe(self._on_task, names="value")
        for widget in (self.checkpoint, self.resolution, self.lr, self.steps,
                       self.micro_batches):
            widget.observe(self._on_change, names="value")
        self.start_button.on_click(self._on_start)
        self.stop_button.on_click(self._on_stop)
        self.export_button.on_click(self._on_export)
        wrap = w.Layout(flex_flow="row wrap", max_width="100%")
        self.widget = w.VBox([
            self.checkpoint,
            w.HBox([self.task, self.resolution, self.lr, self.steps, self.micro_batches],
                   layout=wrap),
            self.folder,
            self.folder_info,
            self.tfds,
            self.preset,
            w.HBox([self.start_button, self.stop_button, self.export_button], layout=wrap),
            self.bar, self.bar_label, self.plot, self.summary, self.messages.widget,
            self.details,
        ], layout=w.Layout(max_width="100%"))
        self._on_change()
        self._add_timm_export()

    def _add_timm_export(self) -> None:
        """"Export for timm" beside "Export result", enabled with it: the finished run as a
        folder timm and the Hugging Face Hub load, ``<run folder>/timm``
        (:func:`augreg_nb.timm_export.export_run`)."""
        self.timm_export = None  #: the last TimmExport
        self.timm_button = w.Button(description="Export for timm", icon="share-square",
                                    disabled=True, tooltip="model.safetensors, config.json "
                                    "and a model card, for timm and the Hugging Face Hub")
        w.dlink((self.export_button, "disabled"), (self.timm_button, "disabled"))
        row = next(b for b in self.widget.children
                   if isinstance(b, w.HBox) and self.export_button in b.children)
        row.children = (*row.children, self.timm_button)

        @guarded(self.messages, "Exporting for timm")
        def export():
            from augreg_nb.timm_export import export_run

            if self.result is None:
                raise RuntimeError("nothing to export yet: press Start and let the run finish")
            out = export_run(self.result.workdir, Path(self.result.workdir) / "timm")
            self.timm_export = out
            self.messages.show(
                f"{out.folder}: timm's {out.architecture}, {out.num_classes} classes\nload it "
                f"with timm.create_model(\"local-dir:{out.folder}\", pretrained=True); upload "
                "it with augreg_nb.timm_export.push_to_hub(folder, repo_id)", "info",
                title="Exported for timm")

        self.timm_button.on_click(lambda _button: export())

    @classmethod
    def for_session(cls, session, **choices) -> FinetunePanel:
        """The panel for a notebook :class:`~augreg_nb.notebook.Session`: its index, run
        folder and results file; in smoke mode the smoke preset's choices replace
        ``choices`` (checkpoint, task, resolution, lr, steps, micro_batches)."""
        smoke_env = getattr(session, "smoke_env", None)
        kwargs = {"workdir": session.workdir, "results_csv": session.results_csv,
                  "smoke": session.smoke,
                  "temporary_workdir": bool(smoke_env is not None and smoke_env.owns_root
                                            and smoke_env.root in Path(session.workdir).parents)}
        if not session.smoke:
            kwargs.update(choices)
        return cls(session.index, **kwargs)

    # -- state ---------------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        """The task a run uses: the image folder or the TFDS dataset when one is given
        (``tfds:<name>``), else the chosen task."""
        folder, dataset = self.folder.value.strip(), self.tfds.value.strip()
        if folder:
            return str(Path(folder).expanduser())
        return tfds_task_name(dataset) if dataset else self.task.value

    def config(self):
        """The config the Start button runs now."""
        folder = self.folder.value.strip()
        if folder and not Path(folder).expanduser().is_dir():
            raise ValueError(f"{folder!r} is not a folder: give a folder of images with one "
                             "sub-folder per class (e.g. flowers/daisy/*.jpg, "
                             "flowers/roses/*.jpg), or clear the field to use the Task")
        if folder and self.tfds.value.strip():
            raise ValueError("both a folder of images and a TFDS dataset are given: clear "
                             "one of the two fields")
        if self.tfds.value.strip():
            # Resolve it now: an unknown or unprepared dataset is reported before Start.
            try:
                tasks_lib.get_task(self.task_name)
            except tasks_lib.DatasetNotReadyError as err:
                raise ValueError(str(err)) from err
        return make_config(checkpoint=self.checkpoint.value, task=self.task_name,
                           resolution=self.resolution.value, lr=self.lr.value,
                           steps=self.steps.value, micro_batches=self.micro_batches.value,
                           workdir=self.workdir)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def history(self) -> pd.DataFrame:
        """The finished run's metrics per logged/evaluated step (empty before a run)."""
        if self.result is None:
            return pd.DataFrame(columns=["step"])
        return self.result.history

    def _on_task(self, change=None) -> None:
        folder = self.folder.value.strip()
        task = (self.task.value if folder and not Path(folder).expanduser().is_dir()
                else self.task_name)
        steps, res = steps_choices(task), resolution_choices(task)
        set_options(self.steps, steps,
                    keep=self.steps.value if self.steps.value in steps else default_steps(task))
        set_options(self.resolution, res)
        self.folder_info.value = ""
        if folder and is_folder_task(task):
            self.folder_info.value = folder_summary_html(task)
        self._on_change()

    def _on_change(self, change=None) -> None:
        try:
            c = self.config()
            config_lib.validate(c)
        except ValueError as err:
            if not self.running:
                self.clear_run()  # the curves and result on show belong to another choice
            self.messages.error(err, "Setting up the run")
            self.start_button.disabled = True
            return
        if not self.running and self._shown_run not in (None, c.workdir):
            self.clear_run()  # another run folder: its curves, result and Export are not these
        if not self.running:
            self.messages.clear()
            self.start_button.disabled = False
        self.published = published_result(self.df, c)
        pub = (f"published test accuracy of this run: {self.published['adapt_final_test']:.2%}"
               if self.published else "no published number for this run")
        self.preset.value = (
            f"<small>Recipe: {c.total_steps:,} steps ({c.warmup_steps} warm-up), batch "
            f"{c.global_batch} in {c.micro_batches} micro-batches, SGD momentum "
            f"{c.momentum}, peak lr {c.base_lr:g}, cosine decay, {c.resolution} px; "
            f"{pub}.<br>Run folder: {c.workdir}</small>")

    # -- actions -------------------------------------------------------------------------
    def _show_figure(self, figure) -> None:
        self.figure = figure
        self.plot.value = figure_png(figure)
        self.plot.layout.display = None

    def clear_run(self) -> None:
        """Remove the shown run's curves, progress and result (another run comes next)."""
        self.result = self.stopped = self.figure = None
        self.plot.value = b""
        self.plot.layout.display = "none"
        self.summary.value = self.bar_label.value = self.details.value = ""
        self.bar.value, self.bar.bar_style = 0, ""
        self.export_button.disabled = True
        self._shown_run = None

    def _on_start(self, _button=None) -> None:
        @guarded(self.messages, "Fine-tuning")
        def start():
            if self.running:
                raise RuntimeError("a run is going on: wait for it, or press Stop")
            config = self.config()
            config_lib.validate(config)
            if self._shown_run != config.workdir:
                self.clear_run()
            self.summary.value = self.details.value = ""
            quiet_libraries()
            self._stop = StopFlag()
            # On a CPU a paper run takes hours: measure a step first and say how long.
            self._measuring = (_paper_recipe(config.task) and _on_cpu()
                               and config.workdir not in self._measured)
            if self._measuring:
                config.log_every = 1  # a measured step as early as possible
                self.messages.show(
                    "measuring a step on this CPU before the run goes on: the estimate comes "
                    "after the second step (the first one also compiles; the line above "
                    "counts its seconds) ...", "note")
            else:
                self.messages.show(f"fine-tuning {config.checkpoint} on {config.task} ...",
                                   "note")
            self.start_button.disabled = self.export_button.disabled = True
            self.stop_button.disabled = False
            captured = ThreadOutput()
            self._thread = threading.Thread(target=self._run, args=(config, captured),
                                            name="augreg-finetune", daemon=True)
            captured.install(self._thread)
            stop_on_kernel_interrupt(self)
            self._thread.start()

        start()

    def _run(self, config, captured) -> None:
        """The run itself (in the background thread)."""
        self._shown_run = config.workdir
        progress = self._progress = _ProgressWidgets(self.bar, self.bar_label,
                                                     on_estimate=self._on_estimate)
        try:
            result = finetune(config, callbacks=[
                progress, LivePlot(display=self._show_figure), self._stop])
            self._finished(config, result, progress)
        except TrainingStopped as stop:
            progress.close()
            self.stopped = stop
            self.bar.bar_style = "warning"
            self.bar.value = stop.step
            self.bar_label.value = f"stopped at step {stop.step:,} of {stop.total_steps:,}"
            if self._stop.reason == "estimate" and self.estimate is not None:
                self._measured.add(config.workdir)
                _, per_step, left = self.estimate
                self.messages.show(
                    f"On this CPU one step takes {duration_text(per_step)}: the whole run "
                    f"needs about {duration_text(left)} more. Start continues it from step "
                    f"{stop.step:,} (the state is saved); a GPU or TPU runtime is much "
                    "faster.", "warning", title="How long this run takes here")
            else:
                self.messages.show(
                    f"stopped at step {stop.step:,} of {stop.total_steps:,}; Start resumes "
                    f"(the state is saved in {stop.state_path})", "warning", title="Stopped")
        except Exception as err:  # shown in the panel; the thread has no caller to tell
            # Also after the last step (saving the result or the export can fail): the bar
            # and its line never say "done" for a run that raised.
            progress.close()
            self.result = None
            self.export_button.disabled = True
            self.summary.value = ""
            self.bar.bar_style = "danger"
            self.bar_label.value = (f"failed at step {self.bar.value:,} of {self.bar.max:,}: "
                                    "see the message below")
            self.messages.error(err, "Fine-tuning")
        finally:
            self._progress = None
            show_library_messages(self, captured)
            self.start_button.disabled = False
            self.stop_button.disabled = True

    def _finished(self, config, result, progress: _ProgressWidgets) -> None:
        published = published_result(self.df, config)
        last = result.history.tail(1).dropna(axis=1, how="all")
        summary = message_html(comparison_text(result.result_row, published), "info",
                               title="Final accuracy") + table_html(last)
        # Everything is computed: only now does the panel say the run finished.
        self.result, self.published = result, published
        if not progress.finished_before:
            loss = progress.last_loss
            self.bar_label.value = f"done: {progress.total:,} steps" + (
                f" · last loss {loss:.4f}" if math.isfinite(loss) else "")
        self.bar.bar_style = "success"
        self.messages.show(f"finished: {result.workdir}", "info")
        self.summary.value = summary
        self.export_button.disabled = False

    def _on_estimate(self, step: int, per_step: float, left: float) -> None:
        """After the first measured step of a CPU run: stop it, to say how long it takes."""
        if self._measuring and self._stop is not None and not self._stop.stop_requested:
            self.estimate = (step, per_step, left)
            self._measuring = False
            if left > LONG_RUN_S:  # a short run just goes on
                self._stop.request("estimate")

    def stop(self, reason: str = "Stop pressed") -> None:
        """End the running run after its current step (its state is saved); the progress
        line says how long that step may still take."""
        if self.running and self._stop is not None:
            self._stop.request(reason)
            self.stop_button.disabled = True
            note = f"{reason}: {stop_wait_text(self._progress)}"
            if self._progress is not None:
                self._progress.stop_note = note
            self.bar_label.value += f" · {note}"

    def _on_stop(self, _button=None) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is over. An interrupt (Ctrl-C, the kernel's stop button)
        while waiting stops the run after its current step instead of raising."""
        wait_for(self, self._thread, timeout)

    def _on_export(self, _button=None) -> None:
        @guarded(self.messages, "Exporting")
        def run():
            if self.result is None:
                raise RuntimeError("nothing to export yet: press Start and let the run finish")
            path = export_result_row(self.result.result_row, self.results_csv)
            npz = self.result.export_path
            if self.temporary_workdir:  # the run folder goes with the kernel
                where = ("not kept: in smoke mode the run folder is a temporary folder that "
                         "is removed when the kernel stops (a real run keeps it in its run "
                         "folder)")
            else:
                where = str(npz) if npz else "not exported (config.export is off)"
            self.messages.show(
                f"result row appended to {path}\ncheckpoint (published .npz layout): {where}",
                "info", title="Exported")

        run()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
