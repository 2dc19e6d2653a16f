"""Small AugReg grids on your data: settings x starts, run one after the other, resumably.

A grid crosses augmentation settings (by the names checkpoints carry), regularisation off /
on (dropout = stochastic depth = 0.1, the paper's "reg 0.1") and starts (from scratch with
the upstream recipe, or from a checkpoint with the transfer recipe), on one task::

    from augreg_nb.grid import grid_configs, run_grid
    configs = grid_configs("augreg-smoke", augs=("none", "light1", "medium2"),
                           regs=(False, True), starts=("scratch", "fake:testing"),
                           root="runs/grid")
    result = run_grid(configs)              # GridResult: rows (index schema) and histories
    result.rows[["filename", "aug", "do", "sd", "adapt_final_test"]]

Every run has its own folder under ``root`` (:func:`augreg_nb.config.run_name`), so a grid
that was stopped continues where it stopped; finished runs answer from their saved state.
``stop`` (a :class:`threading.Event`) ends the grid after the current run's current step
(its state is saved). ``result.outcomes`` says of every run whether it is done, failed (with
the reason) or stopped; by default a failing run raises, ``on_error="continue"`` records it
and goes on with the next run (the panel of notebook 5 does so)::

    result = run_grid(configs, on_error="continue")
    result.summary()                        # "3 done, 1 failed"
    [(o.name, o.status, o.reason) for o in result.outcomes]

Before a grid, :func:`check_dataset` reads what the task offers (classes, images per split,
unreadable images) or says how to prepare it, and :func:`batch_for` fits the batch to it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from augreg_nb import config as config_lib
from augreg_nb import names
from augreg_nb import tasks as tasks_lib
from augreg_nb.callbacks import Callback
from augreg_nb.index import COLUMNS
from augreg_nb.train import TrainingStopped, finetune

#: The paper's regularisation of the sweep: dropout = stochastic depth = 0.1 ("reg 0.1").
REG_RATE = 0.1
#: Start of a run from random initialisation.
SCRATCH = "scratch"


#: What a run of a grid can end as.
DONE, FAILED, STOPPED = "done", "failed", "stopped"


class _StopCheck(Callback):
    """Asks :func:`finetune` to stop after the current step once ``stop`` is set (the run
    saves its state and raises :class:`augreg_nb.train.TrainingStopped`)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    @property
    def stop_requested(self) -> bool:
        return self.stop.is_set()


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How one run of a grid ended: ``status`` is "done", "failed" (``reason``: the error's
    message) or "stopped" (``reason``: at which step, or that it had not started)."""

    name: str  # the run's folder name (augreg_nb.config.run_name)
    status: str
    reason: str = ""
    test_accuracy: float | None = None
    seconds: float = 0.0


def grid_configs(
    preset: str,
    *,
    augs: Sequence[str] = ("none", "light1", "medium2"),
    regs: Sequence[bool] = (False, True),
    starts: Sequence[str] = (SCRATCH,),
    root: str | Path | None = None,
    transfer_preset: str | None = None,
    overrides: Iterable[str] = (),
) -> list:
    """The locked configs of a grid, scratch runs first.

    ``preset`` gives the from-scratch runs (an augreg preset such as "augreg-smoke" or
    "augreg-pets-scratch"); a start other than "scratch" is a checkpoint (a model name,
    checkpoint name, file or "fake:<model>") trained with ``transfer_preset`` (default: the
    preset itself with the transfer recipe and no weight decay). ``overrides`` are
    ``key=value`` strings applied to every run (as ``--set``).
    """
    configs = []
    for start in starts:
        for aug in augs:
            for reg in regs:
                scratch = config_lib.is_scratch(start)
                c = config_lib.get_config(preset if scratch or transfer_preset is None
                                          else transfer_preset)
                config_lib.apply_overrides(c, overrides)
                c.aug, c.do, c.sd = aug, REG_RATE if reg else 0.0, REG_RATE if reg else 0.0
                if not scratch:
                    c.checkpoint = start
                    if transfer_preset is None:
                        c.recipe, c.wd = "transfer", 0.0
                    if not start.startswith(config_lib.FAKE_CHECKPOINT_PREFIX):
                        c.model = None  # read off the checkpoint
                if root is not None:
                    # One folder per run, safe whatever the task's name (config.run_name).
                    c.workdir = str(Path(root) / config_lib.run_name(c))
                config_lib.validate(c)
                configs.append(c)
    return configs


@dataclasses.dataclass
class GridResult:
    """The runs of a grid that finished: one index-schema row each (``aug``, ``wd``,
    ``do``, ``sd``: the run's own settings, from either start), plus columns ``start``
    ("scratch" or "checkpoint"), ``reg``, ``images_seen``, ``seconds`` and their histories
    (``histories[adapt_filename]``: the run's metrics per step, with ``images_seen``)."""

    rows: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    stopped: bool = False
    outcomes: list[RunOutcome] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls) -> GridResult:
        """The result of a grid with no finished run yet."""
        return _result([], {}, stopped=False)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    def counts(self) -> dict[str, int]:
        """{"done": n, "failed": n, "stopped": n} over the grid's runs."""
        return {s: sum(o.status == s for o in self.outcomes) for s in (DONE, FAILED, STOPPED)}

    def summary(self) -> str:
        """``"2 done, 1 failed, 1 stopped"`` (statuses with no run left out)."""
        parts = [f"{n} {status}" for status, n in self.counts().items() if n]
        return ", ".join(parts) or "no runs"


def _row(config, result, seconds: float) -> dict:
    row = dict(result.result_row)
    # The run's own settings (a plain transfer run's row would describe its upstream).
    row.update(aug=config_lib.index_aug(config.aug), wd=float(config.wd), do=float(config.do),
               sd=float(config.sd))
    row["start"] = SCRATCH if config_lib.is_scratch(config.checkpoint) else "checkpoint"
    row["reg"] = bool(config.do or config.sd)
    row["images_seen"] = int(config.total_steps) * int(config.global_batch)
    row["seconds"] = seconds
    return row


def run_grid(
    configs: Sequence,
    *,
    callbacks: Callable[[Any], list] | None = None,
    stop: threading.Event | None = None,
    on_run: Callable[[int, int, Any, dict | None], None] | None = None,
    on_outcome: Callable[[int, int, RunOutcome, GridResult], None] | None = None,
    on_error: str = "raise",
) -> GridResult:
    """Run ``configs`` one after the other with :func:`augreg_nb.train.finetune`.

    ``callbacks(config)`` gives each run's callbacks (progress bars, live plots); ``on_run
    (i, n, config, row)`` is called before run i (row None) and after it finished (its row);
    ``on_outcome(i, n, outcome, so_far)`` after every run whatever its end (``so_far``: the
    result of the runs up to this one, for figures drawn as the grid goes). When ``stop`` is set the
    current run stops after its current step (its state stays for a rerun), the runs after
    it count as stopped before they started, and the result has ``stopped=True``. A run
    that raises ends the grid with that error (``on_error="raise"``) or is recorded as
    failed, with the error's message, and the grid goes on (``"continue"``).
    """
    if on_error not in ("raise", "continue"):
        raise ValueError(f"on_error must be 'raise' or 'continue', not {on_error!r}")
    stop = stop or threading.Event()
    rows, histories, outcomes = [], {}, []

    def record(i: int, outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(i, len(configs), outcome,
                       _result(rows, dict(histories), stopped=False, outcomes=outcomes))

    for i, config in enumerate(configs):
        name = config_lib.run_name(config)
        if stop.is_set():
            for j, later in enumerate(configs[i:], start=i):
                record(j, RunOutcome(config_lib.run_name(later), STOPPED, "not started"))
            break
        if on_run:
            on_run(i, len(configs), config, None)
        t0 = time.perf_counter()
        try:
            extra = list(callbacks(config)) if callbacks else []
            result = finetune(config, callbacks=[*extra, _StopCheck(stop)])
        except TrainingStopped as err:
            record(i, RunOutcome(name, STOPPED, f"at step {err.step} of {err.total_steps}",
                                 seconds=time.perf_counter() - t0))
            continue  # the stop event is set: the later runs are recorded as not started
        except Exception as err:
            if on_error == "raise":
                raise
            record(i, RunOutcome(name, FAILED, failure_reason(err),
                                 seconds=time.perf_counter() - t0))
            continue
        row = _row(config, result, time.perf_counter() - t0)
        history = result.history.copy()
        history["images_seen"] = history["step"] * int(config.global_batch)
        histories[row["adapt_filename"]] = history
        rows.append(row)
        if on_run:
            on_run(i, len(configs), config, row)
        record(i, RunOutcome(name, DONE, test_accuracy=float(row["adapt_final_test"]),
                             seconds=row["seconds"]))
    return _result(rows, histories, stopped=any(o.status == STOPPED for o in outcomes),
                   outcomes=outcomes)


def failure_reason(err: BaseException) -> str:
    """One line a user reads for a failed run: the error's own message (ours name the
    problem and the fix), with its type when that says more (``KeyError: 'x'``)."""
    text = " ".join(str(err).split())
    if isinstance(err, (ValueError, RuntimeError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _result(rows, histories, *, stopped: bool, outcomes=()) -> GridResult:
    cols = [*COLUMNS, "start", "reg", "images_seen", "seconds"]
    return GridResult(pd.DataFrame(rows, columns=cols), histories, stopped, list(outcomes))


@dataclasses.dataclass(frozen=True)
class DatasetReport:
    """What a grid's task offers: its classes, images per split and, for a folder of
    images, the files that do not decode (they are skipped)."""

    task: str
    class_names: tuple[str, ...]
    images: dict[str, int]  # "train" / "val" / "test" -> images that can be read
    unreadable: dict[str, tuple[str, ...]]  # split -> paths that do not decode

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def text(self) -> str:
        """One line for a panel, then the unreadable files (a few, then how many more)."""
        names_ = ", ".join(self.class_names[:8]) + (", ..." if self.num_classes > 8 else "")
        splits = ", ".join(f"{n:,} {split}" for split, n in self.images.items())
        lines = [f"{self.task}: {self.num_classes} classes ({names_}); images: {splits}"]
        bad = [p for paths in self.unreadable.values() for p in paths]
        if bad:
            shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
            lines.append(f"{len(bad)} unreadable image(s) are skipped: {shown}")
        return "\n".join(lines)


def check_dataset(task_name: str, *, data_dir: str | None = None) -> DatasetReport:
    """Read what ``task_name`` (a registered task, ``tfds:<name>`` or a folder of images)
    offers before a grid runs on it. A TFDS dataset that is not prepared raises
    :class:`augreg_nb.tasks.DatasetNotReadyError` with the command that prepares it; a
    task without readable training images raises ValueError."""
    from augreg_nb import input_pipeline as ip
    from augreg_nb.task_types import tfds_builder

    task = tasks_lib.get_task(task_name, data_dir=data_dir)
    if task.folder is None and not tfds_builder(task).is_prepared():
        raise tasks_lib.DatasetNotReadyError(tasks_lib.not_ready_message(task))
    splits = ("train", "val", "test")
    images = {split: ip.num_examples(task, split) for split in splits}
    unreadable = {split: tuple(ip.unreadable_images(task, split)) if task.folder else ()
                  for split in splits}
    if not images["train"]:
        raise ValueError(f"{task_name}: no readable training images; add images to its "
                         "train split (for a folder: <folder>/<class>/*.jpg)")
    return DatasetReport(task.name, tuple(task.label_names), images, unreadable)


def batch_for(train_images: int, batch: int) -> int:
    """``batch``, or for a training split smaller than that the largest power of two that
    fits it (a step then sees each image at most once)."""
    if train_images >= batch:
        return int(batch)
    return 1 << max(0, int(train_images).bit_length() - 1)


def accuracy_table(rows: pd.DataFrame, measure: str = "adapt_final_test") -> pd.DataFrame:
    """Accuracy (%) per start (rows) and setting (columns: the paper's augmentation name,
    ", reg 0.1" for the regularised runs), as the heat map shows it."""
    if rows.empty:
        return pd.DataFrame()
    labelled = rows.assign(setting=[
        f"{names.index_to_paper_aug(a)}{', reg 0.1' if r else ''}"
        for a, r in zip(rows["aug"], rows["reg"], strict=True)])
    table = labelled.pivot_table(index="start", columns="setting", values=measure,
                                 aggfunc="mean", sort=False) * 100
    return table.round(1)
