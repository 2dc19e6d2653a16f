"""The paper's VTAB sweep for one checkpoint: 19 tasks, choose by val, report test.

    from augreg_nb.vtab_run import run_vtab
    result = run_vtab("B/16")                          # all 19 VTAB-1k tasks
    result = run_vtab("B/16", group="natural")         # or one group, or tasks=[...]
    result.table                                       # one row per task (index schema)
    result.runs                                        # every run of every task

    augreg-nb vtab --checkpoint B/16 --group structured

Per task, the runs are the paper's VTAB grid: learning rates {0.001, 0.003, 0.01, 0.03}
x {500, 2500} steps (warm-ups 100 and 200, Table 4), at one resolution, with the paper's
fine-tuning recipe (``augreg_nb.config``). Each run trains on the task's train split (VTAB-1k:
``train800``) and is evaluated on val (``val200``) and test; the run with the highest val
accuracy is the task's result and its test accuracy is the task's score. This is the
selection the sweep machinery (``augreg_nb.sweep``) makes for every task of the package.
VTAB's own protocol (task_adaptation) then trains once more with the chosen setting on
train+val (``train800val200``) and reports that run's test accuracy; the paper does not
say whether its Table 5 did. By default the reported test accuracy is the chosen run's;
``retrain=True`` (``--retrain``) adds VTAB's step.

Resolution: the paper does not state it for VTAB; the default is 384 px, the authors'
transfer config's (big_vision ``configs/transfer.py``). Pass ``resolution=224`` for a
third of the compute.

Resumable run by run: every run has its own folder and state (``augreg_nb.train``), a
finished run is read back, not repeated; ``<workdir>/vtab.csv`` holds one row per finished
task after each task, ``<workdir>/<task>/sweep.csv`` the runs of a task.

Datasets: before anything runs, every chosen task's dataset is checked. Those that need a
manual download (Resisc45, Retinopathy) and whose files are not in TFDS's manual dir stop
the call at once with the exact steps (:class:`ManualDownloadsMissing`); the others are
downloaded and prepared by TFDS when ``prepare=True`` (the default), task by task, or
reported up front with their ``tfds build`` command when ``prepare=False``.

The result rows are in the index schema (``adapt_ds`` = ``vtab1k/<task>``) with the columns
of ``EXTRA_COLUMNS`` added; ``augreg-nb figures --own <workdir>/vtab.csv``
and ``augreg_nb.figures.table5_data(own=...)`` put them next to the paper's Table 5 and
Figure 3, with the mean per group.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from augreg_nb import config as config_lib
from augreg_nb import sweep as sweep_lib
from augreg_nb import tasks as tasks_lib
from augreg_nb import vtab
from augreg_nb.download import cache_dir
from augreg_nb.resources import ENV_OFFLINE, env_flag
from augreg_nb.tasks import (
    DatasetNotReadyError,
    _missing_manual_files,
    default_manual_dir,
    get_task,
    list_tasks,
    not_ready_message,
    register_task,
    tfds_builder,
)
from augreg_nb.train import finetune

logger = logging.getLogger(__name__)

#: One row per finished task, in the run's workdir.
RESULTS_FILE = "vtab.csv"
#: The default fine-tuning resolution (see the module docstring).
DEFAULT_RESOLUTION = 384
#: Variant names accepted by :func:`run_vtab` -> registry prefix.
VARIANTS = {"1k": vtab.ONE_K, "full": vtab.FULL}
#: Columns added to the index schema in the result rows (workdir: the chosen run's folder).
EXTRA_COLUMNS = ("workdir", "vtab_task", "group", "column", "runs", "retrained",
                 "selected_test")


class ManualDownloadsMissing(DatasetNotReadyError):
    """Chosen VTAB tasks need files that must be downloaded by hand; the message says how."""


class VtabStopped(RuntimeError):
    """``should_stop()`` said stop; finished runs are kept and a rerun continues."""


@dataclasses.dataclass
class VtabResult:
    table: Any  #: pandas.DataFrame: per finished task the run chosen by val (index schema+)
    runs: Any  #: pandas.DataFrame: every run of every finished task
    workdir: Path  #: the folder of the whole sweep (``vtab.csv`` and one folder per task)
    stopped: bool = False  #: True when ``should_stop`` ended the sweep early


def select_tasks(tasks: Iterable[str] | None = None, group: str | None = None) -> tuple[str, ...]:
    """VTAB task names in Table 5 order: ``tasks`` (names as in ``vtab.SPECS``, with or
    without a ``vtab1k/`` / ``vtab/`` prefix), a ``group``, or all 19 when neither is given."""
    if tasks is not None and group is not None:
        raise ValueError("choose tasks=... or group=..., not both")
    if tasks is None:
        return vtab.names(group)
    wanted = []
    for name in tasks:
        short = name.split("/", 1)[1] if name.startswith(f"{vtab.FULL}/") or name.startswith(
            f"{vtab.ONE_K}/") else name
        if short not in vtab.SPECS:
            raise ValueError(
                f"unknown VTAB task {name!r}; use one of {', '.join(vtab.SPECS)} or a group "
                f"({', '.join(vtab.GROUPS)})")
        wanted.append(short)
    if not wanted:
        raise ValueError("no VTAB task chosen; pass task names, a group, or nothing for all 19")
    return tuple(n for n in vtab.SPECS if n in set(wanted))


def _registry_prefix(variant: str) -> str:
    if variant in VARIANTS:
        return VARIANTS[variant]
    if variant in VARIANTS.values():
        return variant
    raise ValueError(f"variant must be '1k' (VTAB-1k, the paper's) or 'full', got {variant!r}")


def dataset_status(names: Sequence[str], *, variant: str = "1k",
                   data_dir: str | None = None) -> dict[str, str]:
    """Per task: "prepared", "manual files present" (TFDS can build it), "needs download"
    (TFDS downloads it) or "manual download missing"."""
    prefix = _registry_prefix(variant)
    out = {}
    for name in names:
        task = get_task(f"{prefix}/{name}", data_dir=data_dir)
        if tfds_builder(task).is_prepared():
            out[name] = "prepared"
        elif task.manual is None:
            out[name] = "needs download"
        elif _missing_manual_files(task, default_manual_dir(task)):
            out[name] = "manual download missing"
        else:
            out[name] = "manual files present"
    return out


def check_datasets(names: Sequence[str], *, variant: str = "1k", data_dir: str | None = None,
                   prepare: bool = True) -> dict[str, str]:
    """Raise before anything runs when a chosen task cannot be read; return the status.

    Missing manual downloads always raise :class:`ManualDownloadsMissing` with the steps for
    every such task at once. Datasets TFDS can download raise ``DatasetNotReadyError`` with
    their ``tfds build`` commands only when ``prepare`` is False or AUGREG_NB_OFFLINE=1.
    """
    prefix = _registry_prefix(variant)
    status = dataset_status(names, variant=variant, data_dir=data_dir)

    def steps(which: list[str], reason: str = "") -> str:
        return "\n".join(
            f"- {n}: {not_ready_message(get_task(f'{prefix}/{n}', data_dir=data_dir), reason)}"
            for n in which)

    manual = [n for n, s in status.items() if s == "manual download missing"]
    if manual:
        raise ManualDownloadsMissing(
            f"{len(manual)} chosen VTAB task(s) need a manual download before the sweep can "
            f"start (nothing has run yet):\n{steps(manual, 'manual download')}\nOr leave them "
            "out: choose --tasks / tasks=[...] or a --group without them.")
    download = [n for n, s in status.items() if s == "needs download"]
    offline = env_flag(ENV_OFFLINE)
    if download and (offline or not prepare):
        why = f"{ENV_OFFLINE}=1 forbids downloading" if offline else "prepare=False"
        raise DatasetNotReadyError(
            f"{len(download)} chosen VTAB task(s) are not prepared and {why} (nothing has "
            f"run yet):\n{steps(download)}")
    return status


def base_config(checkpoint: str, *, resolution: int = DEFAULT_RESOLUTION,
                overrides: Iterable[str] = ()):
    """The config every VTAB run starts from: the paper's recipe, evaluated at the end only.

    ``overrides`` are ``key=value`` strings (``--set``), e.g. ``micro_batches=32``.
    """
    config = config_lib.preset_for("vtab1k/cifar100", 500, 0.01, resolution,
                                   checkpoint=checkpoint)
    config.eval_every = 0  # val and test once, at the end of each run
    config.export = False  # 152 runs: keep only the states, not 152 exported copies
    config_lib.apply_overrides(config, overrides)
    return config


def default_workdir(checkpoint: str, *, variant: str = "1k", resolution: int) -> Path:
    """``<cache>/runs/vtab-<checkpoint>-<variant>-res_<resolution>``."""
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(checkpoint).name)
    return cache_dir() / "runs" / f"vtab-{slug}-{variant}-res_{resolution}"


def task_row(best: dict, name: str, runs: int, retrained: dict | None = None) -> dict:
    """The result row of a task: its chosen run's index row plus ``EXTRA_COLUMNS``.

    With ``retrained`` (the index row of the chosen setting trained again on train+val),
    ``adapt_final_test`` is the retrained run's, ``workdir`` its folder, and
    ``selected_test`` keeps the chosen run's test accuracy; ``adapt_final_val`` stays the
    chosen run's (the retrained run has trained on val).
    """
    spec = vtab.SPECS[name]
    row = {**best, "vtab_task": name, "group": spec.group, "column": spec.column,
           "runs": runs, "retrained": retrained is not None,
           "selected_test": best["adapt_final_test"]}
    if retrained is not None:
        row.update(adapt_final_test=retrained["adapt_final_test"],
                   workdir=retrained["workdir"])
    return row


def trainval_task(task_name: str) -> str:
    """Register (once) ``<task>+val``: the task with train+val as its training split
    (VTAB-1k: ``train800val200``), for the retraining step; return its name."""
    name = f"{task_name}+val"
    if name not in list_tasks(None):
        task = get_task(task_name)
        register_task(dataclasses.replace(
            task, name=name, splits={**task.splits, "train": task.splits["trainval"]},
            description=f"{task.description}; trains on train+val"),
            suite=f"{task_name.split('/')[0]}+val")
    return name


def read_results(workdir: str | Path):
    """The task rows of a (possibly unfinished) VTAB sweep, from ``<workdir>/vtab.csv``."""
    import pandas as pd

    path = Path(workdir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no VTAB results in {path}; run augreg-nb vtab first")
    return pd.read_csv(path)


class _StopCheck:
    """Callback that ends the current run at its next log step when ``should_stop()``."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def on_log(self, step: int, metrics: dict) -> None:
        if self.should_stop():
            raise VtabStopped(f"stopped at step {step}; rerun to continue from the last "
                              "saved state")


