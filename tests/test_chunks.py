"""Inference in sequential chunks (models.in_chunks): the same outputs, in order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb import features, inference, models, train_step
from augreg_nb.checkpoint import unflatten
from augreg_nb.testing.checkpoints import fake_params


def _testing_params():
    return unflatten(fake_params("testing", num_classes=10, resolution=32))


def _tagged(params, images):
    """Each image's own sum, times a parameter, as a tuple of outputs: any mix-up of images
    or of the join order shows in the result."""
    total = jnp.sum(images, axis=(1, 2, 3))
    return {"sum": total * params, "pair": jnp.stack([total, -total], -1)}


@pytest.mark.parametrize("n,chunk", [(12, 4), (13, 4), (3, 4), (4, 4), (7, 1), (5, 0)])
def test_in_chunks_keeps_every_image_in_its_place(n, chunk):
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 2, 2, 3),
                                                                             np.float32)
    got = jax.jit(models.in_chunks(_tagged, chunk))(jnp.float32(2.0), images)
    want = 12.0 * np.arange(n, dtype=np.float32)  # 2x2x3 pixels of value i
    np.testing.assert_array_equal(got["sum"], 2.0 * want)
    np.testing.assert_array_equal(got["pair"], np.stack([want, -want], -1))


def test_in_chunks_runs_sequential_chunks_only_when_the_batch_is_larger():
    jaxpr = str(jax.make_jaxpr(models.in_chunks(_tagged, 4))(1.0, np.ones((10, 2, 2, 3))))
    assert "scan" in jaxpr  # lax.map over two chunks of 4, then the remainder of 2
    jaxpr = str(jax.make_jaxpr(models.in_chunks(_tagged, 4))(1.0, np.ones((4, 2, 2, 3))))
    assert "scan" not in jaxpr
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        models.in_chunks(_tagged, -1)


def test_chunked_model_gives_the_whole_batch_logits():
    model = models.create_model("testing", 10)
    params = _testing_params()
    images = np.random.default_rng(0).uniform(-1, 1, (11, 32, 32, 3)).astype(np.float32)

    def apply(p, x):
        return model.apply({"params": p}, x, train=False)

    whole = np.asarray(jax.jit(apply)(params, images))
    chunked = np.asarray(jax.jit(models.in_chunks(apply, 4))(params, images))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    one_by_one = np.concatenate([np.asarray(jax.jit(apply)(params, images[i:i + 1]))
                                 for i in range(len(images))])
    np.testing.assert_allclose(chunked, one_by_one, rtol=1e-5, atol=1e-5)


def test_forward_chunk_by_backend_and_environment(monkeypatch):
    monkeypatch.delenv("AUGREG_NB_CPU_CHUNK", raising=False)
    assert models.forward_chunk("cpu") == models.CPU_FORWARD_CHUNK == 16
    assert models.forward_chunk("gpu") == 0 and models.forward_chunk("tpu") == 0
    monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", "0")
    assert models.forward_chunk("cpu") == 0
    monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", " 8 ")
    assert models.forward_chunk("cpu") == 8
    assert models.forward_chunk("gpu") == 0
    for bad in ("sixteen", "-2", "1.5"):
        monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", bad)
        with pytest.raises(ValueError, match="AUGREG_NB_CPU_CHUNK") as err:
            models.forward_chunk("cpu")
        assert "0 runs whole batches" in str(err.value)


@pytest.fixture
def fresh_forward_caches():
    def clear():
        inference._compiled_logits.cache_clear()
        inference._compiled_apply.cache_clear()
        features.pre_logits_fn.cache_clear()

    clear()
    yield
    clear()


def test_predict_and_features_chunked_match_whole_batches(monkeypatch, fresh_forward_caches):
    params = _testing_params()
    images = np.random.default_rng(1).uniform(-1, 1, (9, 32, 32, 3)).astype(np.float32)
    results = {}
    for chunk in ("0", "4"):
        monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", chunk)
        inference._compiled_logits.cache_clear()
        inference._compiled_apply.cache_clear()
        features.pre_logits_fn.cache_clear()
        logits_fn = inference._compiled_logits("testing", 10)
        assert ("scan" in str(jax.make_jaxpr(logits_fn)(params, images))) == (chunk == "4")
        preds = inference.predict_arrays("testing", params, images, top_k=3, batch_size=9)
        feats = features.pre_logits_fn("testing")(features.without_head(params), images)
        results[chunk] = (preds, np.asarray(logits_fn(params, images)), np.asarray(feats))
    (p0, l0, f0), (p4, l4, f4) = results["0"], results["4"]
    np.testing.assert_allclose(l4, l0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f4, f0, rtol=1e-5, atol=1e-5)
    assert [[c.index for c in row] for row in p4] == [[c.index for c in row] for row in p0]


def test_eval_step_chunked_counts_the_same(monkeypatch):
    from augreg_nb import input_pipeline as ip

    params = _testing_params()
    model = models.create_model("testing", 10)
    rng = np.random.default_rng(2)
    batch = {"image": rng.uniform(-1, 1, (10, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 10, 10).astype(np.int32),
             "mask": np.array([1] * 8 + [0] * 2, np.int32)}
    mesh = ip.data_mesh()
    out = {}
    for chunk in ("0", "3"):
        monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", chunk)
        step = train_step.make_eval_step(model.apply, mesh=mesh, num_classes=10)
        out[chunk] = [np.asarray(v) for v in step(params, ip.put_batch(batch, mesh))]
    assert int(out["3"][0]) == int(out["0"][0]) and int(out["3"][2]) == int(out["0"][2]) == 8
    np.testing.assert_allclose(out["3"][1], out["0"][1], rtol=1e-5)
