"""The fine-tuning panel of notebook 2: pick a run of the paper's sweep, start it, watch it.

The pure functions build what the panel runs and shows::

    from augreg_nb.widgets.finetune_panel import FinetunePanel, make_config, published_result

    config = make_config(checkpoint="Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
                         task="oxford_iiit_pet", resolution=224, lr=0.003, steps=500)
    published_result(index_df, config)    # the published accuracy of this run, if known

    panel = FinetunePanel(index_df, workdir="runs", results_csv="augreg_results.csv")
    panel                                  # displays it; nothing runs until Start is pressed
    panel.start_button.click()             # fine-tunes with a progress bar and a live plot
    panel.export_button.click()            # appends the result row to results_csv

The run is :func:`augreg_nb.train.finetune` with the paper's recipe
(:func:`augreg_nb.config.preset_for`: warm-up from the paper's Table 4, batch 512, SGD with
momentum); ``micro_batches`` splits each step so it fits the accelerator's memory without
changing the result. The run's folder keeps its state, so pressing Start again after an
interruption resumes it. In smoke mode the choices are the ``smoke`` preset's: a tiny model
from a fake checkpoint on the digits shipped with the package.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb import names
from augreg_nb import tasks as tasks_lib
from augreg_nb.callbacks import LivePlot, ProgressBar
from augreg_nb.index import COLUMNS
from augreg_nb.train import finetune
from augreg_nb.widgets.common import (
    MessageArea,
    dropdown,
    guarded,
    message_html,
    run_in_output,
    set_options,
    show_figure,
    table_html,
)
from augreg_nb.widgets.index_browser import recommended_files

#: The tasks of the paper's sweep, with their run lengths (steps).
PAPER_TASKS: dict[str, tuple[int, ...]] = {
    name: tasks_lib.get_task(name).sweep_steps for name in tasks_lib.list_tasks()
}
SMOKE_CHECKPOINT = config_lib.FAKE_CHECKPOINT_PREFIX + "testing"


def checkpoint_choices(df: pd.DataFrame | None, *, smoke: bool = False) -> list[tuple[str, str]]:
    """(label, checkpoint) choices: the recommended upstream of each model (★), then the
    other upstream checkpoints of the table; in smoke mode the fake test model first."""
    out: list[tuple[str, str]] = []
    if smoke:
        out.append(("fake tiny test model (smoke mode)", SMOKE_CHECKPOINT))
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
    """Tasks offered: the paper's sweep; in smoke mode the offline digits task first."""
    return ([config_lib.SMOKE_TASK] if smoke else []) + list(PAPER_TASKS)


def steps_choices(task: str) -> list[int]:
    """Run lengths offered for ``task``: the paper's two (Table 4), or the smoke preset's."""
    if task in PAPER_TASKS:
        return list(PAPER_TASKS[task])
    smoke = config_lib.get_config("smoke").total_steps
    return sorted({20, smoke, 100})


def default_steps(task: str) -> int:
    """The shorter paper length of a sweep task; the smoke preset's length otherwise."""
    if task in PAPER_TASKS:
        return PAPER_TASKS[task][0]
    return config_lib.get_config("smoke").total_steps


def resolution_choices(task: str) -> list[int]:
    return [config_lib.get_config("smoke").resolution] if task not in PAPER_TASKS else \
        list(config_lib.SWEEP_RESOLUTIONS)


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
    """The locked config of one run: the paper's preset for a sweep task, the ``smoke``
    preset (with these choices) for the offline digits task. ``workdir``: the folder
    under which the run gets its own sub-folder (named after the run)."""
    if task in PAPER_TASKS:
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


