"""The learning-rate schedule and the optimiser follow the protocol's formula exactly."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb.train_step import learning_rate, make_optimizer


def reference_lr(step, base, total, warmup):
    """The protocol's formula, written out independently with the math module."""
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return base * 0.5 * (1 + math.cos(math.pi * progress)) * min(1.0, step / warmup)


@pytest.mark.parametrize("total,warmup", [(2500, 200), (500, 100), (10000, 500), (20000, 500)])
def test_schedule_at_step_one_warmup_mid_and_end(total, warmup):
    base = 0.03
    mid = warmup + (total - warmup) // 2
    expected = {
        1: base / warmup,                     # first step: 1/warmup of the peak
        warmup: base,                         # end of warm-up: the peak
        mid: base * 0.5 * (1 + math.cos(math.pi * (mid - warmup) / (total - warmup))),
        total: 0.0,                           # cosine reaches 0 at the last step
    }
    for step, want in expected.items():
        got = float(learning_rate(step, base_lr=base, total_steps=total, warmup_steps=warmup))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), step
        assert got == pytest.approx(reference_lr(step, base, total, warmup), rel=1e-6, abs=1e-12)
    # Exactly half the peak half-way through the decay (when it is a whole step).
    if (total - warmup) % 2 == 0:
        half = float(learning_rate(mid, base_lr=base, total_steps=total, warmup_steps=warmup))
        assert half == pytest.approx(base / 2, rel=1e-6)


def test_schedule_is_traceable_and_matches_numpy():
    steps = jnp.arange(1, 2501)
    got = jax.jit(lambda s: learning_rate(s, base_lr=0.01, total_steps=2500, warmup_steps=200))(
        steps
    )
    want = np.array([reference_lr(int(s), 0.01, 2500, 200) for s in steps])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-9)
    assert np.all(np.diff(want[:200]) > 0) and np.all(np.diff(want[200:]) <= 0)


def test_optimizer_is_sgd_momentum_with_step_one_lr_and_no_weight_decay():
    base, total, warmup = 0.1, 100, 10
    tx = make_optimizer(base_lr=base, total_steps=total, warmup_steps=warmup,
                        momentum_dtype="float32")
    params = {"w": jnp.ones(3, jnp.float32)}
    g1 = {"w": jnp.array([0.1, -0.2, 0.3], jnp.float32)}   # norm < 1: not clipped
    g2 = {"w": jnp.array([0.0, 0.4, -0.1], jnp.float32)}
    state = tx.init(params)
    u1, state = tx.update(g1, state, params)
    u2, state = tx.update(g2, state, params)
    lr1, lr2 = reference_lr(1, base, total, warmup), reference_lr(2, base, total, warmup)
    np.testing.assert_allclose(u1["w"], -lr1 * np.asarray(g1["w"]), rtol=1e-6)
    np.testing.assert_allclose(
        u2["w"], -lr2 * (np.asarray(g2["w"]) + 0.9 * np.asarray(g1["w"])), rtol=1e-6
    )


def test_gradients_are_clipped_to_global_norm_one():
    tx = make_optimizer(base_lr=1.0, total_steps=10, warmup_steps=1, momentum_dtype="float32")
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 0.0])}  # global norm 5
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], [-0.6, -0.8], rtol=1e-6)


def test_momentum_is_kept_in_bfloat16_by_default():
    tx = make_optimizer(base_lr=0.01, total_steps=10, warmup_steps=1)
    state = tx.init({"w": jnp.zeros((4, 4), jnp.float32)})
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(state) if leaf.ndim == 2}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
