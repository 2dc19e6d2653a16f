"""Model registry, parameter names/counts, and the forward pass against a numpy reference.

The numpy reference below is written from the protocol (data/.../protocol.md, "Model"), not
from the Flax code: "SAME"-padded convolutions as explicit sums, weight standardisation,
GroupNorm with 32 groups, max-pooling padded with -inf, pre-LN blocks, softmax attention
with 64-or-fewer-feature heads, tanh GELU, final LayerNorm, head on the class token.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb import models
from augreg_nb.checkpoint import flatten, unflatten
from augreg_nb.resources import data_path
from augreg_nb.testing.checkpoints import fake_params

PINNED_COUNTS = {
    "Ti/16": 9_740_115,
    "S/16": 30_075_219,
    "S/32": 30_903_507,
    "B/16": 102_595_923,
    "B/32": 104_252_499,
    "B/8": 102_605_139,
    "L/16": 325_690_707,
    "R+Ti/16": 10_360_403,
    "R26+S/32": 44_456_467,
    "R50+L/32": 350_358_931,
}


# ----------------------------------------------------------------- numpy reference


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def np_conv(x, w, stride, padding):
    """x (N, H, W, C), w (kh, kw, C, O) -> (N, H', W', O); padding "SAME" or "VALID"."""
    kh, kw = w.shape[:2]
    if padding == "SAME":
        ph, pw = same_pads(x.shape[1], kh, stride), same_pads(x.shape[2], kw, stride)
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += patch @ w[i, j]
    return out


def np_weight_standardize(w):
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    std = w.std(axis=(0, 1, 2), keepdims=True)
    return (w - mean) / (std + 1e-5)


def np_group_norm(x, scale, bias, groups=32, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(n, h, w, c) * scale.reshape(-1) + bias.reshape(-1)


def np_max_pool_same(x, k=3, s=2):
    ph, pw = same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s)
    x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s])
    return out


def np_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_attention(x, p):
    q = np.einsum("nld,dhk->nlhk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("nld,dhk->nlhk", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("nld,dhk->nlhk", x, p["value"]["kernel"]) + p["value"]["bias"]
    depth = q.shape[-1]
    weights = np_softmax(np.einsum("nqhk,nthk->nhqt", q, k) / np.sqrt(depth))
    out = np.einsum("nhqt,nthk->nqhk", weights, v)
    return np.einsum("nqhk,hkd->nqd", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_bottleneck(x, p, stride):
    def conv_gn(y, name, gn, s=1):
        y = np_conv(y, np_weight_standardize(p[name]["kernel"]), s, "SAME")
        return np_group_norm(y, p[gn]["scale"], p[gn]["bias"])

    residual = x
    if "conv_proj" in p:
        residual = conv_gn(x, "conv_proj", "gn_proj", stride)
    y = np.maximum(conv_gn(x, "conv1", "gn1"), 0)
    y = np.maximum(conv_gn(y, "conv2", "gn2", stride), 0)
    y = conv_gn(y, "conv3", "gn3")
    return np.maximum(residual + y, 0)


def np_forward(params, images):
    """The protocol's forward pass in float64 numpy on a Linen-shaped parameter tree."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(images, np.float64)
    if "conv_root" in p:
        x = np_conv(x, np_weight_standardize(p["conv_root"]["kernel"]), 2, "SAME")
        x = np.maximum(np_group_norm(x, p["gn_root"]["scale"], p["gn_root"]["bias"]), 0)
        x = np_max_pool_same(x)
        b = 1
        while f"block{b}" in p:
            u = 1
            while f"unit{u}" in p[f"block{b}"]:
                stride = 2 if (b > 1 and u == 1) else 1
                x = np_bottleneck(x, p[f"block{b}"][f"unit{u}"], stride)
                u += 1
            b += 1
    kernel = p["embedding"]["kernel"]
    x = np_conv(x, kernel, kernel.shape[0], "VALID") + p["embedding"]["bias"]
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    x = np.concatenate([np.broadcast_to(p["cls"], (n, 1, d)), x], axis=1)
    enc = p["Transformer"]
    x = x + enc["posembed_input"]["pos_embedding"]
    i = 0
    while f"encoderblock_{i}" in enc:
        blk = enc[f"encoderblock_{i}"]
        y = np_layer_norm(x, blk["LayerNorm_0"]["scale"], blk["LayerNorm_0"]["bias"])
        x = x + np_attention(y, blk["MultiHeadDotProductAttention_1"])
        y = np_layer_norm(x, blk["LayerNorm_2"]["scale"], blk["LayerNorm_2"]["bias"])
        mlp = blk["MlpBlock_3"]
        y = np_gelu_tanh(y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"])
        x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
        i += 1
    x = np_layer_norm(x, enc["encoder_norm"]["scale"], enc["encoder_norm"]["bias"])
    return x[:, 0] @ p["head"]["kernel"] + p["head"]["bias"]


def random_images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


# -------------------------------------------------------------------------- tests


def test_parameter_counts_are_pinned_for_every_augreg_model():
    assert tuple(PINNED_COUNTS) == models.AUGREG_MODELS
    counts = {name: models.count_params(name) for name in models.AUGREG_MODELS}
    assert counts == PINNED_COUNTS


@pytest.mark.parametrize("name", models.AUGREG_MODELS)
def test_parameter_tree_has_the_published_names_and_shapes(name):
    config = models.get_model_config(name)
    layout = json.loads(data_path("npz_layout", f"{config.file_prefix}.json").read_text())
    published = {k: tuple(v) for k, v in layout["keys"].items()}
    ours = {k: tuple(v.shape) for k, v in flatten(models.abstract_params(name)).items()}
    assert set(ours) == set(published)
    for key, shape in published.items():
        if "/gn" in f"/{key}":  # GroupNorm: (1, 1, 1, C) in the file, (C,) in Flax
            assert shape[:3] == (1, 1, 1) and ours[key] == shape[3:], key
        else:
            assert ours[key] == shape, key
    # Attention heads have 64 features in every AugReg model.
    q = published["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    assert q == (config.hidden_size, config.num_heads, 64)


@pytest.mark.parametrize(("name", "resolution", "grid"), [
    ("Ti/16", 224, 14), ("Ti/16", 384, 24), ("B/8", 224, 28), ("S/32", 384, 12),
    ("R+Ti/16", 224, 7), ("R+Ti/16", 384, 12), ("R26+S/32", 224, 7), ("R50+L/32", 384, 12),
    ("testing", 32, 4), ("testing-hybrid", 32, 4),
])
def test_grid_size(name, resolution, grid):
    config = models.get_model_config(name)
    assert config.grid_size(resolution) == grid
    assert config.grid_size(config.resolution_for_grid(grid)) == grid


def test_registry_names_and_errors():
    assert models.list_models()[:10] == models.AUGREG_MODELS
    assert models.get_model_config("R26_S_32").name == "R26+S/32"
    with pytest.raises(ValueError, match="Did you mean 'B/16'"):
        models.get_model_config("B/61")
    with pytest.raises(ValueError, match="num_classes"):
        models.create_model("Ti/16", 0)


@pytest.mark.parametrize("name", ["testing", "testing-hybrid"])
def test_flax_forward_matches_numpy_reference(name):
    params = unflatten(fake_params(name, num_classes=7, resolution=32, seed=3))
    images = random_images(2, 32, seed=1)
    model = models.create_model(name, 7)
    got = np.asarray(model.apply({"params": params}, images, train=False))
    want = np_forward(params, images)
    assert got.shape == (2, 7) and got.dtype == np.float32
    assert np.std(want) > 0.1  # the check is not vacuous
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_hybrid_reference_at_an_odd_resolution():
    """36 px: odd intermediate sizes exercise the asymmetric "SAME" padding."""
    params = unflatten(fake_params("testing-hybrid", num_classes=5, resolution=36, seed=4))
    images = random_images(1, 36, seed=2)
    got = np.asarray(models.create_model("testing-hybrid", 5).apply({"params": params}, images))
    np.testing.assert_allclose(got, np_forward(params, images), rtol=1e-5, atol=1e-5)


def test_init_then_apply_and_head_starts_at_zero():
    model = models.create_model("testing", 3)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    assert not np.any(np.asarray(params["head"]["kernel"]))
    assert np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"]).shape == (1, 17, 32)
    logits = model.apply(variables, random_images(2, 32), train=False)
    np.testing.assert_array_equal(np.asarray(logits), 0.0)


def test_bfloat16_compute_and_param_dtype():
    params = unflatten(fake_params("testing", num_classes=4, resolution=32))
    images = random_images(2, 32)
    ref = np.asarray(models.create_model("testing", 4).apply({"params": params}, images))
    bf16 = models.create_model("testing", 4, dtype=jnp.bfloat16)
    out = np.asarray(bf16.apply({"params": params}, images))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=0.15)
    assert not np.allclose(out, ref, atol=1e-6, rtol=0)  # really computed in bfloat16
    init = models.create_model("testing", 4, param_dtype=jnp.bfloat16).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert {x.dtype for x in jax.tree_util.tree_leaves(init)} == {np.dtype(jnp.bfloat16)}


def test_dropout_only_in_training():
    params = unflatten(fake_params("testing", num_classes=4, resolution=32))
    images = random_images(2, 32)
    model = models.create_model("testing", 4, dropout_rate=0.5, attention_dropout_rate=0.5)
    eval_a = model.apply({"params": params}, images, train=False)
    eval_b = models.create_model("testing", 4).apply({"params": params}, images)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train = model.apply({"params": params}, images, train=True,
                        rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(np.asarray(train), np.asarray(eval_a))


def test_wrong_resolution_for_the_position_table_is_explained():
    params = unflatten(fake_params("testing", num_classes=4, resolution=32))
    with pytest.raises(ValueError, match=r"checkpoint\.load\(path, resolution=\.\.\.\)"):
        models.create_model("testing", 4).apply({"params": params}, random_images(1, 64))
    with pytest.raises(ValueError, match="NHWC"):
        models.create_model("testing", 4).apply({"params": params}, np.zeros((1, 3, 32, 32)))


def test_describe_lists_architecture_and_size():
    (row,) = models.describe(["R26+S/32"])
    assert row == {
        "model": "R26+S/32", "patch_size": 1, "hidden_size": 384, "num_layers": 12,
        "num_heads": 6, "mlp_dim": 1536, "resnet_layers": (2, 2, 2, 2),
        "params_21k_224": PINNED_COUNTS["R26+S/32"],
    }
