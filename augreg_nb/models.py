"""Vision Transformers and ResNet+ViT hybrids whose parameters are named like the AugReg files.

The ten AugReg architectures (and two tiny ones for tests) are registered by their paper
names. A model is a Flax Linen module that maps NHWC float32 images in [-1, 1] to logits:

    >>> import jax, jax.numpy as jnp
    >>> from augreg_nb.models import create_model, get_model_config
    >>> model = create_model("Ti/16", num_classes=10)
    >>> get_model_config("Ti/16").grid_size(224)
    14
    >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
    >>> logits = model.apply({"params": params}, jnp.zeros((2, 224, 224, 3)), train=False)
    >>> logits.shape
    (2, 10)

The parameter tree uses the names of the published ``.npz`` files, with their "old" Flax
numbering inside each encoder block (``LayerNorm_0``, ``MultiHeadDotProductAttention_1``,
``LayerNorm_2``, ``MlpBlock_3``), so ``augreg_nb.checkpoint.load`` hands a file's arrays to
the module unchanged (GroupNorm parameters aside, which Flax keeps as ``(C,)``).

Numerics follow the authors' reference: LayerNorm eps 1e-6, attention heads of 64 features,
GELU in its tanh approximation, a class token, learned position embeddings, no pre-logits
layer, and for hybrids a ResNet-v2 stem with weight-standardised convolutions and GroupNorm
(32 groups, eps 1e-6), "SAME" padding. For speed on CPU the patch embedding is computed as a
reshape plus one matrix multiply (the same sum as the strided convolution), the query,
key and value projections as one fused matrix multiply, and attention (head by head on
column slices for models with few heads) and layer norms with hand-written backward passes
(:func:`attend`, :func:`layer_norm`); bench/README.md has the measurements. On GPUs and TPUs
attention goes through ``jax.nn.dot_product_attention`` instead (cuDNN's fused kernel for
bfloat16/float16 on NVIDIA GPUs); ``attention_impl`` chooses explicitly
(:func:`resolve_attention_impl`). Inference on a CPU runs batches in sequential chunks of
:data:`CPU_FORWARD_CHUNK` images (:func:`in_chunks`, :func:`forward_chunk`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from augreg_nb import protocol

#: The ten AugReg architectures, in the paper's order.
AUGREG_MODELS = protocol.MODELS
#: Tiny configurations for tests and the notebooks' smoke mode.
TESTING_MODELS = ("testing", "testing-hybrid")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one registered model.

    Attributes:
      name: registry name ("B/16", "R26+S/32", "testing", ...).
      file_prefix: how filenames spell the model ("R26_S_32"); None for testing models.
      patch_size: side of the square patches the embedding cuts (after the stem, if any).
      hidden_size: width of the token representation.
      num_layers: number of encoder blocks.
      num_heads: attention heads (hidden_size / 64 for every AugReg model).
      mlp_dim: hidden width of each block's MLP.
      resnet_layers: units per ResNet stage for hybrids (``()`` = stem only); None for ViT.
      resnet_width: channels of the ResNet stem (stage i has ``width * 2**i`` bottleneck
        channels and four times that at its output).
    """

    name: str
    file_prefix: str | None
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    resnet_layers: tuple[int, ...] | None = None
    resnet_width: int = 64

    @property
    def is_hybrid(self) -> bool:
        return self.resnet_layers is not None

    def feature_size(self, resolution: int) -> int:
        """Side of the feature map the patch embedding sees (the stem's output for hybrids)."""
        side = int(resolution)
        if self.is_hybrid:
            # conv_root (stride 2) and max-pool (stride 2), then one stride 2 per later stage,
            # all with "SAME" padding: each halves the side, rounding up.
            for _ in range(2 + max(len(self.resnet_layers) - 1, 0)):
                side = -(-side // 2)
        return side

    def grid_size(self, resolution: int) -> int:
        """Side of the token grid at ``resolution`` px (R+Ti/16 at 224 -> 7)."""
        grid = self.feature_size(resolution) // self.patch_size
        if grid < 1:
            raise ValueError(
                f"{resolution} px is too small for {self.name} (patch {self.patch_size}); "
                "use a larger resolution"
            )
        return grid

    def resolution_for_grid(self, grid: int) -> int:
        """The smallest resolution whose token grid is ``grid`` (224 for 14 with /16)."""
        stride = self.patch_size * (2 ** (2 + max(len(self.resnet_layers) - 1, 0))
                                    if self.is_hybrid else 1)
        return grid * stride


def _vit(name, prefix, patch, width, layers, mlp, resnet=None):
    return ModelConfig(name, prefix, patch, width, layers, width // 64, mlp, resnet)


_REGISTRY: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _vit("Ti/16", "Ti_16", 16, 192, 12, 768),
        _vit("S/16", "S_16", 16, 384, 12, 1536),
        _vit("S/32", "S_32", 32, 384, 12, 1536),
        _vit("B/16", "B_16", 16, 768, 12, 3072),
        _vit("B/32", "B_32", 32, 768, 12, 3072),
        _vit("B/8", "B_8", 8, 768, 12, 3072),
        _vit("L/16", "L_16", 16, 1024, 24, 4096),
        # R+Ti/16: stem only (4x smaller), then 8x8 patches: 32x in total, like a /32 grid.
        _vit("R+Ti/16", "R_Ti_16", 8, 192, 12, 768, resnet=()),
        _vit("R26+S/32", "R26_S_32", 1, 384, 12, 1536, resnet=(2, 2, 2, 2)),
        _vit("R50+L/32", "R50_L_32", 1, 1024, 24, 4096, resnet=(3, 4, 6, 3)),
        ModelConfig("testing", None, 8, 32, 2, 2, 48),
        ModelConfig("testing-hybrid", None, 1, 32, 2, 2, 48, resnet_layers=(1, 1)),
    )
}


