"""Mixup against its formula in numpy; dropout and stochastic depth in the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb.mixup import mixup


def _batch(n=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 5, 5, 3)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return images, labels


def test_mixup_matches_the_formula():
    images, labels = _batch()
    key = jax.random.PRNGKey(3)
    out_images, out_labels, a = mixup(key, images, labels, alpha=0.5)
    a = float(a)
    b = float(jax.random.beta(key, 0.5, 0.5))  # the one draw of the batch
    assert a == pytest.approx(max(b, 1 - b)) and a >= 0.5
    # Example i is mixed with example i - 1 (the first with the last).
    prev = np.concatenate([images[-1:], images[:-1]])
    np.testing.assert_allclose(np.asarray(out_images), a * images + (1 - a) * prev,
                               rtol=1e-6, atol=1e-6)
    prev_labels = np.concatenate([labels[-1:], labels[:-1]])
    np.testing.assert_allclose(np.asarray(out_labels), a * labels + (1 - a) * prev_labels,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_labels).sum(-1), 1.0, rtol=1e-6)


def test_mixup_per_shard_rolls_within_each_slice():
    images, labels = _batch(n=8)
    out_images, _, a = mixup(jax.random.PRNGKey(0), images, labels, 0.8, shards=2)
    a = float(a)
    want = np.empty_like(images)
    for s in (slice(0, 4), slice(4, 8)):
        part = images[s]
        want[s] = a * part + (1 - a) * np.concatenate([part[-1:], part[:-1]])
    np.testing.assert_allclose(np.asarray(out_images), want, rtol=1e-6, atol=1e-6)


def test_mixup_weight_follows_the_folded_beta_distribution():
    # With alpha = 1, b is uniform on [0, 1] and a = max(b, 1 - b) is uniform on
    # [0.5, 1]: mean 0.75, variance 1/48.
    images, labels = _batch(n=2)
    draw = jax.jit(lambda k: mixup(k, images, labels, 1.0)[2])
    weights = np.array([float(draw(k)) for k in jax.random.split(jax.random.PRNGKey(1), 400)])
    assert weights.min() >= 0.5 and weights.max() <= 1.0
    assert abs(weights.mean() - 0.75) < 0.02
    assert abs(weights.var() - 1 / 48) < 0.006


def test_mixup_alpha_zero_is_the_identity_and_bad_input_is_named():
    images, labels = _batch()
    out_images, out_labels, a = mixup(jax.random.PRNGKey(0), images, labels, 0.0)
    np.testing.assert_array_equal(np.asarray(out_images), images)
    np.testing.assert_array_equal(np.asarray(out_labels), labels)
    assert float(a) == 1.0
    with pytest.raises(ValueError, match="one_hot"):
        mixup(jax.random.PRNGKey(0), images, jnp.arange(6), 0.2)
    with pytest.raises(ValueError, match="equal shards"):
        mixup(jax.random.PRNGKey(0), images, labels, 0.2, shards=4)
    with pytest.raises(ValueError, match="alpha"):
        mixup(jax.random.PRNGKey(0), images, labels, -1.0)
