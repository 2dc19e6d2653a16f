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
``stop`` (a :class:`threading.Event`) ends the grid after the current run's next log step.
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
from augreg_nb.callbacks import Callback
from augreg_nb.index import COLUMNS
from augreg_nb.train import finetune

#: The paper's regularisation of the sweep: dropout = stochastic depth = 0.1 ("reg 0.1").
REG_RATE = 0.1
#: Start of a run from random initialisation.
SCRATCH = "scratch"


class GridStopped(Exception):
    """Raised inside a run when the grid's stop event is set (the run's state is kept)."""


class _StopCheck(Callback):
    def __init__(self, stop: threading.Event):
        self.stop = stop

    def on_log(self, step: int, metrics: dict) -> None:
        if self.stop.is_set():
            raise GridStopped(f"stopped at step {step}")


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

    @classmethod
    def empty(cls) -> GridResult:
        """The result of a grid with no finished run yet."""
        return _result([], {}, stopped=False)


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
) -> GridResult:
    """Run ``configs`` one after the other with :func:`augreg_nb.train.finetune`.

    ``callbacks(config)`` gives each run's callbacks (progress bars, live plots); ``on_run
    (i, n, config, row)`` is called before run i (row None) and after it (its row). When
    ``stop`` is set the current run stops at its next log step (its last saved state stays
    for a rerun) and the runs that finished are returned with ``stopped=True``.
    """
    stop = stop or threading.Event()
    rows, histories = [], {}
    for i, config in enumerate(configs):
        if stop.is_set():
            return _result(rows, histories, stopped=True)
        if on_run:
            on_run(i, len(configs), config, None)
        extra = list(callbacks(config)) if callbacks else []
        t0 = time.perf_counter()
        try:
            result = finetune(config, callbacks=[*extra, _StopCheck(stop)])
        except GridStopped:
            return _result(rows, histories, stopped=True)
        row = _row(config, result, time.perf_counter() - t0)
        history = result.history.copy()
        history["images_seen"] = history["step"] * int(config.global_batch)
        histories[row["adapt_filename"]] = history
        rows.append(row)
        if on_run:
            on_run(i, len(configs), config, row)
    return _result(rows, histories, stopped=False)


def _result(rows, histories, *, stopped: bool) -> GridResult:
    cols = [*COLUMNS, "start", "reg", "images_seen", "seconds"]
    return GridResult(pd.DataFrame(rows, columns=cols), histories, stopped)


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