def list_models() -> tuple[str, ...]:
    """Every registered name: the ten AugReg models, then the testing ones."""
    return AUGREG_MODELS + TESTING_MODELS


def get_model_config(name: str) -> ModelConfig:
    """The registered configuration for a paper name ("B/16") or file prefix ("B_16")."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for config in _REGISTRY.values():
        if config.file_prefix == name:
            return config
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}."
    )


def create_model(name: str, num_classes: int, *, dtype: Any = None, param_dtype: Any = None,
                 dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
                 stochastic_depth: float = 0.0, attention_impl: str = "auto",
                 matmul_dtype: Any = None):
    """A Linen module for model ``name`` with a ``num_classes``-way head.

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16`` on accelerators) and
    ``param_dtype`` the dtype of the parameters; both default to float32, the published
    numerics. Dropout rates and ``stochastic_depth`` (the drop probability of the last
    block, see :func:`drop_path_rates`) default to 0, the fine-tuning protocol's value;
    AugReg's ``do`` and ``sd`` are ``dropout_rate`` and ``stochastic_depth``. They act only
    with ``train=True`` and a ``"dropout"`` rng, and add no parameters.
    ``attention_impl``: "auto" (the CPU path on CPU, ``jax.nn.dot_product_attention`` on
    GPU/TPU), "cpu", "xla" or "cudnn"; see :func:`resolve_attention_impl`.
    ``matmul_dtype``: None (the default: every matrix multiply in float32) or
    ``jnp.bfloat16`` (or "bfloat16"): the operands of the transformer's matrix multiplies
    (patch embedding, attention, MLP, head) rounded to bfloat16, sums and every other
    operation in float32. An opt-in inference speed-up for CPUs with bfloat16 matrix units
    (Intel AMX, AVX512-BF16), measured with its agreement to float32 by ``python -m bench
    --only bf16`` (bench/README.md); hybrids' ResNet convolutions stay float32, and with
    ``attention_impl`` "xla"/"cudnn" the fused attention takes bfloat16 operands and sums
    as that kernel does. Meant for inference: attention dropout, when training with it,
    stays float32.
    """
    matmul_dtype = _check_matmul_dtype(matmul_dtype)
    if not 0.0 <= float(stochastic_depth) < 1.0:
        raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
    config = get_model_config(name)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_attention_impl(attention_impl)
    return VisionTransformer(
        config=config,
        num_classes=int(num_classes),
        dtype=dtype or jnp.float32,
        param_dtype=param_dtype or jnp.float32,
        dropout_rate=dropout_rate,
        attention_dropout_rate=attention_dropout_rate,
        stochastic_depth=float(stochastic_depth),
        attention_impl=attention_impl,
        matmul_dtype=matmul_dtype,
    )


def abstract_params(name: str, num_classes: int = 21843, resolution: int = 224) -> dict:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves, without allocating memory."""
    model = create_model(name, num_classes)
    images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images
    )
    return dict(variables["params"])


#: On a CPU, inference and feature extraction run a batch through the model this many images
#: at a time, one chunk after the other inside one compiled program (:func:`in_chunks`). On
#: the Intel Xeon of bench/README.md, chunks of 16 beat whole batches of 32 and 64 for every
#: model measured, float32 and bfloat16 alike (up to 2x for S/16 in bfloat16), and
#: were never worse than chunks of 4 or 8. Override with the environment variable
#: ``AUGREG_NB_CPU_CHUNK`` (0: whole batches), read when a forward pass is first built.
#: The transfer recipe's training step uses the same size (``train.train_chunk``).
CPU_FORWARD_CHUNK = 16


