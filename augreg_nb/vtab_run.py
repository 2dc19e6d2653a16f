"""The paper's VTAB sweep for one checkpoint: 19 tasks, choose by val, report test.

    from augreg_nb.vtab_run import run_vtab
    result = run_vtab("B/16")                          # all 19 VTAB tasks, full splits
    result = run_vtab("B/16", group="natural")         # or one group, or tasks=[...]
    result = run_vtab("B/16", variant="1k")            # VTAB-1k (not Table 5's data)
    result.table                                       # one row per task (index schema)
    result.runs                                        # every run of every task

    augreg-nb vtab --checkpoint B/16 --group structured

Per task, the runs are the paper's VTAB grid: learning rates {0.001, 0.003, 0.01, 0.03}
x {500, 2500} steps (warm-ups 100 and 200, Table 4), at one resolution, with the paper's
fine-tuning recipe (``augreg_nb.config``) and the task's own label-safe pre-processing
(``augreg_nb.vtab.TRAIN_PREPROCESS``). Each run trains on the task's train split and is
evaluated on val and test; the run with the highest val
accuracy is the task's result and its test accuracy is the task's score. This is the
selection the sweep machinery (``augreg_nb.sweep``) makes for every task of the package.
VTAB's own protocol (task_adaptation) then trains once more with the chosen setting on
train+val and reports that run's test accuracy; the paper does not say whether its
Table 5 did.

Variants: ``"full"`` (default) trains on VTAB's full training sets, what the paper's Table 5
reports (its numbers, e.g. 98.5-100% on dSprites location, are out of reach with 800
examples; the paper selects on "VTAB validation split"), so only full rows are compared
with Table 5. ``"1k"`` is VTAB-1k (``train800`` / ``val200``), the standard cheap
benchmark, reported on its own: no Table 5 reference is 1k.

Cost: :func:`measure_step` times the real step here and :func:`grid_cost` multiplies it by
the steps of every run (plus every run's evaluation); ``augreg-nb vtab`` prints it first
and ``--estimate`` only prints it. By default the reported test accuracy is the chosen run's;
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

The result rows are in the index schema (``adapt_ds`` = ``vtab/<task>`` or
``vtab1k/<task>``) with the columns
of ``EXTRA_COLUMNS`` added; ``augreg-nb figures --own <workdir>/vtab.csv``
and ``augreg_nb.figures.table5_data(own=...)`` put them next to the paper's Table 5 and
Figure 3, with the mean per group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from augreg_nb import config as config_lib
from augreg_nb import sweep as sweep_lib
from augreg_nb import tasks as tasks_lib
from augreg_nb import vtab
from augreg_nb.callbacks import duration_text
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
#: Run lengths of the paper's VTAB grid.
SWEEP_LENGTHS = vtab.SWEEP_STEPS
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
    stopped_reason: str = ""  #: where it stopped, e.g. "stopped while preparing DTD; ..."


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
    raise ValueError(f"variant must be 'full' (the paper's Table 5) or '1k' (VTAB-1k), got "
                     f"{variant!r}")


def dataset_status(names: Sequence[str], *, variant: str = "full",
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


def check_datasets(names: Sequence[str], *, variant: str = "full", data_dir: str | None = None,
                   prepare: bool = True, probe: bool = True) -> dict[str, str]:
    """Raise before anything runs when a chosen task cannot be read; return the status.

    Missing manual downloads always raise :class:`ManualDownloadsMissing` with the steps for
    every such task at once. Datasets TFDS can download raise ``DatasetNotReadyError`` with
    their ``tfds build`` commands when ``prepare`` is False or AUGREG_NB_OFFLINE=1, and
    :class:`NoNetwork` (which datasets are ready, which need a download or a manual step)
    when ``probe`` finds no network (:func:`network_problem`, at most a few seconds).
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
    if download and probe:
        problem = network_problem()
        if problem is not None:
            raise NoNetwork(
                f"{problem}; this machine seems to have no network, so TFDS cannot download "
                f"the {len(download)} dataset(s) that need it (nothing has run yet).\n"
                f"{status_summary(status)}\nPrepare them where there is a network and pass "
                "data_dir=, or choose tasks whose datasets are ready.")
    return status


