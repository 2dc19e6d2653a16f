"""How much device memory the fine-tuning step needs, and which settings make it fit.

The step that :func:`augreg_nb.train.fit` runs (the same optimiser, the state sharded and
donated the same way, the same ``make_train_step``) is compiled for abstract inputs
(``jax.ShapeDtypeStruct`` with shardings: nothing is allocated), and XLA's compiled memory
analysis gives, per device:

- ``argument_bytes``: the step's inputs (the training state and this device's slice of
  the batch);
- ``output_bytes``: its outputs (the new state and the metrics);
- ``alias_bytes``: the part of the outputs written into donated inputs (the state);
- ``temp_bytes``: everything else live at some point (activations kept for the backward
  pass, gradients, their accumulator, the optimiser's temporaries).

Their sum less the aliased part, ``peak_bytes``, is what the device has to hold while the
step runs. ::

    from augreg_nb.config import get_config
    from augreg_nb.memory import GiB, smallest_fit, step_memory
    from augreg_nb.train import step_recipe
    config = get_config("cifar100-2500-0.01-384")          # global batch 512
    recipe = step_recipe(config)           # fit's optimiser, loss, Mixup, dropout
    m = step_memory(config, model="L/16", num_classes=100, recipe=recipe, micro_batches=8,
                    param_sharding="sharded", attention_impl="xla")
    m.peak_bytes / GiB                     # per device, on the devices JAX has here
    fit = smallest_fit(config, 16 * GiB, model="L/16", num_classes=100, recipe=recipe)
    fit.micro_batches, fit.param_sharding  # the fewest micro-batches that fit 16 GiB

The figures are the compiler's plan for the backend it compiles for: on the CPU (for
instance with 8 virtual devices, ``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
they describe the CPU's program, whose fusion and scheduling differ from a GPU's or TPU's;
bench/README.md measures the large models this way and says what that does and does not
tell. :func:`oom_advice` (what a run that ran out of memory is told) compiles on the
device that ran out, against the memory that device reports.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from augreg_nb import config as config_lib
from augreg_nb import input_pipeline as ip
from augreg_nb import train_step as ts
from augreg_nb.models import abstract_params, create_model

logger = logging.getLogger(__name__)

GiB = 2**30
#: The share of a device's memory left free when deciding what fits: the runtime's own
#: buffers, allocator fragmentation and the difference between the compiler's plan and
#: what a device really uses.
HEADROOM = 0.1
PARAM_SHARDINGS = ("replicated", "sharded")


@dataclasses.dataclass(frozen=True)
class StepRecipe:
    """What the step takes from a config besides model and placement:
    :func:`augreg_nb.train.step_recipe` gives the one :func:`augreg_nb.train.fit` uses."""

    tx: Any  #: the optimiser (optax)
    loss: str  #: "softmax" or "sigmoid"
    mixup_alpha: float = 0.0
    dropout: float = 0.0
    stochastic_depth: float = 0.0


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Per-device memory of one compiled fine-tuning step (bytes)."""

    model: str
    resolution: int
    global_batch: int
    num_devices: int
    param_sharding: str
    micro_batches: int
    dtype: str
    argument_bytes: int  #: inputs: training state + this device's slice of the batch
    output_bytes: int  #: outputs: the new state + metrics
    alias_bytes: int  #: outputs written into donated inputs
    temp_bytes: int  #: intermediates (activations, gradients, accumulator)
    state_bytes: int  #: the state's share of ``argument_bytes``, counted from its shardings
    compile_s: float = 0.0  #: seconds the compiler took

    @property
    def peak_bytes(self) -> int:
        """What the device holds while the step runs: arguments + outputs - aliased +
        temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def images_per_device(self) -> int:
        """Images each device processes at a time (one micro-batch's share)."""
        return self.global_batch // (self.num_devices * self.micro_batches)

    def fits(self, memory_bytes: float, headroom: float = HEADROOM) -> bool:
        """Whether the step fits a device of ``memory_bytes`` with ``headroom`` left free."""
        return self.peak_bytes <= (1.0 - headroom) * memory_bytes


@dataclasses.dataclass(frozen=True)
class Fit:
    """The settings that fit a memory size: the fewest micro-batches, with parameters
    replicated when that fits at all, else sharded. ``step`` is their measurement;
    ``tried`` every measurement the search made."""

    micro_batches: int
    param_sharding: str
    step: StepMemory
    memory_bytes: float
    headroom: float
    tried: tuple[StepMemory, ...]


def with_fields(config, **fields):
    """A copy of ``config`` with ``fields`` changed (the original is left alone)."""
    out = copy.deepcopy(config)
    for key, value in fields.items():
        out[key] = value
    return out


def step_memory(
    config,
    *,
    model: str,
    num_classes: int,
    recipe: StepRecipe,
    num_devices: int | None = None,
    attention_impl: str = "auto",
    **fields,
) -> StepMemory:
    """Per-device memory of the fine-tuning step of ``config`` for ``model``.

    ``recipe`` is the config's :func:`augreg_nb.train.step_recipe`. ``fields`` override
    config fields that leave the recipe as it is (``micro_batches``, ``param_sharding``,
    ``global_batch``, ``resolution``, ``dtype``, ...). The step runs on the first
    ``num_devices`` devices (default: all of them) as :func:`augreg_nb.train.fit` would run
    it there; ``attention_impl`` as in :func:`augreg_nb.models.create_model` ("xla" compiles
    the accelerators' attention on a CPU). Nothing is allocated: the state and the batch are
    abstract, only the compiler runs (once per setting and process).
    """
    config = with_fields(config, **fields)
    devices = jax.devices()
    num_devices = len(devices) if num_devices is None else int(num_devices)
    if num_devices > len(devices):
        raise ValueError(
            f"num_devices={num_devices} but JAX has {len(devices)} device(s); on a CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before JAX "
            "starts (python -m bench --only memory does this in a child interpreter)")
    config_lib.validate(config, num_devices)
    key = (json.dumps(config.to_dict(), sort_keys=True, default=str), model, num_classes,
           dataclasses.replace(recipe, tx=None), tuple(d.id for d in devices[:num_devices]),
           attention_impl)
    if key not in _MEASURED:
        _MEASURED[key] = _compile(config, model, num_classes, recipe, devices[:num_devices],
                                  attention_impl)
    return _MEASURED[key]


#: Measurements of this process by (config, model, classes, recipe, devices, attention):
#: the compiler's plan is a function of them (the optimiser, of the config).
_MEASURED: dict[tuple, StepMemory] = {}


def _compile(config, model, num_classes, recipe, devices, attention_impl) -> StepMemory:
    num_devices = len(devices)
    mesh = ip.data_mesh(devices)
    params = abstract_params(model, num_classes, config.resolution)
    tx = recipe.tx
    # As fit places it (train_step.create_state): the parameters' rule for every array.
    state_in = ts.abstract_state(params, tx, mesh, config.param_sharding)
    state_sharding = jax.tree.map(lambda x: x.sharding, state_in)
    batch_sh = ip.batch_sharding(mesh)
    res, n = config.resolution, config.global_batch
    batch_in = {"image": jax.ShapeDtypeStruct((n, res, res, 3), jnp.float32, sharding=batch_sh),
                "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sh)}
    module = create_model(model, num_classes, dtype=jnp.dtype(config.dtype),
                          dropout_rate=recipe.dropout,
                          stochastic_depth=recipe.stochastic_depth,
                          attention_impl=attention_impl)
    step = ts.make_train_step(
        module.apply, tx, mesh=mesh, num_classes=num_classes,
        micro_batches=config.micro_batches, lr_schedule=ts.schedule_from_config(config),
        state_sharding=state_sharding, seed=config.seed, mixup_alpha=recipe.mixup_alpha,
        loss=recipe.loss, unroll_convolutions=False)  # the accelerator's (rolled) loop
    started = time.perf_counter()
    stats = step.lower(state_in, batch_in).compile().memory_analysis()
    return StepMemory(
        model=model, resolution=res, global_batch=n, num_devices=num_devices,
        param_sharding=config.param_sharding, micro_batches=config.micro_batches,
        dtype=str(config.dtype),
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        state_bytes=shard_bytes(state_in), compile_s=time.perf_counter() - started)


def shard_bytes(tree) -> int:
    """Bytes of one device's shards of a tree of arrays or shape structs with shardings."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape)
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return int(total)


def micro_batch_options(global_batch: int, num_devices: int) -> list[int]:
    """Every ``micro_batches`` that splits ``global_batch`` evenly over ``num_devices``."""
    return [m for m in range(1, global_batch + 1) if global_batch % (m * num_devices) == 0]


def smallest_fit(
    config,
    memory_bytes: float,
    *,
    model: str,
    num_classes: int,
    recipe: StepRecipe,
    num_devices: int | None = None,
    headroom: float = HEADROOM,
    attention_impl: str = "auto",
    param_shardings: tuple[str, ...] = PARAM_SHARDINGS,
    at_least: int = 1,
    measured: dict | None = None,
    **fields,
) -> Fit | None:
    """The fewest micro-batches (from ``at_least`` on) whose step fits ``memory_bytes`` per
    device with ``headroom`` left free, trying ``param_shardings`` in order (replicated
    first: it needs no gathering of parameters); None when nothing fits.

    For models whose activations dominate (the large ones) memory falls as micro-batches
    grow, so each sharding is searched by bisection over the valid counts: a few
    compilations, and the count below the answer is among the measured ones. (For a tiny
    model the accumulation loop can cost more than the activations it saves; there the
    bisection may pass over a smaller count that also fits.)
    ``measured`` ((param_sharding, micro_batches) -> StepMemory) is reused and filled.
    """
    num_devices = len(jax.devices()) if num_devices is None else int(num_devices)
    base = with_fields(config, **fields)
    measured = {} if measured is None else measured
    options = [m for m in micro_batch_options(base.global_batch, num_devices) if m >= at_least]

    def measure(sharding: str, m: int) -> StepMemory:
        if (sharding, m) not in measured:
            logger.info("compiling the step of %s with micro_batches=%d, param_sharding=%s",
                        model, m, sharding)
            measured[sharding, m] = step_memory(
                base, model=model, num_classes=num_classes, recipe=recipe,
                num_devices=num_devices,
                attention_impl=attention_impl, micro_batches=m, param_sharding=sharding)
        return measured[sharding, m]

    for sharding in param_shardings:
        lo, hi = 0, len(options)  # hi: the first option known to fit (len: none yet)
        while lo < hi:
            mid = (lo + hi) // 2
            if measure(sharding, options[mid]).fits(memory_bytes, headroom):
                hi = mid
            else:
                lo = mid + 1
        if hi < len(options):
            return Fit(options[hi], sharding, measure(sharding, options[hi]), memory_bytes,
                       headroom, tuple(measured.values()))
    return None


def format_bytes(n: float) -> str:
    """``n`` bytes in GiB, MiB or KiB (binary units), e.g. "14.4 GiB"."""
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def device_memory(device=None) -> int | None:
    """The bytes a device lets JAX use (``memory_stats()["bytes_limit"]`` on GPUs and
    TPUs), or None where the backend does not say (the CPU)."""
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def model_of(config) -> str | None:
    """The registered model a config fine-tunes, as far as the config alone tells: its
    ``model``, a model name or ``fake:<model>`` as checkpoint, or an AugReg filename."""
    from augreg_nb import names
    from augreg_nb.models import list_models

    if config.get("model"):
        return str(config.model)
    checkpoint = str(config.get("checkpoint") or "")
    name = checkpoint.removeprefix("fake:")
    if name in list_models():
        return name
    try:
        return names.parse_name(checkpoint, any_task=True).upstream.model
    except ValueError:
        return None


def _num_classes(config) -> int:
    from augreg_nb.tasks import get_task

    try:
        return int(get_task(config.task).num_classes)
    except Exception:  # noqa: BLE001 - only the head's size depends on it
        return 1000


def halving_advice(config, num_devices: int) -> str:
    """Advice without a memory figure (a device that does not report its memory, the CPU):
    about halve the images each device processes at a time."""
    per_device = config.global_batch // (num_devices * config.micro_batches)
    options = [m for m in micro_batch_options(config.global_batch, num_devices)
               if m > config.micro_batches]
    if not options:
        return (
            f"each device already processes {per_device} image(s) at a time; use "
            "dtype=bfloat16, a smaller resolution, param_sharding=sharded or more devices"
        )
    # Activation memory scales with the micro-batch: halving it roughly halves the peak.
    target = next((m for m in options if m >= 2 * config.micro_batches), options[-1])
    return (
        f"each device processed {per_device} images at a time (global_batch="
        f"{config.global_batch} / {num_devices} device(s) / micro_batches="
        f"{config.micro_batches}); set micro_batches={target} "
        f"({config.global_batch // (num_devices * target)} per device; "
        f"--set micro_batches={target}), or use dtype=bfloat16. Valid values: {options[:8]}"
    )


def oom_advice(config, num_devices: int, *, recipe: StepRecipe,
               memory_bytes: float | None = None, model: str | None = None,
               num_classes: int | None = None, headroom: float = HEADROOM) -> str:
    """What to change after the step of ``config`` ran out of device memory.

    With the device's memory (``memory_bytes``, default :func:`device_memory`) and the
    model known, the step is compiled for larger ``micro_batches`` (parameters as
    configured, then sharded) and the advice names the fewest that :func:`smallest_fit`
    finds to fit, with its per-device figure: the rule bench/README.md's table follows.
    Otherwise (the CPU, an unknown model, a failed compilation) it falls back to
    :func:`halving_advice`.
    """
    memory_bytes = memory_bytes if memory_bytes is not None else device_memory()
    model = model or model_of(config)
    if not memory_bytes or model is None:
        return halving_advice(config, num_devices)
    num_classes = num_classes or _num_classes(config)
    current = config.micro_batches
    tries = [(config.param_sharding, current + 1)]
    if config.param_sharding == "replicated" and num_devices > 1:
        tries.append(("sharded", current))
    measured: dict = {}
    logger.warning("out of device memory: compiling the step of %s for more micro-batches to "
                   "find what fits %s", model, format_bytes(memory_bytes))
    try:
        fit = None
        for sharding, at_least in tries:
            fit = smallest_fit(config, memory_bytes, model=model, num_classes=num_classes,
                               recipe=recipe, num_devices=num_devices, headroom=headroom,
                               param_shardings=(sharding,), at_least=at_least,
                               measured=measured)
            if fit is not None:
                break
    except Exception as err:  # noqa: BLE001 - advice must not hide the memory error
        logger.warning("could not estimate the step's memory (%s)", err)
        return halving_advice(config, num_devices)
    budget = (f"{format_bytes((1 - headroom) * memory_bytes)} ({1 - headroom:.0%} of the "
              f"device's {format_bytes(memory_bytes)})")
    if fit is None:
        least = min(measured.values(), key=lambda s: s.peak_bytes)
        return (
            f"even {least.images_per_device} image(s) per device (micro_batches="
            f"{least.micro_batches}, param_sharding={least.param_sharding}) need "
            f"{format_bytes(least.peak_bytes)} per device, over {budget}; use "
            "dtype=bfloat16, a smaller resolution or more devices")
    sets = f"micro_batches={fit.micro_batches}"
    if fit.param_sharding != config.param_sharding:
        sets += f" param_sharding={fit.param_sharding}"
    flags = " ".join(f"--set {s}" for s in sets.split())
    return (
        f"{model} at {config.resolution} px with global_batch={config.global_batch} on "
        f"{num_devices} device(s): set {sets} ({flags}); its compiled step needs "
        f"{format_bytes(fit.step.peak_bytes)} per device ({fit.step.images_per_device} "
        f"image(s) at a time), within {budget}. bench/README.md has the table for the large "
        "models; dtype=bfloat16 also saves memory.")