def forward_chunk(backend: str | None = None) -> int:
    """Images per sequential chunk of an inference forward pass on ``backend`` (default
    JAX's): :data:`CPU_FORWARD_CHUNK` (or ``AUGREG_NB_CPU_CHUNK``) on CPU, 0 (whole batches)
    on accelerators, where a large batch keeps the device busy."""
    import os

    if (backend or jax.default_backend()) != "cpu":
        return 0
    value = os.environ.get("AUGREG_NB_CPU_CHUNK", "").strip()
    if not value:
        return CPU_FORWARD_CHUNK
    try:
        chunk = int(value)
    except ValueError:
        chunk = -1
    if chunk < 0:
        raise ValueError(f"AUGREG_NB_CPU_CHUNK={value!r} is not a number of images; set a "
                         "whole number >= 0 (0 runs whole batches) or unset it")
    return chunk


def in_chunks(fn, chunk: int):
    """``fn(params, images)`` evaluated ``chunk`` images at a time, one chunk after the
    other (``jax.lax.map``), with the outputs joined along the batch axis.

    Call it under ``jax.jit``. Images are independent in a forward pass, so the result is
    ``fn``'s on the whole batch, up to float rounding; what changes is that each
    intermediate array holds ``chunk`` images, not the batch. A batch that is not a
    multiple of ``chunk`` runs its remainder as one smaller chunk (no padding);
    ``chunk`` 0, or a batch of at most ``chunk`` images, calls ``fn`` directly.
    """
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0 images, got {chunk}")
    if not chunk:
        return fn

    def run(params, images):
        n = images.shape[0]
        if n <= chunk:
            return fn(params, images)
        full = n // chunk * chunk
        chunks = images[:full].reshape(full // chunk, chunk, *images.shape[1:])
        out = jax.lax.map(lambda x: fn(params, x), chunks)
        out = jax.tree_util.tree_map(lambda y: y.reshape(full, *y.shape[2:]), out)
        if full == n:
            return out
        rest = fn(params, images[full:])
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, rest)

    return run


def param_count(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or shape structs as leaves)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)))


def count_params(name: str, num_classes: int = 21843, resolution: int = 224) -> int:
    """Parameter count of a registered model (21,843-class head at 224 px by default)."""
    return param_count(abstract_params(name, num_classes, resolution))


def describe(names: Sequence[str] | None = None) -> list[dict]:
    """One row per model (name, patch, width, depth, heads, MLP, ResNet stages, params)."""
    rows = []
    for name in names or AUGREG_MODELS:
        c = get_model_config(name)
        rows.append({
            "model": c.name, "patch_size": c.patch_size, "hidden_size": c.hidden_size,
            "num_layers": c.num_layers, "num_heads": c.num_heads, "mlp_dim": c.mlp_dim,
            "resnet_layers": c.resnet_layers, "params_21k_224": count_params(name),
        })
    return rows


# --------------------------------------------------------------------------------------------
# Linen modules. Module names are the published parameter names.

Dtype = Any
_xavier = nn.initializers.xavier_uniform


def _check_matmul_dtype(matmul_dtype: Any) -> Any:
    """``None`` or ``jnp.bfloat16`` (given as a dtype or its name); anything else refuses."""
    if matmul_dtype is None or (isinstance(matmul_dtype, str)
                                and matmul_dtype.lower() in ("float32", "none", "")):
        return None
    try:
        dtype = jnp.dtype(matmul_dtype)
    except TypeError:
        dtype = None
    if dtype != jnp.dtype(jnp.bfloat16):
        raise ValueError(
            f"matmul_dtype must be None (float32 matrix multiplies, the published numerics) "
            f"or bfloat16, got {matmul_dtype!r}"
        )
    return jnp.bfloat16


def _linear_forward(x, w):
    return x @ w, (x, w)


def _linear_backward(residuals, d_y):
    x, w = residuals
    x2 = x.reshape(-1, x.shape[-1])
    g2 = d_y.reshape(-1, d_y.shape[-1])
    # The weight gradient sums over every row (image x token): x^T @ g. XLA's CPU products
    # want that summed axis innermost in the left operand and outermost in the right, so
    # one operand is transposed first; materialising the transpose of the narrower one
    # (behind a barrier XLA does not fold) moves the fewest bytes.
    if x2.shape[1] <= g2.shape[1]:
        d_w = jax.lax.optimization_barrier(x2.T) @ g2
    else:
        d_w = (jax.lax.optimization_barrier(g2.T) @ x2).T
    return (d_y @ w.T).astype(x.dtype), d_w.astype(w.dtype)