def run_vtab(
    checkpoint: str | None = None,
    *,
    tasks: Iterable[str] | None = None,
    group: str | None = None,
    variant: str = "1k",
    workdir: str | Path | None = None,
    resolution: int | None = None,
    learning_rates: Sequence[float] | None = None,
    lengths: Sequence[int] | None = None,
    overrides: Iterable[str] = (),
    base=None,
    prepare: bool = True,
    retrain: bool = False,
    callbacks: Callable[[Any], Iterable[Any]] | None = None,
    on_task: Callable[[dict, Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> VtabResult:
    """Run the paper's VTAB sweep of ``checkpoint`` over the chosen tasks, resumably.

    ``checkpoint``: model name (its recommended i21k upstream), checkpoint name or file.
    ``tasks`` / ``group``: which tasks (default: all 19). ``variant``: "1k" (VTAB-1k, the
    paper's Table 5) or "full". ``learning_rates`` / ``lengths``: a reduced grid (default:
    the paper's). ``overrides``: ``key=value`` config fields (``micro_batches=32``,
    ``data_dir=...``); ``base``: a whole base config instead (its task is replaced).
    ``callbacks(config)`` returns each run's callbacks (e.g. a progress bar);
    ``on_task(row, runs)`` is called when a task finishes, with its result row and runs;
    ``should_stop()`` is asked between runs and at every log step: True ends the sweep with
    ``stopped=True`` (a rerun continues where it stopped). ``retrain``: VTAB's protocol
    step after the choice, one more run of the chosen setting on train+val
    (``train800val200``), whose test accuracy becomes the task's (see :func:`task_row`).
    """
    import pandas as pd

    prefix = _registry_prefix(variant)
    names = select_tasks(tasks, group)
    if base is None:
        if checkpoint is None:
            raise ValueError("run_vtab needs a checkpoint (a model name such as 'B/16', a "
                             "checkpoint name or a file) or a base config")
        base = base_config(checkpoint, resolution=resolution or DEFAULT_RESOLUTION,
                           overrides=overrides)
    else:
        base = base.copy_and_resolve_references()
        if checkpoint is not None:
            base.checkpoint = checkpoint
        if resolution is not None:
            base.resolution = int(resolution)
        config_lib.apply_overrides(base, overrides)
    status = check_datasets(names, variant=variant, data_dir=base.data_dir, prepare=prepare)
    root = Path(workdir) if workdir else default_workdir(
        base.checkpoint, variant=variant, resolution=base.resolution)
    root.mkdir(parents=True, exist_ok=True)
    stop = should_stop or (lambda: False)
    rows: list[dict] = []
    all_runs = []
    stopped = False

    def run_callbacks(config):
        extra = list(callbacks(config)) if callbacks else []
        return [*extra, _StopCheck(stop)] if should_stop else extra

    logger.info("VTAB sweep of %s: %d task(s) in %s", base.checkpoint, len(names), root)
    for i, name in enumerate(names, 1):
        if stop():
            stopped = True
            break
        task_name = f"{prefix}/{name}"
        if status[name] != "prepared" and prepare:
            tasks_lib.prepare(tasks_lib.get_task(task_name, data_dir=base.data_dir))
        config = base.copy_and_resolve_references()
        config.task = task_name
        task = get_task(task_name)  # its own label-safe pre-processing, when it has one
        config.train_preprocess = task.train_preprocess or config.train_preprocess
        config.eval_preprocess = task.eval_preprocess or config.eval_preprocess
        logger.info("[%d/%d] %s", i, len(names), task_name)
        try:
            result = sweep_lib.sweep(
                config, root=root / name, learning_rates=learning_rates, lengths=lengths,
                resolutions=(int(base.resolution),), callbacks=run_callbacks)
        except VtabStopped:
            stopped = True
            break
        best = result.best.to_dict()
        again = None
        if retrain:
            final = config.copy_and_resolve_references()
            final.task = trainval_task(task_name)
            final.total_steps = int(best["adapt_steps"])
            final.warmup_steps = config_lib.warmup_for(final.total_steps)
            final.base_lr = float(best["adapt_lr"])
            final.eval_every = 0
            point = config_lib.run_name(final, in_sweep=True)
            final.workdir = str(root / name / f"retrain-{point}")
            try:
                out = finetune(final, callbacks=run_callbacks(final))
            except VtabStopped:
                stopped = True
                break
            again = {**out.result_row, "workdir": final.workdir}
        row = task_row(best, name, len(result.table), again)
        rows.append(row)
        all_runs.append(result.table.assign(vtab_task=name))
        sweep_lib._write_csv(pd.DataFrame(rows), root / RESULTS_FILE)
        if on_task is not None:
            on_task(row, result.table)
    table = pd.DataFrame(rows)
    runs = pd.concat(all_runs, ignore_index=True) if all_runs else pd.DataFrame()
    return VtabResult(table=table, runs=runs, workdir=root, stopped=stopped)

