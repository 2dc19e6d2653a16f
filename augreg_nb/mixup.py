"""Mixup as the AugReg pre-training applied it: one mixing weight per batch, on the device.

The paper's augmentation settings give Mixup's ``alpha`` (0, 0.2, 0.5 or 0.8; the table is
:data:`augreg_nb.names.AUGMENTATIONS`). The authors' trainer (big_vision) mixes each batch
with itself shifted by one example:

- draw ``b ~ Beta(alpha, alpha)`` once per batch and keep ``a = max(b, 1 - b)``, so the
  original example always has the larger weight (a >= 0.5);
- ``images = a * images + (1 - a) * roll(images, 1)`` and the same for the one-hot
  ``labels``, where ``roll`` moves example ``i`` to ``i + 1`` (the last wraps to the first);
- on several devices the reference mixes each device's slice of the batch on its own (the
  roll stays within the slice) with the same ``a`` everywhere: pass ``shards`` to do the same;
- with ``alpha = 0`` nothing happens (the reference skips Mixup).

The key is explicit, so a training step derives it from its own key (e.g. ``fold_in`` of the
step), and the function is jittable with ``alpha`` and ``shards`` static::

    from augreg_nb.mixup import mixup
    images, labels, weight = mixup(key, images, jax.nn.one_hot(y, 10), alpha=0.5)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup(key, images, labels, alpha: float, *, shards: int = 1):
    """Mix a batch with itself rolled by one example; returns (images, labels, weight).

    ``images`` is (N, ...) float, ``labels`` (N, classes) float (one-hot or soft), ``alpha``
    the Beta parameter (0 returns the inputs and weight 1). ``shards`` splits the batch into
    that many equal contiguous slices, each rolled on its own, as per-device mixing does.
    ``weight`` is ``a``, the weight of the original example (>= 0.5).
    """
    alpha = float(alpha)
    if alpha < 0:
        raise ValueError(f"Mixup alpha must be >= 0, got {alpha}")
    labels = jnp.asarray(labels)
    if labels.ndim < 2 or not jnp.issubdtype(labels.dtype, jnp.floating):
        raise ValueError(
            f"Mixup mixes one-hot labels: expected float labels of shape (batch, classes), "
            f"got {labels.dtype} {labels.shape}; convert with jax.nn.one_hot(labels, classes)"
        )
    images = jnp.asarray(images)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"images and labels disagree on the batch size: {n} vs "
                         f"{labels.shape[0]}")
    if shards < 1 or n % shards:
        raise ValueError(f"the batch of {n} does not split into {shards} equal shards")
    if alpha == 0:
        return images, labels, jnp.ones((), jnp.float32)
    b = jax.random.beta(key, alpha, alpha)
    a = jnp.maximum(b, 1.0 - b)

    def mix(x):
        parts = x.reshape(shards, n // shards, *x.shape[1:])
        rolled = jnp.roll(parts, 1, axis=1).reshape(x.shape)
        return (a * x + (1.0 - a) * rolled).astype(x.dtype)

    return mix(images), mix(labels), a