@jax.custom_vjp
def linear(x, w):
    """``x @ w`` for ``x`` (..., in) and ``w`` (in, out), with a backward pass for CPUs.

    The gradients are automatic differentiation's (``d_y @ w^T`` and ``x^T @ d_y``) up to
    float rounding; for the weight gradient XLA transposes one operand, and left alone it
    often picks the wider one (the MLP's 768-wide gradient rather than its 192-wide input
    for Ti/16). Transposing the narrower one makes the Ti/16 training step 1.11x faster on
    the Xeon of bench/README.md (S/32 1.07x, B/32 1.09x, R+Ti/16 1.04x). Used on CPUs
    (:func:`matmul`, the MLP and head ``nn.Dense`` layers); accelerators keep XLA's choice.
    """
    return x @ w


linear.defvjp(_linear_forward, _linear_backward)


def _cpu_linear() -> bool:
    return jax.default_backend() == "cpu"


def matmul(x, w, matmul_dtype: Any = None):
    """``x @ w``; with ``matmul_dtype`` (bfloat16) the operands are rounded to it and the
    product is accumulated and returned in float32 (``preferred_element_type``), the form
    XLA hands to the CPU's bfloat16 matrix units (AMX, AVX512-BF16). Without it, on CPUs,
    :func:`linear` for 2-D ``w`` (its backward pass is faster there)."""
    if matmul_dtype is None:
        if w.ndim == 2 and x.dtype == w.dtype and _cpu_linear():
            return linear(x, w)
        return x @ w
    out = jnp.matmul(x.astype(matmul_dtype), w.astype(matmul_dtype),
                     preferred_element_type=jnp.float32)
    return out.astype(jnp.result_type(x.dtype, w.dtype))


def _low_precision_dot_general(matmul_dtype, lhs, rhs, dimension_numbers, precision=None,
                               preferred_element_type=None):
    """``lax.dot_general`` for ``nn.Dense``: operands in ``matmul_dtype``, float32 sums."""
    del preferred_element_type
    out = jax.lax.dot_general(lhs.astype(matmul_dtype), rhs.astype(matmul_dtype),
                              dimension_numbers, precision=precision,
                              preferred_element_type=jnp.float32)
    return out.astype(jnp.result_type(lhs.dtype, rhs.dtype))


def _linear_dot_general(lhs, rhs, dimension_numbers, precision=None,
                        preferred_element_type=None):
    """``lax.dot_general`` for ``nn.Dense`` through :func:`linear` (a plain contraction of
    the last axis of the input with the first of a 2-D kernel; anything else: XLA's)."""
    plain = (((lhs.ndim - 1,), (0,)), ((), ()))
    if (rhs.ndim == 2 and lhs.dtype == rhs.dtype and precision is None
            and preferred_element_type in (None, lhs.dtype)
            and jax.tree_util.tree_structure(dimension_numbers)
            == jax.tree_util.tree_structure(plain)
            and tuple(map(tuple, dimension_numbers[0])) == plain[0]
            and tuple(map(tuple, dimension_numbers[1])) == plain[1]):
        return linear(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)


def _dense_dot_general(matmul_dtype):
    """The ``dot_general`` argument of ``nn.Dense`` for ``matmul_dtype``: None is Flax's
    on accelerators and :func:`linear` on CPUs."""
    if matmul_dtype is None:
        return _linear_dot_general if _cpu_linear() else None
    return functools.partial(_low_precision_dot_general, matmul_dtype)


class _Projection(nn.Module):
    """Holds the kernel and bias of one attention projection (query/key/value/out).

    The kernel keeps the published ``DenseGeneral`` shape, e.g. (hidden, heads, 64) for the
    query; the attention module fuses the projections into one matrix multiply.
    """

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    in_axes: tuple[int, ...]
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self):
        axes = tuple(range(len(self.kernel_shape)))
        out_axes = tuple(a for a in axes if a not in self.in_axes)
        init = _xavier(in_axis=self.in_axes, out_axis=out_axes)
        kernel = self.param("kernel", init, self.kernel_shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, self.bias_shape, self.param_dtype)
        return kernel, bias


def _attend_forward(q, k, v):
    logits = q @ jnp.swapaxes(k, -1, -2)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    out = weights @ v
    return out, (q, k, v, weights, out)