#: TFDS reads its prepared copies and most metadata from this host; without a connection to
#: it TFDS cannot download anything (a dataset's own download hosts vary).
PROBE_HOST = "storage.googleapis.com"
#: The longest the network check may take: a machine without network says so within it.
PROBE_TIMEOUT_S = 3.0
#: dataset_status states -> the words the per-task status uses.
STATUS_WORDS = {"prepared": "ready", "manual files present": "ready to prepare (manual files "
                "present)", "needs download": "needs a download",
                "manual download missing": "needs a manual step"}


class NoNetwork(DatasetNotReadyError):
    """Chosen datasets need a download and this machine has no network; nothing has run."""


def network_problem(host: str | None = None, port: int = 443,
                    timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing can be downloaded from ``host`` (default :data:`PROBE_HOST`) now (no name
    look-up, a refused or unreachable connection, no answer within ``timeout`` s), or None
    when it answers. Returns within ``timeout`` s even when the name look-up itself hangs."""
    import socket

    from augreg_nb.download import unreachable_reason

    host = host or PROBE_HOST

    found: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                found.append(None)
        except TimeoutError:
            found.append(f"{host} did not answer within {timeout:g} s")
        except OSError as err:
            found.append(unreachable_reason(err, f"https://{host}:{port}/")
                         or f"{host} cannot be reached ({err})")

    thread = threading.Thread(target=probe, name="augreg-vtab-network-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        return f"the host name {host} was not resolved within {timeout:g} s"
    return found[0]


def status_summary(status: Mapping[str, str]) -> str:
    """One line per kind of state: which chosen tasks' datasets are ready, need a download
    or a manual step (``status``: task -> :func:`dataset_status` state)."""
    lines = []
    for state, words in STATUS_WORDS.items():
        which = [vtab.SPECS[n].column for n, s in status.items() if s == state]
        if which:
            lines.append(f"- {words}: {', '.join(which)}")
    return "\n".join(lines)


def base_config(checkpoint: str, *, resolution: int = DEFAULT_RESOLUTION,
                overrides: Iterable[str] = ()):
    """The config every VTAB run starts from: the paper's recipe, evaluated at the end only.

    ``overrides`` are ``key=value`` strings (``--set``), e.g. ``micro_batches=32``.
    """
    config = config_lib.preset_for("vtab/cifar100", 500, 0.01, resolution,
                                   checkpoint=checkpoint)
    config.eval_every = 0  # val and test once, at the end of each run
    config.export = False  # 152 runs: keep only the states, not 152 exported copies
    config_lib.apply_overrides(config, overrides)
    return config


def default_workdir(checkpoint: str, *, variant: str = "full", resolution: int) -> Path:
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


@dataclasses.dataclass(frozen=True)
class StepTiming:
    """One training step of a config, timed on this machine (:func:`measure_step`)."""

    model: str
    resolution: int
    global_batch: int
    images: int  #: images in the timed step (one micro-batch of the config)
    seconds: float  #: its wall time, compiled and warmed up

    @property
    def seconds_per_step(self) -> float:
        """A whole step of ``global_batch`` images (the micro-batches run one after another)."""
        return self.seconds * self.global_batch / self.images


#: Images per device timed on a CPU (see :func:`measure_step`).
CPU_IMAGES = 4


def measure_step(config, *, model: str | None = None, num_classes: int = 100) -> StepTiming:
    """Time the real fine-tuning step of ``config`` here, as notebook 2's first step does.

    The config's model (``model``, or what the config names), optimiser, loss, dtype,
    resolution and placement, with zero weights (the time does not depend on them), on one
    micro-batch of the config (global_batch / micro_batches images, as each micro-batch of
    a step runs alone): compiled, run once, then timed once. On a CPU, whose time grows
    with the images from the first one, at most ``CPU_IMAGES`` per device are timed (a
    micro-batch of B/16 at 384 px takes minutes there). A whole step is the time per image
    x global_batch (:attr:`StepTiming.seconds_per_step`).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from augreg_nb import input_pipeline as ip
    from augreg_nb import memory
    from augreg_nb import train_step as ts
    from augreg_nb.models import abstract_params, create_model
    from augreg_nb.train import step_recipe, train_chunk

    model = model or memory.model_of(config)
    if model is None:
        raise ValueError(f"cannot tell the model of checkpoint {config.checkpoint!r}; pass "
                         "model= (e.g. 'B/16') to measure its step")
    mesh = ip.data_mesh()
    devices = mesh.devices.size
    images = max(devices, config.global_batch // config.micro_batches // devices * devices)
    if jax.default_backend() == "cpu":
        images = min(images, CPU_IMAGES * devices)
    recipe = step_recipe(config)
    r = int(config.resolution)
    module = create_model(model, num_classes, dtype=jnp.dtype(config.dtype),
                          dropout_rate=recipe.dropout, stochastic_depth=recipe.stochastic_depth)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                          abstract_params(model, num_classes, r))
    state, sharding = ts.create_state(params, recipe.tx, mesh, config.param_sharding)
    step = ts.make_train_step(
        module.apply, recipe.tx, mesh=mesh, num_classes=num_classes, micro_batches=1,
        lr_schedule=ts.schedule_from_config(config), state_sharding=sharding,
        mixup_alpha=recipe.mixup_alpha, loss=recipe.loss,
        chunk=train_chunk(config, devices))
    batch = ip.put_batch({"image": np.zeros((images, r, r, 3), np.float32),
                          "label": np.zeros((images,), np.int32)}, mesh)
    state, metrics = step(state, batch)  # compiles
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return StepTiming(model=model, resolution=r, global_batch=int(config.global_batch),
                      images=images, seconds=time.perf_counter() - started)


#: A forward pass costs about a third of a training step's forward and backward passes.
EVAL_SHARE = 1 / 3


@dataclasses.dataclass(frozen=True)
class GridCost:
    """What a chosen VTAB grid costs (:func:`grid_cost`)."""

    tasks: int
    runs: int
    train_steps: int
    eval_images: int  #: val + test images over every run (each run is evaluated once)
    seconds_per_step: float
    global_batch: int

    @property
    def train_seconds(self) -> float:
        return self.train_steps * self.seconds_per_step

    @property
    def eval_seconds(self) -> float:
        return self.eval_images * self.seconds_per_step / self.global_batch * EVAL_SHARE

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.eval_seconds


def grid_cost(names: Sequence[str], *, variant: str = "full",
              learning_rates: Sequence[float] = vtab.VTAB_SWEEP.learning_rates,
              lengths: Sequence[int] = SWEEP_LENGTHS, seconds_per_step: float,
              global_batch: int = 512) -> GridCost:
    """The cost of running ``names`` with the grid: every run's steps x the measured time
    of a step, plus every run's evaluation of val and test (split sizes of the variant, a
    forward pass at :data:`EVAL_SHARE` of a training step per image)."""
    prefix = _registry_prefix(variant)
    per_task = len(learning_rates) * len(lengths)
    eval_images = 0
    for name in names:
        sizes = vtab.expected_sizes(name, prefix)
        eval_images += per_task * (sizes["val"] + sizes["test"])
    return GridCost(tasks=len(names), runs=len(names) * per_task,
                    train_steps=len(names) * len(learning_rates) * int(sum(lengths)),
                    eval_images=eval_images, seconds_per_step=float(seconds_per_step),
                    global_batch=int(global_batch))


def cost_text(cost: GridCost, timing: StepTiming) -> str:
    """What the grid costs here, in one paragraph: the total, the measured step, the runs
    and steps, and how to make it smaller."""
    return (
        f"On this machine the chosen grid takes about {duration_text(cost.seconds)}: "
        f"{cost.tasks} task(s) x {cost.runs // max(cost.tasks, 1)} runs = {cost.runs} runs, "
        f"{cost.train_steps:,} training steps of {duration_text(timing.seconds_per_step)} "
        f"each ({timing.model} at {timing.resolution} px, batch {timing.global_batch}; "
        f"measured here on {timing.images} images), plus evaluating val and test after "
        f"every run ({cost.eval_images:,} images, about {duration_text(cost.eval_seconds)}). "
        "Fewer tasks (a group or a list), a shorter grid or 224 px make it smaller.")


def read_results(workdir: str | Path):
    """The task rows of a (possibly unfinished) VTAB sweep, from ``<workdir>/vtab.csv``."""
    import pandas as pd

    path = Path(workdir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no VTAB results in {path}; run augreg-nb vtab first")
    return pd.read_csv(path)


def _prepare_child(task_name: str, data_dir: str | None, conn) -> None:
    """In a child process: prepare one task's dataset; send back None or the error text."""
    try:
        tasks_lib.prepare(task_name, data_dir=data_dir)
    except BaseException as err:  # noqa: BLE001 - the parent shows it
        conn.send(f"{type(err).__name__}: {err}")
    else:
        conn.send(None)
    finally:
        conn.close()


def _remove_incomplete(task_name: str, data_dir: str | None) -> None:
    """Drop the temporary folders a stopped TFDS preparation leaves (``*.incomplete*``
    beside the version folder); TFDS never counts them as prepared."""
    import shutil

    with contextlib.suppress(Exception):
        folder = Path(tfds_builder(get_task(task_name, data_dir=data_dir)).data_dir).parent
        for leftover in folder.glob("*incomplete*"):
            shutil.rmtree(leftover, ignore_errors=True)


def run_stoppable(target: Callable[..., None], args: tuple, *, what: str,
                  should_stop: Callable[[], bool], poll_s: float = 0.2,
                  cleanup: Callable[[], None] | None = None) -> None:
    """Run ``target(*args, conn)`` in a child process (spawned: JAX's threads do not fork)
    and wait for it, asking ``should_stop()`` every ``poll_s``: True ends the child at once
    and raises :class:`VtabStopped` ("stopped while preparing <what>") after ``cleanup()``.
    ``target`` sends None or an error text through ``conn``; an error raises RuntimeError
    with it, a child that dies without a word raises with its exit code."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(*args, send), name=f"augreg-prepare-{what}",
                        daemon=True)
    child.start()
    send.close()
    try:
        while True:
            if receive.poll(poll_s):
                try:
                    error = receive.recv()
                except EOFError:
                    child.join()
                    raise RuntimeError(f"preparing {what} ended without a result (exit code "
                                       f"{child.exitcode})") from None
                child.join()
                if error is not None:
                    raise RuntimeError(f"preparing {what} failed: {error}")
                return
            if not child.is_alive():
                if receive.poll(0):
                    continue  # it sent its result just before ending
                raise RuntimeError(f"preparing {what} ended without a result (exit code "
                                   f"{child.exitcode})")
            if should_stop():
                child.terminate()
                child.join(5)
                if child.is_alive():
                    child.kill()
                    child.join()
                if cleanup is not None:
                    cleanup()
                raise VtabStopped(f"stopped while preparing {what}; nothing of it is kept as "
                                  "ready (Start prepares it again)")
    finally:
        receive.close()


def download_size(task_name: str, data_dir: str | None = None) -> int | None:
    """Bytes TFDS downloads for a task's dataset, from the checksums its code ships (the
    sizes of the files it fetches; None: not known)."""
    with contextlib.suppress(Exception):
        infos = tfds_builder(get_task(task_name, data_dir=data_dir)).url_infos or {}
        return sum(int(info.size) for info in infos.values()) or None
    return None


def prepare_task(task_name: str, *, data_dir: str | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_status: Callable[[str], None] | None = None) -> None:
    """Download and prepare one task's dataset (TFDS), saying so with its download size;
    with ``should_stop``, in a child process that Stop ends at once (:func:`run_stoppable`),
    the half-made dataset removed and never taken as ready."""
    column = vtab.SPECS[task_name.split("/", 1)[1]].column
    size = download_size(task_name, data_dir)
    text = f"preparing {column}: TFDS downloads " + (
        f"{size / 1e6:,.0f} MB" if size else "it") + " and prepares it ..."
    logger.info(text)
    if on_status is not None:
        on_status(text)
    if should_stop is None:
        tasks_lib.prepare(task_name, data_dir=data_dir)
        return
    run_stoppable(_prepare_child, (task_name, data_dir), what=column,
                  should_stop=should_stop,
                  cleanup=lambda: _remove_incomplete(task_name, data_dir))


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
    variant: str = "full",
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
    on_status: Callable[[str], None] | None = None,
) -> VtabResult:
    """Run the paper's VTAB sweep of ``checkpoint`` over the chosen tasks, resumably.

    ``checkpoint``: model name (its recommended i21k upstream), checkpoint name or file.
    ``tasks`` / ``group``: which tasks (default: all 19). ``variant``: "full" (VTAB's full
    training sets, the paper's Table 5) or "1k" (VTAB-1k, not comparable with Table 5).
    ``learning_rates`` / ``lengths``: a reduced grid (default: the paper's).
    ``overrides``: ``key=value`` config fields (``micro_batches=32``, ``data_dir=...``);
    ``base``: a whole base config instead (its task is replaced).
    ``callbacks(config)`` returns each run's callbacks (e.g. a progress bar);
    ``on_task(row, runs)`` is called when a task finishes, with its result row and runs;
    ``should_stop()`` is asked between runs and at every log step: True ends the sweep with
    ``stopped=True`` (a rerun continues where it stopped); a dataset being prepared then
    is prepared in a child process that Stop ends at once. ``on_status(text)`` hears what
    happens now between runs (checking the datasets and the network, preparing a dataset
    with its download size). ``<workdir>/vtab.csv`` keeps the rows of tasks finished by
    earlier calls in the same folder (a later call with other tasks adds to them).
    ``retrain``: VTAB's protocol
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
    say = on_status or (lambda text: None)
    say(f"checking the datasets of {len(names)} task(s) ...")
    status = check_datasets(names, variant=variant, data_dir=base.data_dir, prepare=prepare)
    root = Path(workdir) if workdir else default_workdir(
        base.checkpoint, variant=variant, resolution=base.resolution)
    root.mkdir(parents=True, exist_ok=True)
    stop = should_stop or (lambda: False)
    rows: list[dict] = []
    all_runs = []
    stopped, reason = False, ""
    earlier = _earlier_rows(root, keep_out=names)

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
            try:
                prepare_task(task_name, data_dir=base.data_dir,
                             should_stop=stop if should_stop else None, on_status=say)
            except VtabStopped as err:
                stopped, reason = True, str(err)
                break
        config = base.copy_and_resolve_references()
        config.task = task_name
        config_lib.use_task_preprocess(config)  # its own label-safe pre-processing
        logger.info("[%d/%d] %s", i, len(names), task_name)
        try:
            result = sweep_lib.sweep(
                config, root=root / name, learning_rates=learning_rates, lengths=lengths,
                resolutions=(int(base.resolution),), callbacks=run_callbacks)
        except VtabStopped as err:
            stopped, reason = True, str(err)
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
            except VtabStopped as err:
                stopped, reason = True, str(err)
                break
            again = {**out.result_row, "workdir": final.workdir}
        row = task_row(best, name, len(result.table), again)
        rows.append(row)
        all_runs.append(result.table.assign(vtab_task=name))
        sweep_lib._write_csv(_in_table5_order([*earlier, *rows]), root / RESULTS_FILE)
        if on_task is not None:
            on_task(row, result.table)
    if stopped and not reason:
        reason = "stopped between tasks"
    table = pd.DataFrame(rows)
    runs = pd.concat(all_runs, ignore_index=True) if all_runs else pd.DataFrame()
    return VtabResult(table=table, runs=runs, workdir=root, stopped=stopped,
                      stopped_reason=reason)


def _earlier_rows(root: Path, keep_out: Sequence[str]) -> list[dict]:
    """The rows of ``<root>/vtab.csv`` of tasks other than ``keep_out`` (finished by an
    earlier call in the same folder), to keep in the file."""
    path = root / RESULTS_FILE
    if not path.is_file():
        return []
    table = read_results(root)
    if "vtab_task" not in table.columns:
        return []
    return [r for r in table.to_dict("records") if r["vtab_task"] not in set(keep_out)]


def _in_table5_order(rows: list[dict]):
    """The rows as a table, one per task, in Table 5's order."""
    import pandas as pd

    order = {n: i for i, n in enumerate(vtab.SPECS)}
    return pd.DataFrame(sorted(rows, key=lambda r: order.get(r["vtab_task"], len(order))))

