"""The upstream (pre-training) recipe against independent numpy and optax implementations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augreg_nb import models
from augreg_nb import upstream as U


def _tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embedding": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                      "bias": rng.normal(size=(3,)).astype(np.float32)},
        "LayerNorm_0": {"scale": rng.normal(size=(3,)).astype(np.float32)},
        "pos_embedding": rng.normal(size=(1, 2, 3)).astype(np.float32),
        "head": {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
                 "bias": rng.normal(size=(2,)).astype(np.float32)},
    }


def _lr(count, base, total, warmup):
    """The schedule written out with the math module (count = updates done before)."""
    progress = min(max((count - warmup) / (total - warmup), 0.0), 1.0)
    return base * 0.5 * (1 + math.cos(math.pi * progress)) * min(1.0, count / warmup)


def _numpy_adamw(params, grads_seq, *, base, total, warmup, wd, clip=1.0, b1=0.9, b2=0.999,
                 eps=1e-8):
    """Clip by global norm, Adam with bias correction, decay kernels by lr * wd * param."""
    leaves = {k: np.array(v, np.float64) for k, v in _flat(params).items()}
    m = {k: np.zeros_like(v) for k, v in leaves.items()}
    v2 = {k: np.zeros_like(v) for k, v in leaves.items()}
    for t, grads in enumerate(grads_seq):
        g = {k: np.array(x, np.float64) for k, x in _flat(grads).items()}
        norm = math.sqrt(sum(float((x ** 2).sum()) for x in g.values()))
        scale = min(1.0, clip / norm)
        lr = _lr(t, base, total, warmup)
        for k in leaves:
            gk = g[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * gk
            v2[k] = b2 * v2[k] + (1 - b2) * gk ** 2
            mhat = m[k] / (1 - b1 ** (t + 1))
            vhat = v2[k] / (1 - b2 ** (t + 1))
            step = mhat / (np.sqrt(vhat) + eps)
            if k.endswith("kernel"):
                step = step + wd * leaves[k]
            leaves[k] = leaves[k] - lr * step
    return leaves


def _flat(tree):
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(p, "key", p)) for p in path)] = leaf
    return out


def _run(tx, params, grads_seq):
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _grads(n, seed=1, big=False):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda x: (rng.normal(size=x.shape) * (5 if big else 0.1)).astype(
        np.float32), _tree()) for _ in range(n)]


@pytest.mark.parametrize("big", [False, True])  # with and without clipping
def test_optimizer_matches_a_numpy_adamw(big):
    params = _tree()
    grads = _grads(8, big=big)
    tx = U.make_upstream_optimizer(8, base_lr=0.01, weight_decay=0.1, warmup_steps=3,
                                   mu_dtype=None)
    got = _flat(_run(tx, params, grads))
    want = _numpy_adamw(params, grads, base=0.01, total=8, warmup=3, wd=0.1)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=2e-6,
                                   err_msg=k)
    # The parameters that do not decay moved by Adam alone: check one decays, one not.
    no_decay = U.make_upstream_optimizer(8, base_lr=0.01, weight_decay=0.0, warmup_steps=3,
                                         mu_dtype=None)
    plain = _flat(_run(no_decay, params, grads))
    assert not np.allclose(np.asarray(plain["head/kernel"]), np.asarray(got["head/kernel"]))
    np.testing.assert_array_equal(np.asarray(plain["head/bias"]), np.asarray(got["head/bias"]))


def test_optimizer_matches_the_big_vision_chain_with_its_wd_convention():
    """big_vision: clip, Adam (bf16 first moment), x base lr, + (wd * base lr) * kernel,
    x schedule multiplier, x -1; its wd is the paper's times the base learning rate."""
    base, total, warmup, wd = 0.001, 10, 4, 0.03

    def mult(count):
        return _lr_jnp(count, 1.0, total, warmup)

    mask = jax.tree_util.tree_map_with_path(
        lambda p, _: str(getattr(p[-1], "key", p[-1])) == "kernel", _tree())
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b1=0.9, b2=0.999, mu_dtype=jnp.bfloat16),
        optax.scale(base),
        optax.add_decayed_weights(wd * base, mask),
        optax.scale_by_schedule(mult),
        optax.scale(-1.0),
    )
    grads = _grads(total, seed=3, big=True)
    want = _flat(_run(reference, _tree(), grads))
    got = _flat(_run(U.make_upstream_optimizer(total, base_lr=base, weight_decay=wd,
                                               warmup_steps=warmup), _tree(), grads))
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5,
                                   atol=1e-7, err_msg=k)
    assert U.big_vision_weight_decay(0.1) == pytest.approx(1e-4)  # vit_i21k.py's wd


