"""models.linear: x @ w with the CPU backward pass; gradients as automatic differentiation's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb import models
from augreg_nb.checkpoint import unflatten
from augreg_nb.testing.checkpoints import fake_params


@pytest.mark.parametrize("x_shape,w_shape", [
    ((3, 5, 4), (4, 7)),   # input narrower than the output: its transpose is materialised
    ((6, 9), (9, 2)),      # output gradient narrower
    ((2, 3, 8), (8, 8)),
])
def test_linear_gradients_match_float64(x_shape, w_shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    g = rng.standard_normal(x_shape[:-1] + w_shape[-1:]).astype(np.float32)
    y, vjp = jax.vjp(models.linear, x, w)
    d_x, d_w = vjp(g)
    x64, w64, g64 = (a.astype(np.float64) for a in (x, w, g))
    np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_x, g64 @ w64.T, rtol=1e-5, atol=1e-5)
    want_w = x64.reshape(-1, w_shape[0]).T @ g64.reshape(-1, w_shape[1])
    np.testing.assert_allclose(d_w, want_w, rtol=1e-5, atol=1e-5)
    assert d_x.dtype == x.dtype and d_w.dtype == w.dtype and d_w.shape == w.shape


def test_dense_dot_general_uses_linear_only_for_plain_contractions():
    x = jnp.ones((2, 3, 4))
    w = jnp.ones((4, 5))
    plain = (((2,), (0,)), ((), ()))
    assert "custom_vjp" in str(jax.make_jaxpr(
        lambda a, b: models._linear_dot_general(a, b, plain))(x, w))
    other = (((2,), (1,)), ((), ()))  # contracts the kernel's second axis: XLA's own
    jaxpr = str(jax.make_jaxpr(
        lambda a, b: models._linear_dot_general(a, b, other))(x, jnp.ones((5, 4))))
    assert "custom_vjp" not in jaxpr
    out = models._linear_dot_general(x, jnp.ones((5, 4)), other)
    np.testing.assert_array_equal(out, jnp.full((2, 3, 5), 4.0))


@pytest.mark.parametrize("name", ["testing", "testing-hybrid"])
def test_model_gradients_unchanged_by_the_cpu_linear(name, monkeypatch):
    params = unflatten(fake_params(name, num_classes=5, resolution=32))
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    labels = jax.nn.one_hot(np.array([0, 3, 4]), 5)

    def grads():
        model = models.create_model(name, 5)

        def loss(p):
            logits = model.apply({"params": p}, images, train=False)
            return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

        # linear's backward pass is the one with an optimisation barrier.
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        return jax.grad(loss)(params), "optimization_barrier" in jaxpr

    got, used = grads()
    assert used  # on this CPU the model's products go through models.linear
    monkeypatch.setattr(models, "_cpu_linear", lambda: False)
    want, used = grads()
    assert not used
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
        assert float(jnp.max(jnp.abs(g - w))) <= 1e-5 * scale, jax.tree_util.keystr(path)
