"""Fine-tune an AugReg checkpoint with the paper's recipe, on any number of devices, resumably.

One entry point for notebooks and the command line::

    from augreg_nb.config import get_config
    from augreg_nb.train import finetune
    from augreg_nb.callbacks import ProgressBar

    config = get_config("smoke")             # seconds on CPU: tiny ViT, 8x8 digits upscaled
    config.workdir = "runs/smoke"
    result = finetune(config, callbacks=[ProgressBar()])
    result.history                           # step, lr, loss, img/s, val/test accuracy...
    result.result_row                        # a row in the index's 21-column schema
    result.export_path                       # {adapt_filename}.npz in the published layout

    augreg-nb finetune --preset cifar100-2500-0.01-384 --set micro_batches=16 --workdir runs/c100

What happens: the checkpoint is loaded with a zero-initialised head for the task and its
position embeddings resized to the resolution; batches are split over a mesh of all
devices (data parallel, parameters replicated or optionally sharded) and, within a step,
into ``micro_batches`` accumulated slices; every ``eval_every`` steps and at the end the
val and test splits are evaluated (each example exactly once, the last batch padded and
masked). The full training state is saved atomically every ``checkpoint_every`` steps; run
the same command (same workdir) again after a crash and it continues to the same final
parameters an uninterrupted run would reach. A callback whose ``stop_requested`` is True,
or a keyboard (kernel) interrupt, ends the run after the current step with its state saved
(:class:`TrainingStopped`; running it again resumes). A non-finite loss stops the run and
keeps the last good state; running out of accelerator memory names a ``micro_batches`` that fits.
The workdir records the config that produced it (``run.json``, :mod:`augreg_nb.run_folder`):
a call with another config is refused with the differing fields named (or, with
``if_different="new_folder"``, runs in a folder of its own), and one run at a time holds it.

Several hosts (a TPU pod slice, GPU nodes, or processes on one machine): start the same
command in every process after :func:`augreg_nb.distributed.initialize` (the command line's
``--coordinator-address``, ``--num-processes`` and ``--process-id``; automatic where JAX
detects a cluster). Each process decodes its own 1/process_count of every global batch; the
mesh spans all devices of all processes; the workdir must be a folder every process can
read and write (each writes its shards of the state, process 0 the results and export).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from augreg_nb import callbacks as callbacks_lib
from augreg_nb import checkpoint as ckpt
from augreg_nb import config as config_lib
from augreg_nb import input_pipeline as ip
from augreg_nb import (
    models,
    names,
    random_checkpoints,  # noqa: F401 - registers the "fake:" source
    run_folder,
    sources,
    upstream,
)
from augreg_nb import train_step as ts
from augreg_nb.atomic import write_json_atomic
from augreg_nb.index import COLUMNS, load_index, recommended_checkpoints
from augreg_nb.models import create_model, param_count
from augreg_nb.resources import ENV_INDEX
from augreg_nb.sources import index_cache_path
from augreg_nb.tasks import get_task
from augreg_nb.train_state import (
    StateFileError,
    read_meta,
    read_npz_meta,
    restore_npz_state,
    restore_state,
    save_state,
    saved,
    to_host,
)

logger = logging.getLogger(__name__)

#: The run's training state: an orbax-checkpoint folder (:mod:`augreg_nb.train_state`).
STATE_DIR = "state"
#: The single-file state of earlier versions: resumed from once, then replaced by STATE_DIR.
LEGACY_STATE_FILE = "state.npz"
RESULT_FILE = "result.json"
#: Config fields that change the trained parameters: a workdir's state is only resumed when
#: these match (micro_batches, devices and the eval/checkpoint intervals may differ).
RECIPE_FIELDS = (
    "checkpoint", "model", "task", "resolution", "base_lr", "total_steps", "warmup_steps",
    "global_batch", "seed", "dtype", "momentum_dtype", "momentum", "grad_clip",
    "train_preprocess", "recipe", "aug", "wd", "do", "sd", "loss",
)
#: Values of the AugReg fields that mean "the transfer recipe as before": states saved
#: before these fields existed resume as runs with these values.
RECIPE_DEFAULTS = {"recipe": "transfer", "aug": "none", "wd": 0.0, "do": 0.0, "sd": 0.0,
                   "loss": "auto"}
#: The ``filename`` of a run from random initialisation in its result row.
SCRATCH_STEM = "scratch"


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; ``state_path`` holds the last good state."""

    def __init__(self, message: str, *, step: int, state_path: Path | None):
        super().__init__(message)
        self.step = step
        self.state_path = state_path


