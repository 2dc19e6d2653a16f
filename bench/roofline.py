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
2. measures, in the same run, the **hardware's float32 matmul peak**
   (:func:`hardware_peak`): the best of several ``2048 x 2048`` float32 matrix products with
   every kernel the environment offers, each checked for correct results: XLA's default CPU
   kernel (:func:`matmul_peak`), XLA with each of its CPU options that hand dots to another
   library (:data:`XLA_DOT_OPTIONS`, each in a child interpreter since XLA reads its flags
   once), and NumPy's BLAS (:func:`numpy_peak`). The fastest sets the peak and is named, so
   the roofline is the machine's, not one compiler's; PyTorch's kernel (oneDNN) is
   measured too when the interpreter of the timm comparison exists (:func:`torch_peak`),
   and the bfloat16 rows get a roofline of their own (:func:`bf16_matmul_peak`);
3. reports ``images/s x FLOPs per image / peak``: the fraction of that roofline a model
   reaches (1.0 = every cycle spent in matrix multiplies at the best rate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from augreg_nb.models import ModelConfig, get_model_config

#: Side of the square float32 matrices of the peak measurement.
PEAK_MATMUL_SIZE = 2048

#: XLA CPU options that route float32 dots to another kernel library (name -> XLA flag),
#: measured beside XLA's default kernel. An option the installed jaxlib does not know ends
#: its child interpreter; the kernel is then reported as unavailable.
XLA_DOT_OPTIONS = {
    "XLA + XNNPACK dots": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "XLA + oneDNN dots": "--xla_cpu_experimental_onednn_fusion_type=dot",
}

#: Largest relative error (against a float64 product) a kernel may show and still count.
PEAK_MAX_REL_ERROR = 1e-3

_ROOT = Path(__file__).resolve().parent.parent


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


def _operands(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.standard_normal((size, size)).astype(np.float32),
            rng.standard_normal((size, size)).astype(np.float32))


def _rel_error(a, b, product) -> float:
    """Largest error of ``product``'s first rows against a float64 product, computed with
    element-wise numpy only (no BLAS, so a faulty BLAS cannot vouch for itself)."""
    import numpy as np

    rows = min(4, a.shape[0])
    want = (a[:rows, :, None].astype(np.float64) * b[None].astype(np.float64)).sum(axis=1)
    got = np.asarray(product[:rows], np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _timed(fn, size: int, repeats: int) -> dict:
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    flops = 2.0 * size**3
    seconds.sort()
    return {"size": size, "peak_flops": flops / seconds[0],
            "median_flops": flops / seconds[len(seconds) // 2], "seconds": seconds}


def matmul_peak(size: int = PEAK_MATMUL_SIZE, repeats: int = 10) -> dict:
    """The best and median FLOP/s of a jitted float32 ``size x size`` matrix product with the
    XLA flags this interpreter started with, and the product's relative error.

    The best run is the peak (a shared machine only ever slows a run down); the median is
    kept to show how loaded the machine was.
    """
    import jax
    import jax.numpy as jnp

    a_np, b_np = _operands(size)
    a, b = jax.device_put(jnp.asarray(a_np)), jax.device_put(jnp.asarray(b_np))
    matmul = jax.jit(jnp.matmul)
    res = _timed(lambda: matmul(a, b).block_until_ready(), size, repeats)
    res["rel_error"] = _rel_error(a_np, b_np, matmul(a, b))
    return res


def numpy_peak(size: int = PEAK_MATMUL_SIZE, repeats: int = 10) -> dict:
    """The same measurement with NumPy's BLAS, named by threadpoolctl where it is installed."""
    import numpy as np

    a, b = _operands(size)
    out = np.empty_like(a)
    res = _timed(lambda: np.matmul(a, b, out=out), size, repeats)
    res["rel_error"] = _rel_error(a, b, out)
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            res["library"] = (f"{blas[0].get('internal_api')} {blas[0].get('version')} "
                              f"({blas[0].get('architecture')}, "
                              f"{blas[0].get('num_threads')} threads)")
    except ImportError:
        pass
    return res


def torch_peak(torch_python: str | None, size: int = PEAK_MATMUL_SIZE,
               repeats: int = 10) -> dict:
    """The same float32 measurement with PyTorch (its CPU kernels are oneDNN's), in the
    interpreter of the bench's timm comparison (:mod:`bench.torch_worker`). Returns
    ``{"error": why}`` when that interpreter is missing or fails."""
    import tempfile

    import numpy as np

    from bench import torch_worker

    worker, why = torch_worker.start(torch_python, batch=1, resolution=32)
    if worker is None:
        return {"error": why.replace("timm skipped: ", "")}
    a, b = _operands(size)
    with tempfile.TemporaryDirectory(prefix="augreg-bench-peak-") as tmp:
        path = os.path.join(tmp, "operands.npz")
        np.savez(path, a=a, b=b)
        try:
            got = worker.matmul(path, repeats)
        except (RuntimeError, OSError, ValueError) as err:
            return {"error": f"the PyTorch interpreter failed ({str(err)[:160]})"}
        finally:
            worker.close()
    seconds = sorted(got["seconds"])
    flops = 2.0 * size**3
    return {"size": size, "peak_flops": flops / seconds[0],
            "median_flops": flops / seconds[len(seconds) // 2], "seconds": seconds,
            "rel_error": _rel_error(a, b, np.asarray(got["rows"], np.float32)),
            "library": got["library"]}


def bf16_matmul_peak(size: int = PEAK_MATMUL_SIZE, repeats: int = 10) -> dict:
    """Best FLOP/s of XLA's ``size x size`` product of bfloat16 operands with float32 sums
    and result (``preferred_element_type``), the form of ``matmul_dtype="bfloat16"``; the
    error is measured against a float64 product of the rounded operands."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a_np, b_np = _operands(size)
    a = jax.device_put(jnp.asarray(a_np, jnp.bfloat16))
    b = jax.device_put(jnp.asarray(b_np, jnp.bfloat16))
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    res = _timed(lambda: matmul(a, b).block_until_ready(), size, repeats)
    res["rel_error"] = _rel_error(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                  matmul(a, b))
    return res


def xla_option_peak(flag: str, size: int = PEAK_MATMUL_SIZE, repeats: int = 10,
                    timeout: float = 300) -> dict:
    """:func:`matmul_peak` in a child interpreter whose XLA starts with ``flag`` added.

    Returns the measurement, or ``{"error": why}`` when the installed jaxlib refuses the flag
    or the child fails; never raises for that.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    code = ("import json; from bench.roofline import matmul_peak; "
            f"print('RESULT ' + json.dumps(matmul_peak({size}, {repeats})))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"error": f"not available with jaxlib here ({last[:160]})"}


def hardware_peak(size: int = PEAK_MATMUL_SIZE, repeats: int = 10,
                  options: dict[str, str] | None = None,
                  torch_python: str | None = None) -> dict:
    """The machine's float32 matmul peak: the fastest correct kernel of the environment.

    Measures XLA's default kernel in this interpreter, NumPy's BLAS, each of ``options``
    (default :data:`XLA_DOT_OPTIONS`) in a child interpreter, and PyTorch's (oneDNN) when
    ``torch_python`` names an interpreter that has it. A kernel whose product is off
    by more than :data:`PEAK_MAX_REL_ERROR` does not count. Returns ``peak_flops`` and the
    ``kernel`` that set it, ``xla_default_flops``, every kernel's measurement (or the
    reason it is missing) under ``kernels``, and ``bf16`` (:func:`bf16_matmul_peak`), the
    roofline of the bfloat16 rows.
    """
    options = XLA_DOT_OPTIONS if options is None else options
    kernels = {"XLA default": matmul_peak(size, repeats), "NumPy BLAS": numpy_peak(size, repeats)}
    for name, flag in options.items():
        kernels[name] = dict(xla_option_peak(flag, size, repeats), flag=flag)
    if torch_python is not None:
        kernels["PyTorch"] = torch_peak(torch_python, size, repeats)
    for res in kernels.values():
        if "peak_flops" in res and not res["rel_error"] <= PEAK_MAX_REL_ERROR:
            res["error"] = f"wrong results (relative error {res['rel_error']:.1e})"
    valid = {k: v for k, v in kernels.items() if "error" not in v}
    best = max(valid, key=lambda k: valid[k]["peak_flops"])
    bf16 = bf16_matmul_peak(size, repeats)
    return {"size": size, "peak_flops": valid[best]["peak_flops"], "kernel": best,
            "xla_default_flops": kernels["XLA default"]["peak_flops"], "kernels": kernels,
            "bf16": bf16}


def roofline_fraction(img_per_s: float, flops_per_image: float, peak_flops: float) -> float:
    """Share of the measured matmul peak that ``img_per_s`` images represent."""
    return img_per_s * flops_per_image / peak_flops