class FinetunePanel:
    """Checkpoint, task, resolution, learning rate and steps; Start; live plot; Export."""

    def __init__(self, df: pd.DataFrame | None, *, workdir: str | os.PathLike = "augreg_runs",
                 results_csv: str | os.PathLike = "augreg_results.csv", smoke: bool = False,
                 checkpoint: str | None = None, task: str | None = None,
                 resolution: int | None = None, lr: float | None = None,
                 steps: int | None = None, micro_batches: int | None = None):
        self.df = df
        self.workdir = Path(workdir)
        self.results_csv = Path(results_csv)
        self.smoke = smoke
        self.result: Any = None
        self.published: dict | None = None
        self.figure: Any = None
        self.messages = MessageArea()
        ckpts = checkpoint_choices(df, smoke=smoke)
        if checkpoint and checkpoint not in [c[1] for c in ckpts]:
            ckpts.insert(0, (checkpoint, checkpoint))
        tasks = task_choices(smoke=smoke)
        self.checkpoint = dropdown("Checkpoint", ckpts, checkpoint or ckpts[0][1],
                                   width="100%")
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
        self.preset = w.HTML()
        self.start_button = w.Button(description="Start fine-tuning", icon="play",
                                     button_style="success")
        self.export_button = w.Button(description="Export result", icon="save",
                                      disabled=True)
        self.progress = w.Output()
        self.plot = w.Output()
        self.summary = w.HTML()
        self.task.observe(self._on_task, names="value")
        for widget in (self.checkpoint, self.resolution, self.lr, self.steps,
                       self.micro_batches):
            widget.observe(self._on_change, names="value")
        self.start_button.on_click(self._on_start)
        self.export_button.on_click(self._on_export)
        self.widget = w.VBox([
            self.checkpoint,
            w.HBox([self.task, self.resolution, self.lr, self.steps, self.micro_batches],
                   layout=w.Layout(flex_flow="row wrap")),
            self.preset,
            w.HBox([self.start_button, self.export_button]),
            self.progress, self.plot, self.summary, self.messages.widget,
        ])
        self._on_change()

    @classmethod
    def for_session(cls, session, **choices) -> FinetunePanel:
        """The panel for a notebook :class:`~augreg_nb.notebook.Session`: its index, run
        folder and results file; in smoke mode the smoke preset's choices replace
        ``choices`` (checkpoint, task, resolution, lr, steps, micro_batches)."""
        kwargs = {"workdir": session.workdir, "results_csv": session.results_csv,
                  "smoke": session.smoke}
        if not session.smoke:
            kwargs.update(choices)
        return cls(session.index, **kwargs)

    # -- state ---------------------------------------------------------------------------
    def config(self):
        """The config the Start button runs now."""
        return make_config(checkpoint=self.checkpoint.value, task=self.task.value,
                           resolution=self.resolution.value, lr=self.lr.value,
                           steps=self.steps.value, micro_batches=self.micro_batches.value,
                           workdir=self.workdir)

    @property
    def history(self) -> pd.DataFrame:
        """The finished run's metrics per logged/evaluated step (empty before a run)."""
        if self.result is None:
            return pd.DataFrame(columns=["step"])
        return self.result.history

    def _on_task(self, change=None) -> None:
        task = self.task.value
        steps, res = steps_choices(task), resolution_choices(task)
        set_options(self.steps, steps,
                    keep=self.steps.value if self.steps.value in steps else default_steps(task))
        set_options(self.resolution, res)
        self._on_change()

    def _on_change(self, change=None) -> None:
        try:
            c = self.config()
            config_lib.validate(c)
        except ValueError as err:
            self.messages.error(err, "Setting up the run")
            self.start_button.disabled = True
            return
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
        with self.plot:
            self.plot.clear_output(wait=True)
            show_figure(figure)

    def _on_start(self, _button=None) -> None:
        @guarded(self.messages, "Fine-tuning")
        def run():
            config = self.config()
            self.start_button.disabled = True
            self.export_button.disabled = True
            self.summary.value = ""
            self.messages.show(f"fine-tuning {config.checkpoint} on {config.task} ...", "note")
            try:
                self.progress.clear_output()
                result = run_in_output(self.progress, finetune, config, callbacks=[
                    ProgressBar(), LivePlot(display=self._show_figure)])
            finally:
                self.start_button.disabled = False
            self.result = result
            self.published = published_result(self.df, config)
            self.messages.show(f"finished: {result.workdir}", "info")
            last = result.history.tail(1).dropna(axis=1, how="all")
            self.summary.value = message_html(
                comparison_text(result.result_row, self.published), "info",
                title="Final accuracy") + table_html(last)
            self.export_button.disabled = False

        run()

    def _on_export(self, _button=None) -> None:
        @guarded(self.messages, "Exporting")
        def run():
            if self.result is None:
                raise RuntimeError("nothing to export yet: press Start and let the run finish")
            path = export_result_row(self.result.result_row, self.results_csv)
            npz = self.result.export_path
            self.messages.show(
                f"result row appended to {path}\ncheckpoint (published .npz layout): "
                f"{npz if npz else 'not exported (config.export is off)'}", "info",
                title="Exported")

        run()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
