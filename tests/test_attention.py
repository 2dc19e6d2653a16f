"""The attention implementations give the same model: CPU path vs jax.nn.dot_product_attention.

GPUs and TPUs run attention through ``jax.nn.dot_product_attention`` (``attention_impl``
"xla" or "cudnn"), CPUs through :func:`augreg_nb.models.attend` with its hand-written
backward pass. The XLA implementation runs on CPU too, so the logits and every parameter
gradient of both paths are compared here, on the tiny test model (head by head and batched)
and on ViT-Ti/16's real shapes. An independent softmax-attention written in the test pins
down the XLA path's value as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb import models
from augreg_nb.checkpoint import unflatten
from augreg_nb.testing.checkpoints import fake_params


def _value_and_grads(name, impl, params, images, labels):
    model = models.create_model(name, labels.shape[-1], attention_impl=impl)

    def loss(p):
        logits = model.apply({"params": p}, images, train=True)
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


def _assert_same_model(name, resolution, batch, classes, *, rtol):
    params = unflatten(fake_params(name, num_classes=classes, resolution=resolution))
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, resolution, resolution, 3)), jnp.float32)
    labels = jax.nn.one_hot(jnp.asarray(rng.integers(0, classes, batch)), classes)
    cpu_logits, cpu_grads = _value_and_grads(name, "cpu", params, images, labels)
    xla_logits, xla_grads = _value_and_grads(name, "xla", params, images, labels)
    logit_scale = float(jnp.max(jnp.abs(cpu_logits)))
    assert logit_scale > 0.1  # the head is not zero: the comparison can fail
    np.testing.assert_allclose(xla_logits, cpu_logits, rtol=0, atol=rtol * logit_scale)
    flat_cpu = jax.tree_util.tree_leaves_with_path(cpu_grads)
    flat_xla = jax.tree.leaves(xla_grads)
    assert len(flat_cpu) == len(flat_xla)
    for (path, c), x in zip(flat_cpu, flat_xla, strict=True):
        scale = float(jnp.max(jnp.abs(c)))
        err = float(jnp.max(jnp.abs(c - x)))
        assert err <= rtol * scale + 1e-7, (jax.tree_util.keystr(path), err, scale)
    # Attention gradients must be part of it (not all zero).
    block = cpu_grads["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_1"]
    assert float(jnp.max(jnp.abs(block["query"]["kernel"]))) > 0


@pytest.mark.parametrize("per_head_max", [4, 0], ids=["head-by-head", "batched"])
def test_xla_attention_matches_cpu_path_on_the_test_model(monkeypatch, per_head_max):
    monkeypatch.setattr(models, "PER_HEAD_MAX_HEADS", per_head_max)
    _assert_same_model("testing", 32, 3, 7, rtol=1e-4)


def test_xla_attention_matches_cpu_path_on_ti16_shapes():
    # 197 tokens, 3 heads of 64, 12 blocks: the real shapes, small batch.
    _assert_same_model("Ti/16", 224, 2, 10, rtol=2e-4)


def test_xla_attention_value_matches_textbook_attention():
    rng = np.random.default_rng(0)
    n, length, heads, depth = 2, 9, 3, 8
    width = heads * depth
    x = jnp.asarray(rng.normal(size=(n, length, width)), jnp.float32)
    mha = models.MultiHeadAttention(heads, attention_impl="xla")
    variables = mha.init(jax.random.PRNGKey(0), x)
    p = variables["params"]
    # Independent computation: per head, softmax(q k^T / sqrt(d)) v, then the output kernel.
    q = jnp.einsum("nte,ehd->nhtd", x, p["query"]["kernel"]) + p["query"]["bias"][:, None]
    k = jnp.einsum("nte,ehd->nhtd", x, p["key"]["kernel"]) + p["key"]["bias"][:, None]
    v = jnp.einsum("nte,ehd->nhtd", x, p["value"]["kernel"]) + p["value"]["bias"][:, None]
    w = np.exp(np.asarray(q @ jnp.swapaxes(k, -1, -2)) / np.sqrt(depth))
    w = w / w.sum(-1, keepdims=True)
    heads_out = np.asarray(w @ np.asarray(v))
    want = np.einsum("nhtd,hde->nte", heads_out, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(mha.apply(variables, x), want, rtol=1e-4, atol=1e-5)
    cpu = models.MultiHeadAttention(heads, attention_impl="cpu")
    np.testing.assert_allclose(cpu.apply(variables, x), want, rtol=1e-4, atol=1e-5)


def test_attention_dropout_on_the_fused_path_is_applied_in_training_only():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.float32)
    mha = models.MultiHeadAttention(2, dropout_rate=0.5, attention_impl="xla")
    variables = mha.init(jax.random.PRNGKey(0), x)
    plain = models.MultiHeadAttention(2, attention_impl="xla").apply(variables, x)
    np.testing.assert_allclose(mha.apply(variables, x, deterministic=True), plain, rtol=1e-6)
    dropped = mha.apply(variables, x, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(1)})
    assert bool(jnp.all(jnp.isfinite(dropped)))
    assert float(jnp.max(jnp.abs(dropped - plain))) > 1e-3


@pytest.mark.parametrize(("impl", "backend", "dtype", "want"), [
    ("auto", "cpu", jnp.float32, "cpu"),
    ("auto", "cpu", jnp.bfloat16, "cpu"),
    ("auto", "gpu", jnp.bfloat16, "cudnn"),
    ("auto", "gpu", jnp.float16, "cudnn"),
    ("auto", "gpu", jnp.float32, "xla"),
    ("auto", "tpu", jnp.bfloat16, "xla"),
    ("xla", "cpu", jnp.float32, "xla"),
    ("cpu", "gpu", jnp.bfloat16, "cpu"),
    ("cudnn", "gpu", jnp.bfloat16, "cudnn"),
])
def test_resolve_attention_impl(impl, backend, dtype, want):
    assert models.resolve_attention_impl(impl, dtype, backend) == want


def test_auto_is_the_cpu_path_on_this_machine():
    if jax.default_backend() != "cpu":
        pytest.skip("runs on CPU only")
    assert models.resolve_attention_impl("auto") == "cpu"


def test_bad_attention_choices_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="needs an NVIDIA GPU.*'auto' or 'xla'"):
        models.resolve_attention_impl("cudnn", jnp.bfloat16, "cpu")
    with pytest.raises(ValueError, match="bfloat16/float16"):
        models.resolve_attention_impl("cudnn", jnp.float32, "gpu")
    with pytest.raises(ValueError, match="unknown attention_impl 'flash'.*auto, cpu, xla"):
        models.create_model("testing", 3, attention_impl="flash")


def test_bfloat16_runs_on_both_paths_and_stays_close_to_float32():
    # The accelerators' usual dtype: the fused path and the CPU path agree within
    # bfloat16 rounding, and both stay near the float32 logits.
    params = unflatten(fake_params("testing", num_classes=5, resolution=32))
    images = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    out = {}
    for impl in ("cpu", "xla"):
        model = models.create_model("testing", 5, dtype=jnp.bfloat16, attention_impl=impl)
        out[impl] = jax.jit(lambda p, m=model: m.apply({"params": p}, images))(params)
    want = models.create_model("testing", 5).apply({"params": params}, images)
    scale = float(jnp.max(jnp.abs(want)))
    for impl, got in out.items():
        assert got.dtype == jnp.float32
        assert float(jnp.max(jnp.abs(got - want))) <= 0.05 * scale, impl


def test_auto_falls_back_to_xla_where_cudnn_turns_the_call_down(monkeypatch):
    # "auto" on a GPU picks cuDNN for bfloat16; where cuDNN is missing (ROCm, this CPU) or
    # rejects the shapes, the check fails while tracing and XLA's implementation runs.
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.bfloat16)
    variables = models.MultiHeadAttention(2, dtype=jnp.bfloat16).init(jax.random.PRNGKey(0), x)
    want = models.MultiHeadAttention(2, dtype=jnp.bfloat16, attention_impl="xla").apply(
        variables, x)
    monkeypatch.setattr(models, "resolve_attention_impl", lambda *a, **k: "cudnn")
    auto = models.MultiHeadAttention(2, dtype=jnp.bfloat16, attention_impl="auto")
    got = jax.jit(auto.apply)(variables, x)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    if jax.default_backend() == "cpu":
        # Asked for explicitly, cuDNN is not silently replaced.
        explicit = models.MultiHeadAttention(2, dtype=jnp.bfloat16, attention_impl="cudnn")
        with pytest.raises(RuntimeError, match="cuDNN"):
            jax.jit(explicit.apply)(variables, x)