def _lr_jnp(count, base, total, warmup):
    progress = jnp.clip((count - warmup) / (total - warmup), 0.0, 1.0)
    return base * 0.5 * (1 + jnp.cos(jnp.pi * progress)) * jnp.minimum(1.0, count / warmup)


def test_schedule_warms_up_then_decays():
    total, warmup = 100_000, 10_000
    for step in (0, 1, 5_000, 10_000, 40_000, 99_999, 100_000):
        assert U.upstream_learning_rate(step, total_steps=total) == pytest.approx(
            _lr(step, 0.001, total, warmup), rel=1e-5, abs=1e-10)
        linear = 0.001 * (1 - min(max((step - warmup) / (total - warmup), 0), 1)) * min(
            1, step / warmup)
        assert U.upstream_learning_rate(step, total_steps=total, decay="linear") == \
            pytest.approx(linear, rel=1e-5, abs=1e-10)  # float32
    assert U.upstream_learning_rate(0, total_steps=total) == 0.0  # the first update
    with pytest.raises(ValueError, match="smaller than total_steps"):
        U.make_upstream_optimizer(10_000)
    with pytest.raises(ValueError, match="unknown decay"):
        U.make_upstream_optimizer(20_000, decay="step")


def test_weight_decay_mask_selects_kernels_of_a_real_model():
    params = models.abstract_params("testing-hybrid", num_classes=3, resolution=32)
    mask = _flat(U.weight_decay_mask(params))
    decayed = {k for k, v in mask.items() if v}
    assert decayed == {k for k in mask if k.endswith("/kernel")}
    assert "head/kernel" in decayed and "conv_root/kernel" in decayed
    assert "embedding/kernel" in decayed
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in decayed
    for name in ("cls", "Transformer/posembed_input/pos_embedding", "head/bias",
                 "gn_root/scale", "Transformer/encoder_norm/scale"):
        assert name in mask and not mask[name], name


def test_losses_match_numpy_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
    onehot = np.eye(7, dtype=np.float32)[rng.integers(0, 7, 5)]
    labels = 0.7 * onehot + 0.3 * np.roll(onehot, 1, axis=0)  # Mixup-style rows
    z = logits.astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    sigmoid = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(-1).mean()
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    softmax = -(labels * log_softmax).sum(-1).mean()
    assert float(U.upstream_loss(jnp.asarray(logits), labels, "sigmoid")) == pytest.approx(
        sigmoid, rel=1e-5)
    assert float(U.upstream_loss(jnp.asarray(logits), labels, "softmax")) == pytest.approx(
        softmax, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        U.upstream_loss(jnp.asarray(logits), labels, "hinge")


def test_recipe_facts_and_head_bias():
    assert (U.BASE_LR, U.WARMUP_STEPS, U.ADAM_B1, U.ADAM_B2, U.GRAD_CLIP) == (
        0.001, 10_000, 0.9, 0.999, 1.0)
    assert U.WEIGHT_DECAYS == (0.1, 0.03)
    assert set(U.LOSSES.values()) == {"sigmoid"}
    assert U.HEAD_BIAS_INIT["i21k"] == -10.0 and U.HEAD_BIAS_INIT["i1k"] == -6.9
    params = U.with_head_bias(_tree(), -6.9)
    np.testing.assert_allclose(np.asarray(params["head"]["bias"]), -6.9)
    np.testing.assert_array_equal(params["head"]["kernel"], _tree()["head"]["kernel"])
    with pytest.raises(ValueError, match="head/bias"):
        U.with_head_bias({"x": np.zeros(2)}, 0.0)
