"""The pieces of one fine-tuning step: schedule, optimiser, device mesh, train and eval steps.

    from augreg_nb.input_pipeline import data_mesh, put_batch
    from augreg_nb.train_step import (learning_rate, make_optimizer, make_train_step,
                                      make_eval_step)
    lr = learning_rate(1, base_lr=0.01, total_steps=2500, warmup_steps=200)  # 5e-05
    rates = applied_learning_rates(base_lr=0.01, total_steps=2500, warmup_steps=200)
    # rates[k - 1]: the rate update k applies; rates[0] == 0.0, rates[-1] ~ 5e-09
    mesh = data_mesh()                          # all devices of all hosts, one "data" axis
    tx = make_optimizer(base_lr=0.01, total_steps=2500, warmup_steps=200)
    train_step = make_train_step(model.apply, tx, mesh=mesh, num_classes=100,
                                 micro_batches=8, state_sharding=..., seed=0)
    state, metrics = train_step(state, put_batch({"image": images, "label": labels}, mesh))

The recipe (identical for every task): SGD with momentum 0.9 (momentum buffer in bfloat16
by default), gradients clipped at global norm 1.0, no weight decay, softmax cross-entropy
on one-hot labels, and the learning rate

    progress = clip((step - warmup) / (total - warmup), 0, 1)
    lr(step) = base * 0.5 * (1 + cos(pi * progress)) * min(1, step / warmup)

applied as the authors' code (vit_jax, big_vision) applies it: optax evaluates the schedule
at its update count, which starts at 0, so update k (k = 1..total) uses lr(k - 1). The first
update therefore has rate 0 (it only fills the momentum buffer), update warmup + 1 has the
peak rate, and the last update has lr(total - 1), a small positive rate; lr(total) = 0 is
never applied. Batches are split over the mesh's "data" axis (data parallel);
within a step, ``micro_batches`` slices are processed one after the other and their
gradients averaged (gradient accumulation), so the update does not depend on how the global
batch is split over devices or micro-batches, only on the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from augreg_nb.input_pipeline import DATA_AXIS, batch_sharding
from augreg_nb.mixup import mixup
from augreg_nb.models import forward_chunk, in_chunks
from augreg_nb.train_state import TrainState


def learning_rate(step, *, base_lr: float, total_steps: int, warmup_steps: int):
    """The paper's schedule ``lr(step)``: linear warm-up, then cosine decay to 0 at ``total``.

    ``step`` is the optimiser's update count *before* an update (0 for the first one), so
    update k applies ``learning_rate(k - 1)`` (see :func:`applied_learning_rate`). Works on
    Python numbers, numpy and jax arrays (traceable).
    """
    xp = jnp if isinstance(step, jax.Array) else np
    step = xp.asarray(step, dtype=xp.float32)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = xp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    lr = base_lr * 0.5 * (1.0 + xp.cos(math.pi * progress))
    if warmup_steps:
        lr = lr * xp.minimum(1.0, step / warmup_steps)
    return lr


def applied_learning_rate(update, *, base_lr: float, total_steps: int, warmup_steps: int):
    """The rate that update number ``update`` (1 = the first) applies: ``lr(update - 1)``.

    This is the value the training history records as "lr" for that step.
    """
    return learning_rate(
        update - 1, base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps
    )


def applied_learning_rates(*, base_lr: float, total_steps: int, warmup_steps: int):
    """float32 array of the ``total_steps`` rates applied by updates 1..total_steps."""
    return np.asarray(
        learning_rate(np.arange(total_steps), base_lr=base_lr, total_steps=total_steps,
                      warmup_steps=warmup_steps),
        np.float32,
    )


def make_optimizer(
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    momentum: float = 0.9,
    momentum_dtype: str = "bfloat16",
    grad_clip: float = 1.0,
) -> optax.GradientTransformation:
    """SGD with momentum, global-norm clipping and the paper's schedule (no weight decay).

    The schedule is evaluated at optax's update count (0 for the first update), exactly as in
    vit_jax and big_vision: update k applies ``learning_rate(k - 1)``. The count lives in the
    optimiser state, so a resumed run continues the schedule where it stopped.
    """

    def schedule(count):
        return learning_rate(
            count, base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps
        )

    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts += [
        optax.trace(decay=momentum, accumulator_dtype=jnp.dtype(momentum_dtype)),
        optax.scale_by_learning_rate(schedule),
    ]
    return optax.chain(*parts)


def optimizer_from_config(config) -> optax.GradientTransformation:
    """:func:`make_optimizer` with the fields of a fine-tuning config."""
    return make_optimizer(
        base_lr=config.base_lr,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
        momentum=config.momentum,
        momentum_dtype=config.momentum_dtype,
        grad_clip=config.grad_clip,
    )


def softmax_cross_entropy(logits, onehot):
    """Per-example cross-entropy of ``logits`` against one-hot (or soft) labels."""
    return -jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def sigmoid_cross_entropy(logits, onehot):
    """Per-example sum over classes of the binary cross-entropy of ``sigmoid(logits)``."""
    logits = logits.astype(jnp.float32)
    return -jnp.sum(onehot * jax.nn.log_sigmoid(logits)
                    + (1.0 - onehot) * jax.nn.log_sigmoid(-logits), axis=-1)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(params, mesh: Mesh, mode: str = "replicated", min_size: int = 2**18):
    """Shardings for a parameter tree: all replicated, or ("sharded") each array of at least
    ``min_size`` elements split over the "data" axis along its largest divisible axis."""
    n = mesh.shape[DATA_AXIS]

    def one(x):
        if mode == "replicated" or n == 1 or np.size(x) < min_size:
            return replicated(mesh)
        for axis in np.argsort(np.shape(x))[::-1]:
            if np.shape(x)[axis] % n == 0:
                spec = [None] * np.ndim(x)
                spec[axis] = DATA_AXIS
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    if mode not in ("replicated", "sharded"):
        raise ValueError(f"param_sharding={mode!r} must be 'replicated' or 'sharded'")
    return jax.tree.map(one, params)


def state_shardings(params, tx: optax.GradientTransformation, mesh: Mesh,
                    mode: str = "replicated") -> TrainState:
    """Shardings for the whole training state of ``params`` under optimiser ``tx``: the rule
    of :func:`param_shardings` applied to every array of the state. With ``"sharded"`` the
    optimiser's arrays shaped like the parameters (SGD's momentum, Adam's two moments) are
    split exactly as their parameters are, so a device holds 1/n of them too; step counters
    and other small arrays stay replicated. ``params`` may be abstract
    (``jax.ShapeDtypeStruct``)."""
    return jax.tree.map(lambda x: x.sharding, abstract_state(params, tx, mesh, mode))


def abstract_state(params, tx: optax.GradientTransformation, mesh: Mesh,
                   mode: str = "replicated") -> TrainState:
    """The training state of ``params`` as ``jax.ShapeDtypeStruct`` leaves carrying the
    shardings of :func:`state_shardings`: what a restore or a compilation needs, with
    nothing allocated."""
    abstract = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, param_shardings(abstract, mesh, mode))


def create_state(params, tx: optax.GradientTransformation, mesh: Mesh,
                 mode: str = "replicated") -> tuple[TrainState, TrainState]:
    """A new training state placed by :func:`state_shardings`, and those shardings."""
    sharding = state_shardings(params, tx, mesh, mode)
    placed = jax.device_put(params, sharding.params)
    state = jax.jit(lambda p: TrainState.create(p, tx), out_shardings=sharding)(placed)
    return state, sharding


def _onehot(labels, num_classes: int):
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return labels.astype(jnp.float32)


def _unroll_loops(grad_fn, *args, enabled: bool | None = None) -> bool:
    """Whether loops over ``grad_fn`` (micro-batches, chunks) should be unrolled: on CPUs
    (``enabled`` None decides by JAX's backend) when the gradient has a convolution.

    XLA's CPU backend runs the weight gradient of a convolution inside a loop 50-70x slower
    than outside one (a 3x3 convolution's weight gradient: 18.4 s in ``lax.scan``, 0.36 s
    unrolled), which made micro-batches of the ResNet+ViT hybrids about 10x slower per image
    (R+Ti/16: 2.8 against 26.7 img/s); unrolled, the loop costs nothing. Transformers keep
    the rolled loop, which compiles once. ``grad_fn`` is traced on ``args``, not run.
    """
    if not (jax.default_backend() == "cpu" if enabled is None else enabled):
        return False
    return "conv_general_dilated" in str(jax.make_jaxpr(grad_fn)(*args))


def make_train_step(
    apply_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh,
    num_classes: int,
    micro_batches: int = 1,
    lr_schedule: Callable[[Any], Any] | None = None,
    state_sharding=None,
    seed: int = 0,
    donate: bool = True,
    mixup_alpha: float = 0.0,
    loss: str = "softmax",
    chunk: int = 0,
    unroll_convolutions: bool | None = None,
):
    """A jitted ``step(state, batch) -> (state, metrics)`` over ``mesh``.

    ``loss`` is "softmax" (the transfer recipe) or "sigmoid" (the upstream recipe, see
    :mod:`augreg_nb.upstream`). ``mixup_alpha`` > 0 mixes the whole global batch with itself
    rolled by one example (:func:`augreg_nb.mixup.mixup`, one weight per step, its key
    ``fold_in(fold_in(key(seed), 0), update)``, apart from the dropout keys) before it is split
    into micro-batches, so the update still does not depend on devices or micro-batches (the
    authors mix each device's slice on its own; this is the one-device case of theirs).
    The dropout / stochastic-depth key of update k is ``fold_in(key(seed), k)`` (micro-batch
    i: ``fold_in`` of that with i); models without dropout ignore it.

    ``batch`` holds "image" (N, H, W, 3) and "label" (N,) ints or (N, C) one-hot, with N
    the global batch split over the "data" axis. The N images are processed in
    ``micro_batches`` slices of N / micro_batches (each slice is spread over all devices) and
    their gradients averaged before clipping and the SGD update. ``metrics`` holds the mean
    loss, the gradient's global norm (before clipping) and the learning rate of the step:
    ``lr_schedule(k)`` for update k = ``state.step + 1``, which should be the rate ``tx``
    applies in that update (:func:`schedule_from_config` gives exactly that).

    A non-finite loss or gradient leaves parameters and optimiser state unchanged and
    records the step in ``state.nonfinite_step``; later steps are then no-ops, so the last
    good state survives even though the state buffers are donated.

    ``chunk`` > 0 (for one device; :func:`fit` passes ``models.forward_chunk()`` on a CPU
    when the model has no dropout or stochastic depth) runs each micro-batch whose rows are
    a multiple of ``chunk`` as sequential chunks of ``chunk`` images, gradients averaged:
    the same update up to float rounding, and faster on CPUs (bench/README.md). Chunk j of
    a micro-batch gets ``fold_in`` of its dropout key with j, so a stochastic model would
    draw other (still independent) masks than without chunks.

    ``unroll_convolutions``: unroll the micro-batch loop when the gradient has a
    convolution (:func:`_unroll_loops`); None does so on CPUs only, False keeps the loop (a
    memory estimate of an accelerator's step compiled on CPU devices).
    """
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0 images, got {chunk}")
    micro_spec = NamedSharding(mesh, P(None, DATA_AXIS))
    key0 = jax.random.key(seed)
    lr_of = lr_schedule or (lambda step: jnp.full((), jnp.nan, jnp.float32))

    if loss not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown loss {loss!r}; use 'softmax' or 'sigmoid'")
    per_example = softmax_cross_entropy if loss == "softmax" else sigmoid_cross_entropy

    def loss_fn(params, images, onehot, rng):
        logits = apply_fn({"params": params}, images, train=True, rngs={"dropout": rng})
        return jnp.mean(per_example(logits, onehot))

    plain_grad_fn = jax.value_and_grad(loss_fn)

    def grad_fn(params, images, onehot, rng, unroll):
        n = images.shape[0]
        if not chunk or n <= chunk or n % chunk or unroll:
            # Convolutions (unroll): chunks would be a second unrolled loop, compiled again.
            return plain_grad_fn(params, images, onehot, rng)
        k = n // chunk

        def body(carry, xs):
            loss_sum, grad_sum = carry
            j, x, y = xs
            loss_j, grads_j = plain_grad_fn(params, x, y, jax.random.fold_in(rng, j))
            return (loss_sum + loss_j, jax.tree.map(jnp.add, grad_sum, grads_j)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        xs = (jnp.arange(k), images.reshape((k, chunk) + images.shape[1:]),
              onehot.reshape((k, chunk) + onehot.shape[1:]))
        (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), xs)
        # Equal chunks: the micro-batch's mean loss is the mean of the chunks' means.
        grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grad_sum, params)
        return loss_sum / k, grads

    def step(state: TrainState, batch):
        images = batch["image"]
        onehot = _onehot(batch["label"], num_classes)
        rng = jax.random.fold_in(key0, state.step + 1)
        if mixup_alpha:
            mix_key = jax.random.fold_in(jax.random.fold_in(key0, 0), state.step + 1)
            images, onehot, _ = mixup(mix_key, images, onehot, mixup_alpha)
        # Traced once on one image: whether this gradient's loops are unrolled.
        unroll = (micro_batches > 1 or chunk > 0) and _unroll_loops(
            plain_grad_fn, state.params, images[:1], onehot[:1], rng,
            enabled=unroll_convolutions)
        if micro_batches == 1:
            loss, grads = grad_fn(state.params, images, onehot, rng, unroll)
        else:
            n = images.shape[0]

            def split(x):  # (N, ...) -> (M, N/M, ...); slice i = rows i, i+M, i+2M, ...
                x = x.reshape((n // micro_batches, micro_batches) + x.shape[1:])
                return jax.lax.with_sharding_constraint(jnp.swapaxes(x, 0, 1), micro_spec)

            def body(carry, xs):
                loss_sum, grad_sum = carry
                i, x, y = xs
                loss_i, grads_i = grad_fn(state.params, x, y, jax.random.fold_in(rng, i),
                                          unroll)
                return (loss_sum + loss_i, jax.tree.map(jnp.add, grad_sum, grads_i)), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            xs = (jnp.arange(micro_batches), split(images), split(onehot))
            (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), xs,
                                            unroll=micro_batches if unroll else 1)
            loss = loss / micro_batches
            grads = jax.tree.map(lambda g: g / micro_batches, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.nonfinite_step == 0)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        new_state = TrainState(
            step=jnp.where(ok, state.step + 1, state.step),
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            nonfinite_step=jnp.where(
                (state.nonfinite_step == 0) & ~ok, state.step + 1, state.nonfinite_step
            ),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_of(state.step + 1)}
        return new_state, metrics

    jit_kwargs = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is not None:
        jit_kwargs["in_shardings"] = (state_sharding, batch_sharding(mesh))
        jit_kwargs["out_shardings"] = (state_sharding, replicated(mesh))
    return jax.jit(step, **jit_kwargs)


def schedule_from_config(config) -> Callable[[Any], Any]:
    """update number k (1 = the first) -> the rate that update applies, ``lr(k - 1)``."""
    return lambda update: applied_learning_rate(
        update,
        base_lr=config.base_lr,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
    )


def make_eval_step(apply_fn: Callable[..., Any], *, mesh: Mesh, num_classes: int):
    """A jitted ``eval_step(params, batch) -> (correct, loss_sum, count)``.

    ``batch`` holds "image", "label" and "mask" (1 for real examples, 0 for padding); only
    real examples count, so a padded last batch gives exact accuracies. On one CPU device
    the batch runs through the model in chunks (``models.in_chunks``, faster there).
    """
    chunk = forward_chunk() if mesh.devices.size == 1 else 0
    logits_fn = in_chunks(lambda params, x: apply_fn({"params": params}, x, train=False), chunk)

    def step(params, batch):
        logits = logits_fn(params, batch["image"])
        onehot = _onehot(batch["label"], num_classes)
        mask = batch["mask"].astype(jnp.float32)
        correct = (jnp.argmax(logits, -1) == jnp.argmax(onehot, -1)).astype(jnp.int32)
        mask_i = batch["mask"].astype(jnp.int32)
        loss = softmax_cross_entropy(logits, onehot)
        return jnp.sum(correct * mask_i), jnp.sum(loss * mask), jnp.sum(mask_i)

    return jax.jit(step, out_shardings=(replicated(mesh),) * 3)
