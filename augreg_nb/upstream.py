"""The upstream (pre-training) recipe of the AugReg paper: optimiser, schedule and loss.

The transfer recipe (SGD with momentum, :func:`augreg_nb.train_step.make_optimizer`) is what
fine-tuning uses; this module is the recipe that produced the pre-trained checkpoints, for
training from scratch with AugReg. What the paper (sections 3.3-3.4) and the authors'
configs (big_vision ``configs/vit_i21k.py`` and ``configs/vit_i1k.py``) state:

- Adam with b1 = 0.9, b2 = 0.999 (eps 1e-8, optax's default); big_vision keeps the first
  moment in bfloat16 (``mu_dtype``), the default here too. Batch 4096 in the paper.
- Peak learning rate 0.001, linear warm-up over 10k steps, then cosine decay to 0 (big_vision
  also offers a linear decay: ``decay="linear"``). The schedule is evaluated at optax's
  update count, so the first update applies rate 0, as in the transfer recipe.
- Gradients clipped at global norm 1 before Adam.
- Weight decay 0.1 or 0.03 (the ``wd`` of checkpoint names), "decoupled, but multiplied by
  the learning rate": every update subtracts ``lr(t) * wd * param``, i.e. optax's AdamW
  convention. big_vision's ``config.wd`` is the same decay written as ``wd * base_lr``
  (its ``wd = 0.0001`` is the paper's 0.1 at lr 0.001; the paper's Appendix A uses that
  convention too); :func:`big_vision_weight_decay` converts.
- Only parameters whose name ends in ``kernel`` decay (big_vision's default ``wd_mults``):
  dense, attention, patch-embedding, convolution and head kernels; never biases, norm
  scales, the position embedding or the class token.
- Loss: sigmoid cross-entropy on one-hot labels (``"sigmoid"``) for ImageNet-21k *and*
  ImageNet-1k in both configs, with the head bias initialised to -10 (21k) or -6.9 (1k,
  about -log 1000) so the initial sigmoid outputs are small. Softmax cross-entropy
  (``"softmax"``) is available for comparison.

Usage::

    from augreg_nb.upstream import make_upstream_optimizer, upstream_loss
    tx = make_upstream_optimizer(total_steps=93_000, weight_decay=0.1)
    loss = upstream_loss(logits, onehot_labels, "sigmoid")
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from augreg_nb import protocol
from augreg_nb.train_step import learning_rate as cosine_learning_rate
from augreg_nb.train_step import sigmoid_cross_entropy, softmax_cross_entropy

#: The paper's pre-training constants.
BASE_LR = protocol.PRETRAIN_LR
WARMUP_STEPS = protocol.PRETRAIN_WARMUP_STEPS
ADAM_B1 = 0.9
ADAM_B2 = 0.999
GRAD_CLIP = protocol.PRETRAIN_GRAD_CLIP
BATCH_SIZE = protocol.PRETRAIN_BATCH
#: The two weight decays of the sweep (paper convention: multiplied by the learning rate).
WEIGHT_DECAYS = protocol.PRETRAIN_WEIGHT_DECAYS
#: Loss and initial head bias per pre-training set (index names), from the authors' configs.
LOSSES = {"i21k": "sigmoid", "i21k_30": "sigmoid", "i1k": "sigmoid"}
HEAD_BIAS_INIT = {"i21k": -10.0, "i21k_30": -10.0, "i1k": -6.9}
DECAYS = ("cosine", "linear")


def upstream_learning_rate(step, *, base_lr: float = BASE_LR, total_steps: int,
                           warmup_steps: int = WARMUP_STEPS, decay: str = "cosine"):
    """``lr(step)`` for optax's update count ``step`` (0 before the first update): linear
    warm-up, then cosine (or linear) decay to 0 at ``total_steps``."""
    if decay == "cosine":
        return cosine_learning_rate(step, base_lr=base_lr, total_steps=total_steps,
                                    warmup_steps=warmup_steps)
    if decay != "linear":
        raise ValueError(f"unknown decay {decay!r}; use one of {DECAYS}")
    xp = jnp if isinstance(step, jax.Array) else np
    step = xp.asarray(step, dtype=xp.float32)
    progress = xp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    lr = base_lr * (1.0 - progress)
    if warmup_steps:
        lr = lr * xp.minimum(1.0, step / warmup_steps)
    return lr


def weight_decay_mask(params):
    """True for the parameters that decay: those whose name ends in ``kernel``."""
    def is_kernel(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", last))
        return str(name) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def big_vision_weight_decay(weight_decay: float, base_lr: float = BASE_LR) -> float:
    """The paper's weight decay in big_vision's ``config.wd`` convention (``wd * lr``)."""
    return float(weight_decay) * float(base_lr)


def make_upstream_optimizer(
    total_steps: int,
    *,
    base_lr: float = BASE_LR,
    weight_decay: float = 0.1,
    warmup_steps: int = WARMUP_STEPS,
    decay: str = "cosine",
    grad_clip: float | None = GRAD_CLIP,
    b1: float = ADAM_B1,
    b2: float = ADAM_B2,
    mu_dtype: str | None = "bfloat16",
) -> optax.GradientTransformation:
    """The paper's pre-training optimiser: clip, Adam, decoupled weight decay on kernels,
    learning-rate schedule.

    Each update is ``-lr(t) * (adam_direction + weight_decay * param)`` with ``param``'s
    decay only for kernels (:func:`weight_decay_mask`); ``weight_decay`` is the value in
    checkpoint names (0.1, 0.03). ``mu_dtype=None`` keeps Adam's first moment in float32.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if total_steps > 1 and not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}); "
            "the paper warms up for 10k steps of runs of about 90k (i1k) to 930k (i21k) steps"
        )
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; use one of {DECAYS}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    def schedule(count):
        return upstream_learning_rate(count, base_lr=base_lr, total_steps=total_steps,
                                      warmup_steps=warmup_steps, decay=decay)

    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, mu_dtype=None if mu_dtype is None
                                     else jnp.dtype(mu_dtype)))
    if weight_decay:
        parts.append(optax.add_decayed_weights(float(weight_decay), mask=weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def upstream_loss(logits, labels, loss: str = "sigmoid"):
    """Mean over the batch of the per-example loss (``"sigmoid"`` or ``"softmax"``);
    ``labels`` are one-hot or Mixup-mixed rows, shape (batch, classes)."""
    if loss == "sigmoid":
        return jnp.mean(sigmoid_cross_entropy(logits, labels))
    if loss == "softmax":
        return jnp.mean(softmax_cross_entropy(logits, labels))
    raise ValueError(f"unknown loss {loss!r}; use 'sigmoid' or 'softmax'")


def with_head_bias(params, value: float):
    """A copy of ``params`` whose ``head/bias`` is ``value`` everywhere (the configs' initial
    head bias for the sigmoid loss, :data:`HEAD_BIAS_INIT`)."""
    if "head" not in params or "bias" not in params["head"]:
        raise ValueError("the parameters have no head/bias to initialise")
    head = dict(params["head"])
    head["bias"] = jnp.full_like(head["bias"], value)
    return {**params, "head": head}
