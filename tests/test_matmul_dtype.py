"""The opt-in bfloat16 matrix multiplies (``matmul_dtype``) of the models, the classifier,
feature extraction and the commands: what they compute, how far from float32, and refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from augreg_nb import features, inference
from augreg_nb.checkpoint import unflatten
from augreg_nb.cli import main
from augreg_nb.models import create_model, matmul
from augreg_nb.tasks import get_task
from augreg_nb.testing.checkpoints import fake_params, write_fake_checkpoint
from tests.test_models import np_forward, random_images


def _bf16(a):
    """Round to bfloat16 (nearest even) with ml_dtypes, back in float64."""
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_matmul_rounds_the_operands_and_sums_in_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 96)).astype(np.float32)
    w = rng.standard_normal((96, 7)).astype(np.float32)
    got = np.asarray(matmul(jnp.asarray(x), jnp.asarray(w), jnp.bfloat16))
    assert got.dtype == np.float32
    want = _bf16(x) @ _bf16(w)  # rounded operands, exact sums
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    exact = x.astype(np.float64) @ w.astype(np.float64)
    # The rounding shows: bfloat16 keeps 8 bits of mantissa, so the products move.
    assert np.max(np.abs(got - exact)) > 1e-3
    np.testing.assert_allclose(np.asarray(matmul(jnp.asarray(x), jnp.asarray(w))), exact,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["testing", "testing-hybrid"])
def test_bfloat16_matmuls_stay_close_to_the_float64_reference(name):
    params = unflatten(fake_params(name, num_classes=10, resolution=32))
    images = random_images(8, 32)
    want = np_forward(params, images)
    full = create_model(name, 10)
    low = create_model(name, 10, matmul_dtype="bfloat16")
    got32 = np.asarray(full.apply({"params": params}, images))
    got16 = np.asarray(low.apply({"params": params}, images))
    assert got16.dtype == np.float32
    scale = np.max(np.abs(want))
    err32 = np.max(np.abs(got32 - want)) / scale
    err16 = np.max(np.abs(got16 - want)) / scale
    assert err32 < 1e-4
    # bfloat16 operands (relative rounding 2**-9) through a few layers: within 3 %, and
    # clearly not the float32 computation.
    assert 1e-4 < err16 < 3e-2
    assert np.mean(got16.argmax(-1) == want.argmax(-1)) >= 0.75


def test_bfloat16_matmuls_have_gradients_and_both_attention_routings():
    from unittest import mock

    from augreg_nb import models

    params = unflatten(fake_params("testing", num_classes=4, resolution=32))
    images = jnp.asarray(random_images(2, 32))
    outs = []
    for limit in (0, 10**6):  # batched over heads, and head by head
        with mock.patch.object(models, "PER_HEAD_MAX_HEADS", limit):
            model = create_model("testing", 4, matmul_dtype=jnp.bfloat16)

            def loss(p, model=model):
                return jnp.sum(model.apply({"params": p}, images, train=True) ** 2)

            value, grads = jax.value_and_grad(loss)(params)
        leaves = jax.tree_util.tree_leaves(grads)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
        outs.append(float(value))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4)


def test_xla_attention_takes_bfloat16_operands_too():
    params = unflatten(fake_params("testing", num_classes=4, resolution=32))
    images = random_images(2, 32)
    cpu = create_model("testing", 4, matmul_dtype="bfloat16", attention_impl="cpu")
    xla = create_model("testing", 4, matmul_dtype="bfloat16", attention_impl="xla")
    a = np.asarray(cpu.apply({"params": params}, images))
    b = np.asarray(xla.apply({"params": params}, images))
    np.testing.assert_allclose(a, b, atol=2e-2 * np.max(np.abs(a)))


@pytest.mark.parametrize("bad", ["float16", jnp.int8, "bf16x"])
def test_other_matmul_dtypes_are_refused(bad):
    with pytest.raises(ValueError, match="matmul_dtype must be None"):
        create_model("testing", 3, matmul_dtype=bad)


def test_float32_names_mean_the_default():
    for same in (None, "float32", "none"):
        assert create_model("testing", 3, matmul_dtype=same).matmul_dtype is None


def test_agreement_and_predictions():
    params = unflatten(fake_params("testing", num_classes=5, resolution=32))
    images = random_images(6, 32, seed=3)
    agree = inference.agreement("testing", params, images, batch_size=4)
    a = np_forward(params, images)
    assert agree.images == 6
    assert 0.0 < agree.max_abs_logit_diff < 3e-2 * np.max(np.abs(a))
    np.testing.assert_allclose(agree.max_abs_logit, np.max(np.abs(a)), rtol=1e-4)
    assert 0.0 <= agree.top1_agreement <= 1.0
    assert "top-1 agreement" in agree.text()
    low = inference.predict_arrays("testing", params, images, top_k=1, matmul_dtype="bfloat16")
    full = inference.predict_arrays("testing", params, images, top_k=1)
    assert len(low) == len(full) == 6
    assert [p[0].prob for p in low] != [p[0].prob for p in full]
    with pytest.raises(ValueError, match="matmul_dtype='bfloat16'"):
        inference.agreement("testing", params, images, matmul_dtype=None)


def test_bfloat16_features_are_cached_apart_from_float32(tmp_path):
    task = get_task("digits")
    meta32 = features.describe("fake:testing", task, "train", 32)
    meta16 = features.describe("fake:testing", task, "train", 32, "bfloat16")
    assert "matmul_dtype" not in meta32 and meta16["matmul_dtype"] == "bfloat16"
    assert features.describe("fake:testing", task, "train", 32, "float32") == meta32
    p32 = features.cache_path("fake:testing", task, "train", 32, tmp_path)
    p16 = features.cache_path("fake:testing", task, "train", 32, tmp_path, "bfloat16")
    assert p32 != p16 and p32.parent == p16.parent
    params = features.without_head(unflatten(fake_params("testing", num_classes=3,
                                                         resolution=32)))
    images = random_images(4, 32)
    a = np.asarray(features.pre_logits_fn("testing")(params, images))
    b = np.asarray(features.pre_logits_fn("testing", "bfloat16")(params, images))
    assert a.shape == b.shape and not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=3e-2 * np.max(np.abs(a)))


def test_predict_command_with_bfloat16(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    ckpt = write_fake_checkpoint(tmp_path / "t.npz", "testing", num_classes=3, resolution=32)
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(image)
    argv = ["predict", str(ckpt), str(image), "--top-k", "2", "--matmul-dtype", "bfloat16"]
    assert main([*argv, "--agreement"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16 matrix multiplies against float32 on 1 image(s): top-1 agreement" in out
    assert main(["predict", str(ckpt), str(image), "--agreement"]) == 1
    assert "add --matmul-dtype bfloat16" in capsys.readouterr().err