def _attend_backward(residuals, d_out):
    q, k, v, weights, out = residuals
    d_v = jnp.swapaxes(weights, -1, -2) @ d_out
    d_weights = (d_out @ jnp.swapaxes(v, -1, -2)).astype(jnp.float32)
    # Softmax backward: w * (dw - sum_j w_j dw_j), and sum_j w_j dw_j = <d_out, out>.
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = (weights.astype(jnp.float32) * (d_weights - row)).astype(q.dtype)
    return d_logits @ k, jnp.swapaxes(d_logits, -1, -2) @ q, d_v


@jax.custom_vjp
def attend(q, k, v):
    """``softmax(q @ k^T) @ v`` over (..., tokens, depth) arrays, softmax in float32.

    ``q`` must already be scaled by 1/sqrt(depth). The backward pass is written out (the
    textbook softmax gradient) so that XLA sees five plain matrix multiplies instead of
    the transposed and broadcast intermediates automatic differentiation produces; the
    gradients are the same up to float rounding.
    """
    return _attend_forward(q, k, v)[0]


attend.defvjp(_attend_forward, _attend_backward)


def attend_low_precision(q, k, v, matmul_dtype):
    """:func:`attend` with both matrix multiplies in ``matmul_dtype`` (float32 sums, softmax
    in float32); differentiated automatically.

    The rounded query and key are materialised behind an optimisation barrier: fused with
    their producers, XLA's CPU compiler converts them back to float32 and runs ``q @ k^T``
    in float32 (same values, without the matrix units); with the barrier the forward pass is
    1.03-1.08x faster on the Xeon of bench/README.md (Ti/16, S/16, B/16).
    """
    q_low, k_low = jax.lax.optimization_barrier(
        (q.astype(matmul_dtype), k.astype(matmul_dtype)))
    logits = jnp.einsum("...qd,...kd->...qk", q_low, k_low, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return matmul(weights, v, matmul_dtype).astype(q.dtype)


#: Values of ``attention_impl`` (models, :class:`MultiHeadAttention`).
ATTENTION_IMPLS = ("auto", "cpu", "xla", "cudnn")


def _check_attention_impl(impl: str) -> None:
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"unknown attention_impl {impl!r}; choose one of {', '.join(ATTENTION_IMPLS)} "
            "(\"auto\" picks by JAX's backend)"
        )


def resolve_attention_impl(impl: str = "auto", dtype: Any = jnp.float32,
                           backend: str | None = None) -> str:
    """Which attention code runs: "cpu", "xla" or "cudnn".

    - "cpu": :func:`attend` with its hand-written backward pass, head by head for models
      with at most :data:`PER_HEAD_MAX_HEADS` heads, else batched over (batch, heads). The
      fastest on CPUs (bench/README.md).
    - "xla": ``jax.nn.dot_product_attention(..., implementation="xla")``, the same maths
      as one XLA computation on (batch, tokens, heads, depth) arrays; runs everywhere.
    - "cudnn": the same function with ``implementation="cudnn"``: cuDNN's fused (flash)
      attention kernel, NVIDIA GPUs only, bfloat16 or float16 only.

    "auto" resolves by ``backend`` (default ``jax.default_backend()``): "cpu" on CPU;
    "cudnn" on a GPU for bfloat16/float16 (the model falls back to "xla" when cuDNN turns
    the shapes or the device down); "xla" otherwise (TPUs, float32 on GPUs).
    ``jax.nn.dot_product_attention``'s own default (``implementation=None``) is XLA's
    version in jax 0.7 to 0.10, hence the explicit choice.
    """
    _check_attention_impl(impl)
    backend = backend or jax.default_backend()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if impl == "auto":
        if backend == "cpu":
            return "cpu"
        return "cudnn" if backend == "gpu" and half else "xla"
    if impl == "cudnn" and (backend != "gpu" or not half):
        raise ValueError(
            f"attention_impl='cudnn' needs an NVIDIA GPU and bfloat16/float16 activations "
            f"(backend {backend!r}, dtype {jnp.dtype(dtype).name}); use attention_impl="
            "'auto' or 'xla'"
        )
    return impl


