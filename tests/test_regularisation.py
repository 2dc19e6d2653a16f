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


# ---------------------------------------------------------------------------------------
# dropout and stochastic depth in the model

from augreg_nb import models  # noqa: E402


def test_drop_path_rates_rise_linearly_to_the_last_block():
    np.testing.assert_allclose(models.drop_path_rates(12, 0.1), np.linspace(0, 0.1, 12))
    assert models.drop_path_rates(1, 0.1) == (0.0,)
    assert models.drop_path_rates(3, 0.0) == (0.0, 0.0, 0.0)


def test_drop_path_drops_whole_examples_without_rescaling():
    x = jnp.ones((4000, 3, 5))
    out = np.asarray(models.drop_path(x, 0.3, jax.random.PRNGKey(0)))
    per_example = out.reshape(4000, -1)
    assert set(np.unique(per_example)) <= {0.0, 1.0}
    assert (per_example.min(1) == per_example.max(1)).all()  # all or nothing per example
    assert abs((per_example[:, 0] == 0).mean() - 0.3) < 0.03
    np.testing.assert_array_equal(np.asarray(models.drop_path(x, 0.0, None)), np.asarray(x))


def _model_and_params(**rates):
    model = models.create_model("testing", num_classes=5, **rates)
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(images)
    params = params["params"]
    # The head starts at zero; give it weights so that the logits depend on the features.
    head = dict(params["head"])
    head["kernel"] = jax.random.normal(jax.random.PRNGKey(2), head["kernel"].shape)
    return model, {**params, "head": head}, images


def test_regularisation_adds_no_parameters_and_leaves_evaluation_unchanged():
    plain, params, images = _model_and_params()
    reg, reg_params, _ = _model_and_params(dropout_rate=0.1, stochastic_depth=0.1)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_reg = jax.tree_util.tree_flatten_with_path(reg_params)[0]
    assert [(p, v.shape) for p, v in flat] == [(p, v.shape) for p, v in flat_reg]
    for (_, a), (_, b) in zip(flat, flat_reg, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want = jax.jit(lambda p: plain.apply({"params": p}, images, train=False))(params)
    got = jax.jit(lambda p: reg.apply({"params": p}, images, train=False))(params)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Training draws from the "dropout" rng: reproducible with the same key, different
    # from evaluation.
    train_apply = jax.jit(lambda p, k: reg.apply({"params": p}, images, train=True,
                                                 rngs={"dropout": k}))
    train = [train_apply(params, jax.random.PRNGKey(k)) for k in (7, 7, 8)]
    np.testing.assert_array_equal(np.asarray(train[0]), np.asarray(train[1]))
    assert not np.allclose(np.asarray(train[0]), np.asarray(want))
    assert not np.allclose(np.asarray(train[0]), np.asarray(train[2]))
    with pytest.raises(ValueError, match="stochastic_depth"):
        models.create_model("testing", 5, stochastic_depth=1.0)


def test_stochastic_depth_keeps_or_drops_each_residual_branch_per_example():
    block = models.EncoderBlock(num_heads=2, mlp_dim=24, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.PRNGKey(2), (64, 5, 16))
    params = block.init(jax.random.PRNGKey(3), x)["params"]
    out = np.asarray(block.apply({"params": params}, x, deterministic=False,
                                 rngs={"dropout": jax.random.PRNGKey(4)}))
    # The two branches computed from the block's own sub-modules.
    def ln(name, v):
        return models.LayerNorm().apply({"params": params[name]}, v)

    def attn(v):
        return models.MultiHeadAttention(2).apply(
            {"params": params["MultiHeadDotProductAttention_1"]}, ln("LayerNorm_0", v))

    def mlp(v):
        return models.MlpBlock(24).apply({"params": params["MlpBlock_3"]}, ln("LayerNorm_2", v))

    after_attn = x + attn(x)
    candidates = [x, x + mlp(x), after_attn, after_attn + mlp(after_attn)]
    seen = set()
    for i in range(x.shape[0]):
        hits = [k for k, c in enumerate(candidates)
                if np.allclose(out[i], np.asarray(c[i]), rtol=1e-5, atol=1e-5)]
        assert hits, f"example {i} is none of the four keep/drop combinations"
        seen.add(hits[0])
    assert seen == {0, 1, 2, 3}
    np.testing.assert_allclose(
        np.asarray(block.apply({"params": params}, x, deterministic=True)),
        np.asarray(candidates[3]), rtol=1e-5, atol=1e-5)