class TrainingStopped(RuntimeError):
    """The run was stopped on request (a callback's ``stop_requested``, or a keyboard or
    kernel interrupt) at the end of step ``step``; its state is saved in ``state_path``, so
    running the same config again resumes it."""

    def __init__(self, step: int, state_path: Path | None, total_steps: int):
        super().__init__(f"stopped at step {step} of {total_steps}; the state is saved in "
                         f"{state_path}; Start (or the same command) resumes the run")
        self.step = step
        self.state_path = state_path
        self.total_steps = total_steps


def _stop_requested(callbacks) -> bool:
    return any(getattr(cb, "stop_requested", False) for cb in callbacks)


@dataclasses.dataclass
class TrainData:
    """What the training loop needs from a task.

    ``train_batches(first_step)`` yields the host-local training batches ({"image",
    "label"}) for steps first_step, first_step + 1, ... (steps counted from 1); batch k
    must depend only on (seed, k) so that a resumed run sees the same data.
    ``eval_batches[split]()`` yields padded batches {"image", "label", "mask"} that cover
    every example of the split once.
    """

    num_classes: int
    train_batches: Callable[[int], Iterator[dict]]
    eval_batches: dict[str, Callable[[], Iterable[dict]]]


@dataclasses.dataclass
class FitOutput:
    params: Any
    history: Any  # pandas.DataFrame
    final: dict