#: Up to this many heads, attention runs head by head (measured faster for Ti/16's 3 heads
#: on CPU); with more heads, batched over (batch, heads) (faster for B's 12).
PER_HEAD_MAX_HEADS = 4


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with Flax's ``MultiHeadDotProductAttention`` parameters."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    attention_impl: str = "auto"
    #: None, or bfloat16: the operands of every matrix multiply (see :func:`matmul`).
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        n, length, width = x.shape
        mm = self.matmul_dtype
        heads = self.num_heads
        if width % heads:
            raise ValueError(f"hidden size {width} is not divisible by {heads} heads")
        depth = width // heads
        kernels, biases = [], []
        for name in ("query", "key", "value"):
            k, b = _Projection((width, heads, depth), (heads, depth), (0,), self.param_dtype,
                               name=name)()
            kernels.append(k.reshape(width, heads * depth))
            biases.append(b.reshape(heads * depth))
        out_kernel, out_bias = _Projection((heads, depth, width), (width,), (0, 1),
                                           self.param_dtype, name="out")()
        # One (width x 3*width) matrix multiply instead of three; columns are
        # [query heads | key heads | value heads], `depth` each.
        w_qkv = jnp.concatenate(kernels, axis=1).astype(self.dtype)
        b_qkv = jnp.concatenate(biases).astype(self.dtype)
        qkv = matmul(x.astype(self.dtype), w_qkv, mm) + b_qkv
        w_out = out_kernel.reshape(heads * depth, width).astype(self.dtype)
        scale = jnp.asarray(1.0 / np.sqrt(depth), self.dtype)
        out_bias = out_bias.astype(self.dtype)
        impl = resolve_attention_impl(self.attention_impl, self.dtype)
        if impl != "cpu":
            # (batch, tokens, heads, depth), the layout jax.nn.dot_product_attention takes:
            # a reshape of the fused projection, no transposes.
            q, k, v = (t.reshape(n, length, heads, depth)
                       for t in (qkv[..., :width], qkv[..., width:2 * width],
                                 qkv[..., 2 * width:]))
            if not deterministic and self.dropout_rate > 0:
                out = self._attend_with_dropout(q * scale, k, v)
            else:
                if mm is not None:
                    q, k, v = (t.astype(mm) for t in (q, k, v))
                out = self._fused(q, k, v, impl, float(1.0 / np.sqrt(depth)))
                out = out.astype(self.dtype)
            return matmul(out.reshape(n, length, width), w_out, mm) + out_bias
        if heads > PER_HEAD_MAX_HEADS:
            # (3, batch, heads, tokens, depth): batched matrix multiplies over (batch, heads)
            # are several times faster on CPU than the equivalent einsum over "nqhd,nkhd".
            qkv = qkv.reshape(n, length, 3, heads, depth).transpose(2, 0, 3, 1, 4)
            out = self._attend(qkv[0] * scale, qkv[1], qkv[2], deterministic)
            out = out.transpose(0, 2, 1, 3).reshape(n, length, heads * depth)
            return matmul(out, w_out, mm) + out_bias
        # Few heads: head by head on (batch, tokens, depth) column slices, which needs no
        # transposes of the activations, accumulating the output projection per head.
        out = out_bias
        for h in range(heads):
            q = qkv[..., h * depth:(h + 1) * depth] * scale
            k = qkv[..., (heads + h) * depth:(heads + h + 1) * depth]
            v = qkv[..., (2 * heads + h) * depth:(2 * heads + h + 1) * depth]
            out = out + matmul(self._attend(q, k, v, deterministic),
                               w_out[h * depth:(h + 1) * depth], mm)
        return out

    def _fused(self, q, k, v, impl: str, scale: float):
        if impl == "cudnn" and self.attention_impl == "auto":
            try:
                return jax.nn.dot_product_attention(q, k, v, scale=scale,
                                                    implementation="cudnn")
            except (NotImplementedError, RuntimeError, ValueError, TypeError):
                # cuDNN missing or these shapes unsupported (checked while tracing): XLA.
                impl = "xla"
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)

    def _attend_with_dropout(self, q, k, v):
        """Attention dropout (training with ``attention_dropout_rate`` > 0), on
        (batch, tokens, heads, depth) arrays; the fused functions have no dropout."""
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
        return jnp.einsum("nhqk,nkhd->nqhd", weights, v)

    def _attend(self, q, k, v, deterministic: bool):
        if deterministic or self.dropout_rate == 0:
            if self.matmul_dtype is not None:
                return attend_low_precision(q, k, v, self.matmul_dtype)
            return attend(q, k, v)
        logits = q @ jnp.swapaxes(k, -1, -2)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
        return weights @ v


def _layer_norm_forward(x, scale, bias, epsilon):
    x32 = x.astype(jnp.float32)
    centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    normed = centered * inv_std
    y = normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype), (normed, inv_std, scale, bias, jnp.zeros((), x.dtype))


