"""Model FLOPs per image, the machine's measured matrix-multiply peak, and their ratio.

A speed in images per second says little across machines; the same speed as a fraction of
what the machine's matrix units can do at best does. The bench therefore

1. counts the **model FLOPs** of one image analytically (:func:`forward_flops`): every
   matrix multiply and convolution of the architecture, 2 FLOPs per multiply-add
   (patch embedding, query/key/value, attention logits and weighted sum, output
   projection, MLP, head, and for hybrids the ResNet convolutions); element-wise work
   (softmax, GELU, norms) is left out, as in the usual model-FLOPs-utilisation convention.
   A training step counts 3x the forward pass (the backward pass is two matrix multiplies
   per forward one). :func:`xla_flops` is XLA's own count of a compiled program, which
   the tests compare with the formula;
2. measures, in the same run, the **matmul peak** of the machine (:func:`matmul_peak`): the
   best of several jitted ``2048 x 2048`` float32 matrix products, in FLOP/s;
3. reports ``images/s x FLOPs per image / peak``: the fraction of that roofline a model
   reaches (1.0 = every cycle spent in matrix multiplies at the best rate).
"""

from __future__ import annotations

import time

from augreg_nb.models import ModelConfig, get_model_config

#: Side of the square float32 matrices of the peak measurement.
PEAK_MATMUL_SIZE = 2048


def _conv(side_out: int, k: int, c_in: int, c_out: int) -> int:
    return 2 * side_out * side_out * k * k * c_in * c_out


def _resnet_flops(config: ModelConfig, resolution: int) -> tuple[int, int]:
    """FLOPs of the ResNet stem and stages of a hybrid, and the feature map's side."""
    width = config.resnet_width
    side = -(-resolution // 2)  # conv_root, 7x7 stride 2, "SAME"
    flops = _conv(side, 7, 3, width)
    side = -(-side // 2)  # max-pool, stride 2
    c_in = width
    for i, units in enumerate(config.resnet_layers):
        features = width * 2**i
        for j in range(units):
            stride = 2 if (i > 0 and j == 0) else 1
            out_side = -(-side // stride)
            flops += _conv(side, 1, c_in, features)  # conv1
            flops += _conv(out_side, 3, features, features)  # conv2 (strided)
            flops += _conv(out_side, 1, features, 4 * features)  # conv3
            if c_in != 4 * features or stride != 1:
                flops += _conv(out_side, 1, c_in, 4 * features)  # conv_proj
            side, c_in = out_side, 4 * features
    return flops, side


def forward_flops(name: str, resolution: int = 224, num_classes: int = 1000) -> int:
    """Matrix-multiply FLOPs of one image's forward pass (2 per multiply-add)."""
    c = get_model_config(name)
    flops, channels = 0, 3
    side = resolution
    if c.is_hybrid:
        flops, side = _resnet_flops(c, resolution)
        channels = c.resnet_width * 2 ** max(len(c.resnet_layers) - 1, 0) * (
            4 if c.resnet_layers else 1)
    grid = side // c.patch_size
    patches = grid * grid
    d, m = c.hidden_size, c.mlp_dim
    flops += 2 * patches * c.patch_size**2 * channels * d  # patch embedding
    t = patches + 1  # class token
    per_block = (2 * t * d * 3 * d  # fused query/key/value projection
                 + 2 * t * t * d  # attention logits, all heads
                 + 2 * t * t * d  # weights @ values
                 + 2 * t * d * d  # output projection
                 + 2 * 2 * t * d * m)  # MLP, two layers
    flops += c.num_layers * per_block
    flops += 2 * d * num_classes  # head on the class token
    return int(flops)


def train_flops(name: str, resolution: int = 224, num_classes: int = 100) -> int:
    """Model FLOPs of one image's training step: forward + backward = 3x the forward."""
    return 3 * forward_flops(name, resolution, num_classes)


def xla_flops(jitted, *args) -> float | None:
    """XLA's FLOP count of ``jitted(*args)`` (its cost analysis; None if not reported)."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per device program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def matmul_peak(size: int = PEAK_MATMUL_SIZE, repeats: int = 10) -> dict:
    """The best and median FLOP/s of a jitted float32 ``size x size`` matrix product.

    The best run is the peak (a shared machine only ever slows a run down); the median is
    kept to show how loaded the machine was.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = jax.device_put(jnp.asarray(rng.standard_normal((size, size)), jnp.float32))
    b = jax.device_put(jnp.asarray(rng.standard_normal((size, size)), jnp.float32))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        seconds.append(time.perf_counter() - t0)
    flops = 2.0 * size**3
    seconds.sort()
    return {"size": size, "peak_flops": flops / seconds[0],
            "median_flops": flops / seconds[len(seconds) // 2], "seconds": seconds}


def roofline_fraction(img_per_s: float, flops_per_image: float, peak_flops: float) -> float:
    """Share of the measured matmul peak that ``img_per_s`` images represent."""
    return img_per_s * flops_per_image / peak_flops