@dataclasses.dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`."""

    params: Any  #: final parameters (nested dict of arrays)
    history: Any  #: pandas.DataFrame, one row per logged/evaluated step
    result_row: dict  #: the run as a row of the index table (21 columns)
    export_path: Path | None  #: the exported {adapt_filename}.npz, if exported
    workdir: Path  #: the run's folder (state, result.json, export)


def oom_advice(config, num_devices: int) -> str:
    """The sentence that tells how to fit a step that ran out of accelerator memory: the
    ``micro_batches`` (and ``param_sharding``) whose compiled step fits the device's memory
    (:func:`augreg_nb.memory.oom_advice`)."""
    from augreg_nb import memory

    return memory.oom_advice(config, num_devices, recipe=step_recipe(config))


def step_recipe(config):
    """What :func:`fit`'s step takes from ``config`` besides the model and the placement
    (:class:`augreg_nb.memory.StepRecipe`): for measuring the step's memory."""
    from augreg_nb.memory import StepRecipe

    return StepRecipe(tx=optimizer_for(config), loss=loss_name(config),
                      mixup_alpha=mixup_alpha(config), dropout=float(_field(config, "do")),
                      stochastic_depth=float(_field(config, "sd")))


def train_chunk(config, num_devices: int) -> int:
    """Images per sequential chunk of a micro-batch in :func:`fit`'s step
    (``make_train_step(chunk=...)``): ``models.forward_chunk()`` on one CPU device when the
    recipe has no dropout and no stochastic depth (the transfer recipe), else 0 (whole
    micro-batches), so that stochastic runs draw the same masks on every backend."""
    from augreg_nb.models import forward_chunk

    recipe = step_recipe(config)
    if num_devices != 1 or recipe.dropout or recipe.stochastic_depth:
        return 0
    return forward_chunk()


def _is_oom(err: BaseException) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "OOM" in text


@contextlib.contextmanager
def explain_oom(advice: Callable[[], str]) -> Iterator[None]:
    """Turn an accelerator out-of-memory error inside the block into a RuntimeError that says
    what to change (``advice()``); other errors pass through unchanged."""
    try:
        yield
    except Exception as err:
        if _is_oom(err):
            raise RuntimeError(advice()) from err
        raise


def _field(config, name: str):
    return config.get(name, RECIPE_DEFAULTS[name]) if name in RECIPE_DEFAULTS \
        else config[name]


def _recipe(config) -> dict:
    return {k: _field(config, k) for k in RECIPE_FIELDS}


def _stored_recipe(meta: dict) -> dict:
    return {**RECIPE_DEFAULTS, **meta.get("recipe", {})}


def loss_name(config) -> str:
    """The loss a config trains with: its ``loss``, or for "auto" softmax with the transfer
    recipe and the upstream recipe's sigmoid (:data:`augreg_nb.upstream.LOSSES`) with augreg."""
    loss = _field(config, "loss")
    if loss != "auto":
        return loss
    return upstream.LOSSES["i1k"] if _field(config, "recipe") == "augreg" else "softmax"


def optimizer_for(config):
    """The optimiser of a config's recipe: the transfer recipe's SGD with momentum, or the
    upstream recipe's Adam with decoupled weight decay ``wd`` on kernels (paper convention)."""
    if _field(config, "recipe") == "augreg":
        return upstream.make_upstream_optimizer(
            config.total_steps, base_lr=config.base_lr, weight_decay=float(_field(config, "wd")),
            warmup_steps=config.warmup_steps, grad_clip=config.grad_clip or None,
            mu_dtype=config.momentum_dtype)
    return ts.optimizer_from_config(config)


def mixup_alpha(config) -> float:
    """The Mixup alpha of the config's augmentation setting (0: no Mixup)."""
    return names.AUGMENTATIONS[config_lib.index_aug(_field(config, "aug"))].mixup_alpha


class History:
    """The run's metrics by step (loss, lr, speed, val/test results), saved with the state.

    ``record(step, values)`` merges values into the row of that step, so a step that is
    both logged and evaluated has one row.
    """

    def __init__(self, rows: Iterable[dict] = ()):
        # Strict JSON stores NaN (e.g. the speed of a step that was not timed) as null.
        self._rows: dict[int, dict] = {
            int(r["step"]): {k: math.nan if v is None else v for k, v in r.items()}
            for r in (rows if isinstance(rows, list | tuple) else [])
            if isinstance(r, dict) and isinstance(r.get("step"), int)}

    def record(self, step: int, values: dict) -> None:
        self._rows.setdefault(step, {"step": step}).update(values)

    def get(self, step: int) -> dict:
        return self._rows.get(step, {})

    def rows(self) -> list[dict]:
        return [self._rows[k] for k in sorted(self._rows)]

    def frame(self):
        """A pandas.DataFrame with one row per recorded step."""
        frame = pd.DataFrame(self.rows())
        return frame if len(frame) else pd.DataFrame(columns=["step"])


def evaluate(eval_step, params, batches: Iterable[dict], mesh) -> dict:
    """Accuracy and mean loss over every (unmasked) example of ``batches``."""
    correct = loss = count = 0
    for batch in batches:
        c, l, n = eval_step(params, ip.put_batch(batch, mesh))
        correct, loss, count = correct + c, loss + l, count + n
    count = int(count)
    if count == 0:
        raise ValueError("the evaluation split yielded no (unmasked) examples")
    return {"accuracy": int(correct) / count, "loss": float(loss) / count, "count": count}


def fit(
    config,
    *,
    apply_fn: Callable[..., Any],
    params: Any,
    data: TrainData,
    workdir: str | Path,
    callbacks: Iterable[Any] = (),
    mesh=None,
) -> FitOutput:
    """The training loop of :func:`finetune`, for any Linen ``apply_fn`` and data.

    Resumes from ``workdir/state/`` when it holds a save written for the same recipe.
    """
    mesh = mesh if mesh is not None else ip.data_mesh()
    config_lib.validate(config, mesh.devices.size)
    return _Run(config, apply_fn, params, data, Path(workdir), list(callbacks), mesh).fit()


class _Run:
    """One call of :func:`fit`: the training state, its history, and the steps that change
    them (train, log, evaluate, check, save). Not reused across runs."""

    def __init__(self, config, apply_fn, params, data: TrainData, workdir: Path,
                 callbacks: list, mesh, meta: dict | None = None):
        self.config, self.data, self.workdir, self.callbacks, self.mesh = (
            config, data, workdir, callbacks, mesh)
        self.meta = meta or {}  # stored with the state (what finetune needs to answer later)
        self.num_devices = mesh.devices.size
        self.state_path = workdir / STATE_DIR
        self.legacy_path = workdir / LEGACY_STATE_FILE
        self.schedule = ts.schedule_from_config(config)
        tx = optimizer_for(config)
        self.state, sharding = ts.create_state(params, tx, mesh, config.param_sharding)
        self.history = History()
        # A state folder without a complete save is the first save of a killed run: start
        # over. Anything else there resumes (or is named as damaged).
        if (saved(self.state_path) or self.legacy_path.is_file()
                or (self.state_path.exists() and not self.state_path.is_dir())):
            self._resume()
        elif (workdir / RESULT_FILE).is_file():
            logger.warning("%s holds a result but no saved training state; the run is "
                           "trained again from step 0 and its result replaced", workdir)
        self.train_step = ts.make_train_step(
            apply_fn, tx, mesh=mesh, num_classes=data.num_classes,
            micro_batches=config.micro_batches, lr_schedule=self.schedule,
            state_sharding=sharding, seed=config.seed,
            mixup_alpha=mixup_alpha(config), loss=loss_name(config),
            chunk=train_chunk(config, self.num_devices),
        )
        self.eval_step = ts.make_eval_step(apply_fn, mesh=mesh, num_classes=data.num_classes)
        self.pending: list[tuple[int, dict]] = []  # step metrics not logged yet (on device)

    def _resume(self) -> None:
        config, path = self.config, self.state_path
        legacy = not saved(path) and self.legacy_path.is_file()
        if legacy:  # a state of the earlier single-file format: resumed from once
            path = self.legacy_path
        meta = (read_npz_meta if legacy else read_meta)(path)
        if not isinstance(meta.get("recipe"), dict):
            raise StateFileError(
                f"the training state {path} is damaged (its metadata lacks the recipe it was "
                f"trained with), so the run cannot resume from it. Move it away (e.g. `mv "
                f"{path} {path}.damaged`) or delete it to start over, or use another workdir.")
        stored = _stored_recipe(meta)
        if stored != _recipe(config):
            changed = sorted(k for k in RECIPE_FIELDS if stored.get(k) != _field(config, k))
            raise ValueError(
                f"{self.workdir} holds a run with a different recipe (fields {changed} "
                "differ); use another workdir, or delete it to start over"
            )
        self.state, meta = (restore_npz_state if legacy else restore_state)(path,
                                                                            like=self.state)
        self.history = History(meta.get("history", []))
        logger.info("resuming from step %d of %d (%s)", int(self.state.step),
                    config.total_steps, path)

    def fit(self) -> FitOutput:
        config, start = self.config, int(self.state.step)
        info = {"total_steps": config.total_steps, "start_step": start,
                "workdir": str(self.workdir), "global_batch": config.global_batch,
                "devices": self.num_devices,
                "history": self.history.frame()}  # of the earlier sessions of a resumed run
        callbacks_lib.dispatch(self.callbacks, "on_train_begin", info)
        if start < config.total_steps:
            final = self._train(start)
        else:
            final = self._final_results(start)
        frame = self.history.frame()
        callbacks_lib.dispatch(self.callbacks, "on_train_end", frame)
        params = jax.tree.map(to_host, self.state.params)
        return FitOutput(params=params, history=frame, final=final)

    def _train(self, start: int) -> dict:
        """Steps start+1 .. total_steps; returns the last evaluation."""
        config, final = self.config, {}
        batches = self.data.train_batches(start + 1)
        clock = _Clock(start)
        for step in range(start + 1, config.total_steps + 1):
            try:
                with explain_oom(lambda step=step: f"out of accelerator memory at step {step}: "
                                 f"{oom_advice(config, self.num_devices)}"):
                    batch = ip.put_batch(next(batches), self.mesh)
                    self.state, metrics = self.train_step(self.state, batch)
            except KeyboardInterrupt:  # the state of the last finished step is kept
                self._save()
                raise TrainingStopped(int(self.state.step), self.state_path,
                                      config.total_steps) from None
            self.pending.append((step, metrics))
            if step == start + 1:  # first step includes compilation: time from its end
                jax.block_until_ready(metrics)
                clock.restart(step)
            last = step == config.total_steps
            stop = not last and _stop_requested(self.callbacks)
            if step % config.log_every == 0 or last or stop:  # a stop logs its last steps
                self._log(step, clock)
                stop = not last and _stop_requested(self.callbacks)  # asked for while logging
            with clock.paused():
                if (config.eval_every and step % config.eval_every == 0) or last:
                    self._check_finite()
                    final = self._evaluate(step)
                if ((config.checkpoint_every and step % config.checkpoint_every == 0) or last
                        or stop):
                    self._check_finite()
                    self._save()
                if stop:
                    self.pending.clear()
                    raise TrainingStopped(step, self.state_path, config.total_steps)
        return final

    def _final_results(self, step: int) -> dict:
        """The last evaluation of a finished run (evaluated now if it never was)."""
        prefixes = tuple(f"{split}_" for split in self.data.eval_batches)
        final = {k: v for k, v in self.history.get(step).items() if k.startswith(prefixes)}
        if len(final) < 3 * len(prefixes):  # finished but not evaluated (e.g. diverged)
            final = self._evaluate(step)
        return final

    def _log(self, step: int, clock: _Clock) -> None:
        self._check_finite()
        host = jax.device_get([m for _, m in self.pending])
        logged = {
            "loss": float(np.mean([m["loss"] for m in host])),
            "lr": float(host[-1]["lr"]),
            "grad_norm": float(np.mean([m["grad_norm"] for m in host])),
            "img_per_sec": clock.speed(step, self.config.global_batch),
        }
        self.history.record(step, logged)
        callbacks_lib.dispatch(self.callbacks, "on_log", step, logged)
        self.pending.clear()

    def _evaluate(self, step: int) -> dict:
        config, n = self.config, self.num_devices
        out = {}
        for split, make_batches in self.data.eval_batches.items():
            smaller = max(n, config.eval_batch // (4 * n) * n)
            with explain_oom(lambda split=split, smaller=smaller: (
                    f"out of accelerator memory evaluating {split} with eval_batch="
                    f"{config.eval_batch}; set a smaller eval_batch (a multiple of {n}), "
                    f"e.g. --set eval_batch={smaller}")):
                res = evaluate(self.eval_step, self.state.params, make_batches(), self.mesh)
            out.update({f"{split}_{k}": v for k, v in res.items()})
        self.history.record(step, out)
        callbacks_lib.dispatch(self.callbacks, "on_eval", step, out)
        logger.info("step %d: %s", step, ", ".join(
            f"{k} {v:.4f}" for k, v in out.items() if k.endswith("accuracy")))
        return out

    def _check_finite(self) -> None:
        """Raise TrainingDiverged (after saving the last good state) at a non-finite loss."""
        bad = int(self.state.nonfinite_step)
        if not bad:
            return
        loss = {s: float(m["loss"]) for s, m in self.pending}.get(bad, float("nan"))
        lr = float(self.schedule(bad))
        self.history.record(bad, {"loss": loss, "lr": lr})
        self._save()
        raise TrainingDiverged(
            f"training stopped at step {bad}: the loss became {loss} (base_lr="
            f"{self.config.base_lr}, lr at that step {lr:.3g}). The last good state (step "
            f"{bad - 1}) is kept in {self.state_path}. Lower base_lr, check the input data "
            "for NaN/inf, or use dtype=float32.",
            step=bad, state_path=self.state_path,
        )

    def _save(self) -> None:
        save_state(self.state_path, self.state, meta={
            **self.meta,
            "recipe": _recipe(self.config),
            "step": int(self.state.step),
            "config": self.config.to_dict(),
            "history": self.history.rows(),
        })
        if self.legacy_path.is_file() and jax.process_index() == 0:
            self.legacy_path.unlink()  # its run now lives on in the state folder
            logger.info("%s: saved as %s from now on", self.legacy_path, self.state_path)


class _Clock:
    """Training speed: wall time between logs, minus the time spent evaluating and saving."""

    def __init__(self, step: int):
        self.restart(step)

    def restart(self, step: int) -> None:
        self.t, self.step = time.perf_counter(), step

    def speed(self, step: int, global_batch: int) -> float:
        """Images per second since the last call (or restart); restarts the clock."""
        now = time.perf_counter()
        value = (global_batch * (step - self.step) / (now - self.t)
                 if step > self.step else math.nan)
        self.t, self.step = now, step
        return value

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t += time.perf_counter() - t0


# ------------------------------------------------------------------------ finetune()


def load_task(config):
    """The task of a config: a registered task (the smoke preset's ``digits`` too), or any
    name :func:`augreg_nb.tasks.get_task` knows."""
    return get_task(config.task, data_dir=config.data_dir)


def _upstream_checkpoint(config) -> str:
    """The checkpoint to load: a model name means its recommended i21k upstream."""
    if config.checkpoint in names.MODELS:
        rec = recommended_checkpoints(load_index(strict=False))
        filename = str(rec.loc[config.checkpoint, "filename"])
        logger.info("checkpoint %s: its recommended upstream is %s", config.checkpoint, filename)
        return filename
    return config.checkpoint


def load_start_params(config, num_classes: int) -> tuple[str, dict, str]:
    """(model name, adapted parameters, checkpoint stem) for the start of fine-tuning.

    ``checkpoint`` "" or "scratch": ``config.model`` randomly initialised (seed
    ``config.seed``), stem "scratch". With the sigmoid loss the head's bias starts at
    ``-log(classes)`` (the upstream configs' -6.9 for 1000 classes), so every class
    starts at a probability of about 1/classes instead of 1/2.
    """
    model, params, stem = _start_params(config, num_classes)
    if loss_name(config) == "sigmoid":
        params = upstream.with_head_bias(params, -math.log(num_classes))
    return model, params, stem


def _start_params(config, num_classes: int) -> tuple[str, dict, str]:
    if config_lib.is_scratch(config.checkpoint):
        module = create_model(config.model, num_classes)
        image = jnp.zeros((1, config.resolution, config.resolution, 3), jnp.float32)
        variables = jax.jit(lambda k: module.init(k, image, train=False))(
            jax.random.key(config.seed))
        return config.model, jax.device_get(dict(variables["params"])), SCRATCH_STEM
    resolved = sources.resolve_checkpoint(_upstream_checkpoint(config))
    model, flat = ckpt.load_resolved(resolved, model_name=config.model,
                                     num_classes=num_classes, resolution=config.resolution)
    return model, ckpt.unflatten(flat), resolved.name


def adapt_filename(stem: str, config) -> str:
    """The fine-tune's filename in the published naming (``{upstream}--{task}-steps_...``).

    Lengths without a published token (e.g. 60 steps) are written as the number of steps.
    Runs of the augreg recipe end in their settings, ``-augreg-aug_medium2-wd_0.1-do_0.1-sd_0.1``
    (:func:`augreg_nb.config.settings_suffix`; from scratch the stem is ``scratch_<model>``).
    """
    if stem == SCRATCH_STEM:
        stem = f"{SCRATCH_STEM}_{config_lib.slug(config.model.replace('/', '_'))}"
    try:
        name = names.parse_name(stem).finetuned(
            config.task, config.total_steps, config.base_lr, config.resolution).filename
    except ValueError:
        steps = (names.steps_token(config.total_steps) if config.total_steps in
                 names.STEPS_TOKENS else str(config.total_steps))
        name = (f"{stem}--{config.task}-steps_{steps}-lr_{names.format_float(config.base_lr)}"
                f"-res_{config.resolution}")
    return name + config_lib.settings_suffix(config)


def result_row(config, *, stem: str, model: str, params, final: dict) -> dict:
    """This run as a row of the index table (its 21 columns, in order)."""
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(name=model, filename=stem)
    try:
        up = names.parse_name(stem).upstream
        row.update(name=up.model, ds=up.pretraining, epochs=up.epochs, lr=up.lr, aug=up.aug,
                   wd=up.wd, do=up.do, sd=up.sd, filename=up.filename)
        known = _index_upstream_row(up.filename)
        if known is not None:
            row.update({k: known[k] for k in ("best_val", "final_val", "final_test")})
    except ValueError:
        pass
    if config_lib.uses_augreg(config):  # the run's own settings, by the index's names
        row.update(aug=config_lib.index_aug(config.aug), wd=float(config.wd),
                   do=float(config.do), sd=float(config.sd), lr=float(config.base_lr))
    row.update(
        adapt_ds=config.task, adapt_lr=float(config.base_lr),
        adapt_steps=int(config.total_steps), adapt_resolution=int(config.resolution),
        adapt_final_val=final.get("val_accuracy", math.nan),
        adapt_final_test=final.get("test_accuracy", math.nan),
        params=param_count(params), adapt_filename=adapt_filename(stem, config),
    )
    return {k: row[k] for k in COLUMNS}


def _index_upstream_row(filename: str) -> dict | None:
    """Upstream metrics of ``filename`` from the index table, if the table has the row."""
    try:
        # The table the user already has (env var or cache), else the shipped catalogue:
        # the end of a training run is no place for downloads.
        have = os.environ.get(ENV_INDEX) or index_cache_path().is_file()
        df = load_index(None if have else "catalogue", strict=False)
    except Exception as err:  # the index is optional here: the row just stays NaN
        logger.debug("no index table for the upstream metrics: %s", err)
        return None
    rows = df[df["filename"] == filename]
    return None if rows.empty else rows.iloc[0].to_dict()


def finished_result(config, workdir: Path, *, callbacks: Iterable[Any] = (), mesh=None
                    ) -> FinetuneResult | None:
    """The saved result of a run of ``config`` that finished in ``workdir``, or None.

    Read from ``state/`` and ``result.json`` alone: no checkpoint is resolved and no
    dataset is built. None when the folder holds no finished run of the same recipe (or
    one written before its state recorded the model), and when an export is asked for
    that the folder does not hold: then :func:`finetune` takes its usual path.
    """
    state_path, result_path = workdir / STATE_DIR, workdir / RESULT_FILE
    if not (saved(state_path) and result_path.is_file()):
        return None
    meta = read_meta(state_path)
    if (_stored_recipe(meta) != _recipe(config) or meta.get("step") != config.total_steps
            or "model" not in meta):
        return None
    try:
        row = run_folder.read_result(result_path)["result_row"]
    except run_folder.RunFolderError as err:
        logger.warning("%s; it is written again from the saved state", err)
        return None
    export_path = workdir / f"{row['adapt_filename']}.npz" if config.export else None
    if export_path is not None and not export_path.is_file():
        return None
    if not (isinstance(meta.get("num_classes"), int) and isinstance(meta["model"], str)):
        return None
    abstract = models.abstract_params(meta["model"], meta["num_classes"], config.resolution)
    tx = optimizer_for(config)
    mesh = mesh if mesh is not None else ip.data_mesh()
    like = ts.abstract_state(abstract, tx, mesh)  # replicated: read whole on every device
    try:
        state, _ = restore_state(state_path, like=like)
    except ValueError as err:  # another tree than this config builds: train as usual
        logger.debug("%s: not reusable as a finished run (%s)", state_path, err)
        return None
    history = History(meta.get("history", [])).frame()
    callbacks = list(callbacks)
    callbacks_lib.dispatch(callbacks, "on_train_begin", {
        "total_steps": config.total_steps, "start_step": config.total_steps,
        "workdir": str(workdir), "global_batch": config.global_batch,
        "devices": mesh.devices.size, "history": history})
    callbacks_lib.dispatch(callbacks, "on_train_end", history)
    logger.info("%s: finished before; val %.4f, test %.4f", row["adapt_filename"],
                row["adapt_final_val"], row["adapt_final_test"])
    return FinetuneResult(params=jax.tree.map(to_host, state.params), history=history,
                          result_row=row, export_path=export_path, workdir=workdir)


def _prepare_once(task) -> None:
    """Data a task writes on first use (the smoke task's digits) is written by process 0
    alone while the others wait, so that processes sharing a data folder never write the
    same files at once."""
    if task.build is None or jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        task.build(task)
    multihost_utils.sync_global_devices(f"prepared {task.name}")


def finetune(config, *, callbacks: Iterable[Any] = ()) -> FinetuneResult:
    """Fine-tune ``config.checkpoint`` on ``config.task`` with the paper's recipe.

    Resumes from ``config.workdir`` when it holds a state of the same recipe; a finished
    run returns its saved result without training. See the module docstring.
    """
    mesh = ip.data_mesh()
    config_lib.validate(config, mesh.devices.size)
    workdir = run_workdir(config)
    main = jax.process_index() == 0
    # One run per folder: process 0 holds the folder's lock (the others share its folder).
    with run_folder.locked(workdir) if main else contextlib.nullcontext():
        workdir = run_folder.claim(workdir, config, write=main)  # again, under the lock
        return _finetune(config, workdir, callbacks, mesh)


def run_workdir(config) -> Path:
    """The folder a run of ``config`` uses: ``config.workdir`` (or the default under the
    cache), checked against the config recorded there (:func:`augreg_nb.run_folder.claim`:
    a folder of another config is refused, or with ``if_different="new_folder"`` replaced
    by one of its own)."""
    workdir = Path(config.workdir) if config.workdir else config_lib.default_workdir(config)
    return run_folder.claim(workdir, config, write=False)


def _finetune(config, workdir: Path, callbacks, mesh) -> FinetuneResult:
    done = finished_result(config, workdir, callbacks=callbacks, mesh=mesh)
    if done is not None:
        return done
    task = load_task(config)
    _prepare_once(task)
    model_name, params, stem = load_start_params(config, task.num_classes)
    model = create_model(model_name, task.num_classes, dtype=jnp.dtype(config.dtype),
                         dropout_rate=float(_field(config, "do")),
                         stochastic_depth=float(_field(config, "sd")))
    aug = config_lib.index_aug(_field(config, "aug"))
    local_batch = ip.local_batch_size(config.global_batch, mesh)

    def train_batches(first_step: int) -> Iterator[dict]:
        ds = ip.make_train_dataset(
            task, resolution=config.resolution, batch_size=local_batch, seed=config.seed,
            preprocess_mode=config.train_preprocess, shuffle_buffer=config.shuffle_buffer,
            # Batch k is the k-th element of a seeded stream; the skipped examples are
            # dropped while still encoded, so resuming late in a run costs no decoding.
            start_batch=first_step - 1, aug=aug)
        return ds.as_numpy_iterator()

    evals = {
        split: ip.make_eval_iterator(task, split, resolution=config.resolution,
                                     batch_size=config.eval_batch, mesh=mesh,
                                     preprocess_mode=config.eval_preprocess)
        for split in ("val", "test")
    }
    data = TrainData(task.num_classes, train_batches,
                     {split: (lambda it=it: it) for split, it in evals.items()})
    # What a later call needs to answer from the saved state alone (finished_result).
    meta = {"model": model_name, "num_classes": task.num_classes, "stem": stem}
    out = _Run(config, model.apply, params, data, workdir, list(callbacks), mesh, meta).fit()
    row = result_row(config, stem=stem, model=model_name, params=out.params, final=out.final)
    export_path = None
    if config.export:
        export_path = workdir / f"{row['adapt_filename']}.npz"
        if jax.process_index() == 0:
            ckpt.save(out.params, export_path)
    if jax.process_index() == 0:
        write_json_atomic(workdir / RESULT_FILE, {"result_row": row, "final": out.final,
                                                  "export_path": str(export_path or "")})
    if jax.process_count() > 1:  # no process looks for the result before it is written
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"finetune done: {workdir}")
    logger.info("%s: val %.4f, test %.4f", row["adapt_filename"], row["adapt_final_val"],
                row["adapt_final_test"])
    return FinetuneResult(params=out.params, history=out.history, result_row=row,
                          export_path=export_path, workdir=workdir)