def _layer_norm_backward(epsilon, residuals, d_y):
    normed, inv_std, scale, bias, like = residuals
    d_y = d_y.astype(jnp.float32)
    g = d_y * scale.astype(jnp.float32)
    d_x = inv_std * (g - jnp.mean(g, axis=-1, keepdims=True)
                     - normed * jnp.mean(g * normed, axis=-1, keepdims=True))
    axes = tuple(range(d_y.ndim - 1))
    return (d_x.astype(like.dtype), jnp.sum(d_y * normed, axis=axes).astype(scale.dtype),
            jnp.sum(d_y, axis=axes).astype(bias.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon: float = 1e-6):
    """Layer normalisation over the last axis, statistics in float32.

    The same function as ``flax.linen.LayerNorm`` (mean and variance over the features,
    then ``scale`` and ``bias``), with the variance computed from centred values and the
    backward pass written out, which saves XLA on CPU a few broadcast intermediates.
    """
    return _layer_norm_forward(x, scale, bias, epsilon)[0]


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
    """:func:`layer_norm` with ``scale`` (ones) and ``bias`` (zeros) parameters of shape
    (features,), as ``flax.linen.LayerNorm`` names them."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon)


class MlpBlock(nn.Module):
    """Dense -> GELU (tanh approximation) -> Dense, named ``Dense_0`` and ``Dense_1``."""

    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        bias_init = nn.initializers.normal(stddev=1e-6)
        dot = _dense_dot_general(self.matmul_dtype)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=_xavier(), bias_init=bias_init, dot_general=dot,
                     name="Dense_0")(x)
        y = nn.gelu(y, approximate=True)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=_xavier(), bias_init=bias_init, dot_general=dot,
                     name="Dense_1")(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


def drop_path_rates(num_layers: int, stochastic_depth: float) -> tuple[float, ...]:
    """Drop probability of each encoder block: rising linearly from 0 (first block) to
    ``stochastic_depth`` (last block).

    The paper uses stochastic depth "with linearly increasing probability of dropping
    layers" and a maximal probability of 0.1; the rule ``i / (num_layers - 1) * sd`` is the
    one the authors' public code applies (big_vision's Mixer blocks)."""
    if num_layers <= 1:
        return (0.0,) * num_layers
    return tuple(i / (num_layers - 1) * float(stochastic_depth) for i in range(num_layers))


def drop_path(x, rate: float, rng):
    """Zero the whole residual branch ``x`` of each example with probability ``rate``.

    One Bernoulli draw per example (leading axis), shared by all its tokens and features.
    Kept branches are *not* rescaled, as in the authors' code, so evaluation (no drop)
    computes exactly the deterministic model."""
    if rate == 0:
        return x
    keep = 1.0 - jax.random.bernoulli(rng, rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * keep.astype(x.dtype)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block with the published (old) sub-module numbering.

    Regularisation (training only): dropout on the attention output and after both MLP
    dense layers (vit_jax's placement), and stochastic depth (:func:`drop_path`) on each of
    the two residual branches with independent draws, at ``drop_path_rate``."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    attention_impl: str = "auto"
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        y = LayerNorm(epsilon=1e-6, name="LayerNorm_0", **kw)(x)
        y = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                               attention_impl=self.attention_impl,
                               matmul_dtype=self.matmul_dtype,
                               name="MultiHeadDotProductAttention_1", **kw)(
            y, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + self._drop_path(y, deterministic)
        y = LayerNorm(epsilon=1e-6, name="LayerNorm_2", **kw)(x)
        y = MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate,
                     matmul_dtype=self.matmul_dtype, name="MlpBlock_3", **kw)(
            y, deterministic=deterministic)
        return x + self._drop_path(y, deterministic)

    def _drop_path(self, y, deterministic: bool):
        if deterministic or self.drop_path_rate == 0:
            return y
        return drop_path(y, self.drop_path_rate, self.make_rng("dropout"))


class PositionEmbedding(nn.Module):
    """Adds the learned position table ``pos_embedding`` of shape (1, tokens, hidden)."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (1, x.shape[1], x.shape[2])
        if self.has_variable("params", "pos_embedding"):
            have = self.get_variable("params", "pos_embedding").shape
            if tuple(have) != shape:
                raise ValueError(
                    f"the position embeddings have {have[1]} rows but the images give "
                    f"{shape[1]} tokens (class token + grid); load the checkpoint for this "
                    "resolution: augreg_nb.checkpoint.load(path, resolution=...)"
                )
        table = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape,
                           self.param_dtype)
        return x + table.astype(x.dtype)


