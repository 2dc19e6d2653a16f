"""The learning-rate schedule and the optimiser, against the protocol's formula applied as the
authors' code applies it (optax's update count starts at 0: update k uses lr(k - 1))."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augreg_nb.train_step import (
    applied_learning_rate,
    applied_learning_rates,
    learning_rate,
    make_optimizer,
)

PUBLISHED_LENGTHS = [(500, 100), (2500, 200), (10000, 500), (20000, 500)]  # Table 4


def reference_lr(step, base, total, warmup):
    """The protocol's formula, written out independently with the math module."""
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return base * 0.5 * (1 + math.cos(math.pi * progress)) * min(1.0, step / warmup)


def authors_rates(base, total, warmup):
    """Rates of updates 1..total in vit_jax / big_vision: optax calls the schedule with its
    update count, which is 0 at the first update."""
    rates = []
    count = 0
    for _ in range(total):
        warm = min(1.0, count / warmup)
        progress = min(max((count - warmup) / (total - warmup), 0.0), 1.0)
        rates.append(base * warm * 0.5 * (1.0 + math.cos(math.pi * progress)))
        count += 1
    return np.array(rates)


def rates_the_optimizer_applies(base, total, warmup):
    """Run the package's optimiser for ``total`` updates (momentum 0 so that each update is
    -rate * gradient) and read back the rate of every update."""
    tx = make_optimizer(base_lr=base, total_steps=total, warmup_steps=warmup, momentum=0.0,
                        momentum_dtype="float32")
    params = {"w": jnp.zeros((), jnp.float32)}
    grad = {"w": jnp.float32(0.5)}  # global norm 0.5: not clipped; x 0.5 is exact

    def one(state, _):
        updates, state = tx.update(grad, state, params)
        return state, -2.0 * updates["w"]

    _, rates = jax.jit(lambda s: jax.lax.scan(one, s, None, length=total))(tx.init(params))
    return np.asarray(rates)


@pytest.mark.parametrize("total,warmup", PUBLISHED_LENGTHS)
def test_every_applied_rate_matches_the_authors_sequence(total, warmup):
    base = 0.03
    want = authors_rates(base, total, warmup)
    got = rates_the_optimizer_applies(base, total, warmup)
    assert got.shape == (total,)
    # float32 cos near pi loses absolute precision ~1e-7 (relative to base) at the very end
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=base * 2e-7)
    assert got[0] == 0.0                            # the first update only fills the momentum
    assert got[warmup] == np.float32(base)          # update warmup + 1 applies the peak
    assert got[warmup - 1] == pytest.approx(base * (warmup - 1) / warmup, rel=1e-6)
    # the last update applies lr(total - 1) = base * (1 - cos(pi / (total - warmup))) / 2, tiny
    # (in float32 cos rounds to -1 for the longest runs, as in the authors' code)
    assert want[-1] > 0 and 0.0 <= got[-1] < base * 1e-4
    assert np.all(np.diff(got[: warmup + 1]) > 0) and np.all(np.diff(got[warmup:]) <= 0)
    # the helpers that the training history uses give the same sequence
    np.testing.assert_allclose(
        applied_learning_rates(base_lr=base, total_steps=total, warmup_steps=warmup), got,
        rtol=1e-6, atol=base * 1e-7)
    for k in (1, 2, warmup, warmup + 1, total // 2, total):
        lr_k = applied_learning_rate(k, base_lr=base, total_steps=total, warmup_steps=warmup)
        assert float(lr_k) == pytest.approx(want[k - 1], rel=2e-5, abs=base * 2e-7), k


@pytest.mark.parametrize("total,warmup", PUBLISHED_LENGTHS)
def test_schedule_function_at_zero_warmup_mid_and_end(total, warmup):
    base = 0.03
    mid = warmup + (total - warmup) // 2
    expected = {
        0: 0.0,                               # optax's count before the first update
        1: base / warmup,
        warmup: base,                         # end of warm-up: the peak
        mid: base * 0.5 * (1 + math.cos(math.pi * (mid - warmup) / (total - warmup))),
        total: 0.0,                           # reached after the last update, never applied
    }
    for step, want in expected.items():
        got = float(learning_rate(step, base_lr=base, total_steps=total, warmup_steps=warmup))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), step
        assert got == pytest.approx(reference_lr(step, base, total, warmup), rel=1e-6, abs=1e-12)
    if (total - warmup) % 2 == 0:  # exactly half the peak half-way through the decay
        half = float(learning_rate(mid, base_lr=base, total_steps=total, warmup_steps=warmup))
        assert half == pytest.approx(base / 2, rel=1e-6)


def test_schedule_is_traceable_and_matches_numpy():
    steps = jnp.arange(0, 2501)
    got = jax.jit(lambda s: learning_rate(s, base_lr=0.01, total_steps=2500, warmup_steps=200))(
        steps
    )
    want = np.array([reference_lr(int(s), 0.01, 2500, 200) for s in steps])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-9)


def test_optimizer_is_sgd_momentum_with_rate_zero_first_and_no_weight_decay():
    base, total, warmup = 0.1, 100, 10
    tx = make_optimizer(base_lr=base, total_steps=total, warmup_steps=warmup,
                        momentum_dtype="float32")
    params = {"w": jnp.ones(3, jnp.float32)}
    g1 = {"w": jnp.array([0.1, -0.2, 0.3], jnp.float32)}   # norm < 1: not clipped
    g2 = {"w": jnp.array([0.0, 0.4, -0.1], jnp.float32)}
    g3 = {"w": jnp.array([0.2, 0.1, 0.0], jnp.float32)}
    state = tx.init(params)
    u1, state = tx.update(g1, state, params)
    u2, state = tx.update(g2, state, params)
    u3, state = tx.update(g3, state, params)
    lr2, lr3 = reference_lr(1, base, total, warmup), reference_lr(2, base, total, warmup)
    m1 = np.asarray(g1["w"], np.float64)
    m2 = np.asarray(g2["w"], np.float64) + 0.9 * m1
    m3 = np.asarray(g3["w"], np.float64) + 0.9 * m2
    assert not np.any(np.asarray(u1["w"]))                 # rate 0: momentum filled only
    np.testing.assert_allclose(u2["w"], -lr2 * m2, rtol=1e-6)
    np.testing.assert_allclose(u3["w"], -lr3 * m3, rtol=1e-6)
    counts = [leaf for leaf in jax.tree.leaves(state) if leaf.dtype == jnp.int32]
    assert counts and all(int(c) == 3 for c in counts)     # optax's count: updates done


def test_gradients_are_clipped_to_global_norm_one():
    tx = make_optimizer(base_lr=1.0, total_steps=10, warmup_steps=1, momentum_dtype="float32",
                        momentum=0.0)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 0.0])}  # global norm 5
    state = tx.init(params)
    _, state = tx.update(grads, state, params)  # the first update applies rate 0
    updates, _ = tx.update(grads, state, params)  # the second applies lr(1) = 1.0
    np.testing.assert_allclose(updates["a"], [-0.6, -0.8], rtol=1e-6)


def test_momentum_is_kept_in_bfloat16_by_default():
    tx = make_optimizer(base_lr=0.01, total_steps=10, warmup_steps=1)
    state = tx.init({"w": jnp.zeros((4, 4), jnp.float32)})
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(state) if leaf.ndim == 2}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    assert isinstance(optax.tree_utils.tree_get(state, "count"), jax.Array)
