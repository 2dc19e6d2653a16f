"""A ViT written in the straightforward Flax style, as the in-run baseline of the model bench.

It is what one writes from the paper without tuning for CPU: the patch embedding is a
strided ``nn.Conv``, attention is Flax's ``nn.MultiHeadDotProductAttention`` (three
``DenseGeneral`` projections and einsums over ``"...qhd,...khd"``), and the train step is a
plain ``jax.jit`` of ``value_and_grad`` plus ``optax`` SGD with momentum and global-norm
clipping, without buffer donation.

Module names and parameter shapes are those of the published checkpoints, so the same
parameter tree runs through both this module and :mod:`augreg_nb.models`; the bench checks
that their logits agree before it compares their speed.

    >>> model = ReferenceViT(patch_size=16, hidden_size=192, num_layers=12, num_heads=3,
    ...                      mlp_dim=768, num_classes=1000)  # doctest: +SKIP
    >>> model.apply({"params": params}, images)  # doctest: +SKIP
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class _Mlp(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(nn.Dense(self.mlp_dim, name="Dense_0")(x))
        return nn.Dense(x.shape[-1], name="Dense_1")(y)


class _Block(nn.Module):
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, name="MultiHeadDotProductAttention_1")(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6, name="LayerNorm_2")(x)
        return x + _Mlp(self.mlp_dim, name="MlpBlock_3")(y)


class _Encoder(nn.Module):
    num_layers: int
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        x = _PosEmb(name="posembed_input")(x)
        for i in range(self.num_layers):
            x = _Block(self.num_heads, self.mlp_dim, name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x)


class _PosEmb(nn.Module):
    @nn.compact
    def __call__(self, x):
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]))
        return x + pos


class ReferenceViT(nn.Module):
    """Plain ViT classifier (class token, learned position embedding, pre-LN blocks)."""

    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_classes: int

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        p = self.patch_size
        x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                    name="embedding")(images)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
        x = _Encoder(self.num_layers, self.num_heads, self.mlp_dim, name="Transformer")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])


def reference_for(config, num_classes: int) -> ReferenceViT:
    """The reference module for a (non-hybrid) :class:`augreg_nb.models.ModelConfig`."""
    if config.is_hybrid:
        raise ValueError(f"the reference ViT has no ResNet stem; {config.name} is a hybrid")
    return ReferenceViT(config.patch_size, config.hidden_size, config.num_layers,
                        config.num_heads, config.mlp_dim, num_classes)


def reference_train_step(model: ReferenceViT, *, base_lr: float = 0.01,
                         total_steps: int = 2500, warmup_steps: int = 200):
    """``(init_state(params), step(state, images, labels) -> (state, loss))``: the recipe
    (SGD momentum 0.9, clip 1.0, warm-up + cosine) written plainly, without donation."""
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, base_lr, warmup_steps),
         optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1))],
        [warmup_steps],
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.sgd(schedule, momentum=0.9, accumulator_dtype=jnp.bfloat16))

    def init_state(params):
        return params, tx.init(params)

    @jax.jit
    def step(state, images, labels):
        params, opt_state = state

        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True)
            onehot = jax.nn.one_hot(labels, logits.shape[-1])
            return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return init_state, step