class Encoder(nn.Module):
    """Position embedding, ``num_layers`` blocks and the final LayerNorm (``Transformer``)."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    attention_impl: str = "auto"
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = PositionEmbedding(self.param_dtype, name="posembed_input")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        rates = drop_path_rates(self.num_layers, self.stochastic_depth)
        for i in range(self.num_layers):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dtype, self.param_dtype,
                             self.dropout_rate, self.attention_dropout_rate,
                             drop_path_rate=rates[i], attention_impl=self.attention_impl,
                             matmul_dtype=self.matmul_dtype, name=f"encoderblock_{i}")(
                x, deterministic=not train)
        return LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="encoder_norm")(x)


def standardize_kernel(kernel):
    """Weight standardisation: minus the mean, divided by std + 1e-5 over (H, W, in)."""
    kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    return kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + 1e-5)


class StdConv(nn.Module):
    """Bias-free convolution with a weight-standardised kernel and "SAME" padding."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        kernel = standardize_kernel(kernel.astype(jnp.float32)).astype(self.dtype)
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel, self.strides, "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ResidualUnit(nn.Module):
    """ResNet-v2 bottleneck unit (conv1 1x1, conv2 3x3 with the stride, conv3 1x1)."""

    features: int
    strides: tuple[int, int] = (1, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        gn = {"num_groups": 32, "epsilon": 1e-6, **kw}
        residual = x
        if x.shape[-1] != self.features * 4 or self.strides != (1, 1):
            residual = StdConv(self.features * 4, (1, 1), self.strides, name="conv_proj",
                               **kw)(x)
            residual = nn.GroupNorm(name="gn_proj", **gn)(residual)
        y = StdConv(self.features, (1, 1), name="conv1", **kw)(x)
        y = nn.relu(nn.GroupNorm(name="gn1", **gn)(y))
        y = StdConv(self.features, (3, 3), self.strides, name="conv2", **kw)(y)
        y = nn.relu(nn.GroupNorm(name="gn2", **gn)(y))
        y = StdConv(self.features * 4, (1, 1), name="conv3", **kw)(y)
        y = nn.GroupNorm(name="gn3", scale_init=nn.initializers.zeros, **gn)(y)
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """``units`` bottleneck units named ``unit1``, ``unit2``, ...; the first one strides."""

    units: int
    features: int
    first_stride: tuple[int, int]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for j in range(self.units):
            stride = self.first_stride if j == 0 else (1, 1)
            x = ResidualUnit(self.features, stride, name=f"unit{j + 1}", **kw)(x)
        return x


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> tokens, the same sum as a stride-``patch`` VALID conv.

    The kernel keeps the convolution's shape (patch, patch, in, hidden); the computation is
    a reshape of the image into patches and a single matrix multiply, which is faster on CPU.
    """

    hidden_size: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        n, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (p, p, c, self.hidden_size), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,), self.param_dtype)
        gh, gw = h // p, w // p
        x = x[:, : gh * p, : gw * p, :].astype(self.dtype)
        if p > 1:
            x = x.reshape(n, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, gh * gw, p * p * c)
        tokens = matmul(x, kernel.reshape(p * p * c, self.hidden_size).astype(self.dtype),
                        self.matmul_dtype)
        return tokens + bias.astype(self.dtype)


class VisionTransformer(nn.Module):
    """ViT (or ResNet+ViT hybrid) classifier on the class token; AugReg parameter names."""

    config: ModelConfig
    num_classes: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    #: "auto", "cpu", "xla" or "cudnn": see :func:`resolve_attention_impl`.
    attention_impl: str = "auto"
    #: None (float32 matrix multiplies) or bfloat16 operands with float32 sums: see
    #: :func:`create_model`.
    matmul_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        cfg = self.config
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected NHWC RGB images of shape (batch, height, width, 3), got "
                f"{images.shape}; prepare them with augreg_nb.preprocess.prepare_images"
            )
        x = images.astype(self.dtype)
        if cfg.is_hybrid:
            width = cfg.resnet_width
            x = StdConv(width, (7, 7), (2, 2), name="conv_root", **kw)(x)
            x = nn.GroupNorm(num_groups=32, epsilon=1e-6, name="gn_root", **kw)(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for i, units in enumerate(cfg.resnet_layers):
                stride = (1, 1) if i == 0 else (2, 2)
                x = ResNetStage(units, width * 2**i, stride, name=f"block{i + 1}", **kw)(x)
        x = PatchEmbedding(cfg.hidden_size, cfg.patch_size, matmul_dtype=self.matmul_dtype,
                           name="embedding", **kw)(x)
        n, _, c = x.shape
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, c)), x], axis=1)
        x = Encoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim, self.dtype, self.param_dtype,
                    self.dropout_rate, self.attention_dropout_rate,
                    stochastic_depth=self.stochastic_depth, attention_impl=self.attention_impl,
                    matmul_dtype=self.matmul_dtype, name="Transformer")(
            x, train=train)
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head",
                          dot_general=_dense_dot_general(self.matmul_dtype), **kw)(x[:, 0])
        return logits.astype(jnp.float32)
