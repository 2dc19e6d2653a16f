"""Classify images with an AugReg checkpoint: top-k classes with names and probabilities.

    >>> from augreg_nb import checkpoint, inference
    >>> name, params = checkpoint.load_pretrained(
    ...     "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--"
    ...     "imagenet2012-steps_20k-lr_0.03-res_224")  # doctest: +SKIP
    >>> inference.predict(name, params, ["cat.jpg"], resolution=224)  # doctest: +SKIP
    [[Prediction(index=285, name='Egyptian cat', prob=0.61), ...]]

From a shell: ``augreg-nb predict CHECKPOINT IMAGE... [--top-k 5] [--labels NAME]``.

Images go through ``augreg_nb.preprocess.prepare_images`` (the evaluation pre-processing of
the protocol, values in [-1, 1]). Class names: ImageNet-1k heads (1000 classes) get the
human-readable ImageNet names shipped with tensorflow-datasets; other heads get names from
``label_names``: a list of strings, a task name (``augreg_nb.tasks.get_task``), a TFDS
``ClassLabel`` or ``DatasetInfo``, or a ``Task``. The ImageNet-21k heads of upstream
checkpoints have no shipped names; their predictions carry ``name=None``.

JAX, the models and the checkpoint reader are imported when a prediction runs, not with this
module: the class names (``imagenet_label_names``) load without JAX or TensorFlow.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from augreg_nb.preprocess import prepare_images
from augreg_nb.tasks import get_task

logger = logging.getLogger(__name__)

IMAGENET_ALIASES = ("imagenet2012", "imagenet", "imagenet1k", "imagenet-1k", "in1k")


class Prediction(NamedTuple):
    """One of the top-k classes of an image."""

    index: int
    name: str | None
    prob: float


def _tfds_file(*parts: str) -> Path:
    spec = importlib.util.find_spec("tensorflow_datasets")  # locates it without importing
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "tensorflow-datasets is not installed; it ships the ImageNet class names: "
            "pip install tensorflow-datasets"
        )
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@functools.cache
def imagenet_label_names() -> tuple[str, ...]:
    """The 1000 human-readable ImageNet-1k class names, in label order.

    Read from the copy tensorflow-datasets ships (``datasets/siscore/labels.py``, checked
    against the 1000 synset ids of ``datasets/imagenet2012/labels.txt``); the module is
    parsed, not imported, so TensorFlow is not loaded.
    """
    wnids = _tfds_file("datasets", "imagenet2012", "labels.txt").read_text().split()
    source = _tfds_file("datasets", "siscore", "labels.py")
    names = None
    if source.is_file():
        for node in ast.parse(source.read_text()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "IMAGENET_LABELS_LIST"):
                names = tuple(ast.literal_eval(node.value))
    if names is None or len(names) != len(wnids) or len(names) != 1000:
        logger.warning("human-readable ImageNet names not found in tensorflow-datasets; "
                       "using the synset ids")
        return tuple(wnids)
    return names


def resolve_label_names(label_names: Any, num_classes: int) -> tuple[str, ...] | None:
    """Class names for a ``num_classes``-way head (see the module docstring for the forms)."""
    if label_names is None:
        return imagenet_label_names() if num_classes == 1000 else None
    if isinstance(label_names, str):
        if label_names.lower() in IMAGENET_ALIASES:
            names = imagenet_label_names()
        else:
            names = tuple(get_task(label_names).label_names)
    elif hasattr(label_names, "label_names"):  # augreg_nb.tasks.Task
        names = tuple(label_names.label_names)
    elif hasattr(label_names, "features"):  # tfds DatasetInfo
        names = tuple(label_names.features["label"].names)
    elif hasattr(label_names, "names"):  # tfds ClassLabel
        names = tuple(label_names.names)
    else:
        names = tuple(str(n) for n in label_names)
    if len(names) != num_classes:
        raise ValueError(
            f"{len(names)} label names were given for a {num_classes}-class head; pass the "
            "names of the task the checkpoint was fine-tuned on"
        )
    return names


def matmul_dtype_name(matmul_dtype: Any) -> str | None:
    """"bfloat16" or None (float32) for a ``matmul_dtype`` argument; refuses anything else
    (JAX is imported only for a non-default value)."""
    if matmul_dtype is None or (isinstance(matmul_dtype, str)
                                and matmul_dtype.lower() in ("float32", "none", "")):
        return None
    from augreg_nb.models import _check_matmul_dtype

    _check_matmul_dtype(matmul_dtype)
    return "bfloat16"


@functools.lru_cache(maxsize=8)
def _compiled_logits(model_name: str, num_classes: int, matmul_dtype: str | None = None):
    import jax

    from augreg_nb import compile_cache
    from augreg_nb.models import create_model, forward_chunk, in_chunks

    compile_cache.enable()  # a kernel restart loads the compiled forward pass from disk
    model = create_model(model_name, num_classes, matmul_dtype=matmul_dtype)
    # On CPUs, batches run in chunks of 16 images (models.in_chunks: faster there).
    return jax.jit(in_chunks(lambda params, x: model.apply({"params": params}, x),
                             forward_chunk()))


@functools.lru_cache(maxsize=8)
def _compiled_apply(model_name: str, num_classes: int, matmul_dtype: str | None = None):
    import jax

    logits = _compiled_logits(model_name, num_classes, matmul_dtype)
    return jax.jit(lambda params, x: jax.nn.softmax(logits(params, x)))


def _check_arrays(arrays) -> np.ndarray:
    arrays = np.asarray(arrays, dtype=np.float32)
    if arrays.ndim != 4 or arrays.shape[-1] != 3:
        raise ValueError(f"expected pre-processed images (N, H, W, 3), got {arrays.shape}")
    return arrays


def predict_arrays(model_name: str, params: dict, arrays: np.ndarray, *, top_k: int = 5,
                   label_names: Any = None, batch_size: int = 32,
                   matmul_dtype: Any = None) -> list[list[Prediction]]:
    """Top-k predictions for pre-processed images (N, H, W, 3) float32 in [-1, 1].

    ``matmul_dtype="bfloat16"``: the opt-in faster forward pass on CPUs with bfloat16
    matrix units (see ``models.create_model``); :func:`agreement` measures what it changes.
    """
    arrays = _check_arrays(arrays)
    num_classes = int(np.shape(params["head"]["bias"])[0])
    names = resolve_label_names(label_names, num_classes)
    k = max(1, min(int(top_k), num_classes))
    apply = _compiled_apply(model_name, num_classes, matmul_dtype_name(matmul_dtype))
    results: list[list[Prediction]] = []
    for start in range(0, len(arrays), batch_size):
        probs = np.asarray(apply(params, arrays[start:start + batch_size]))
        if not np.isfinite(probs).all():
            bad = sorted({start + int(i) for i in np.nonzero(~np.isfinite(probs))[0]})
            raise ValueError(
                f"the model's outputs for image(s) {bad[:10]} are NaN or infinite, so there is "
                "no ranking to show: the parameters hold non-finite values or overflow in "
                "float32 (check them with np.isfinite; load checkpoints with "
                "augreg_nb.checkpoint.load, which refuses non-finite weights)")
        for row in probs:
            # Stable sort on -prob: ties keep the lower class index first.
            order = np.argsort(-row, kind="stable")[:k]
            results.append([
                Prediction(int(i), names[i] if names else None, float(row[i])) for i in order
            ])
    return results


def predict(model_name: str, params: dict, images: Any, *, resolution: int | None = None,
            top_k: int = 5, label_names: Any = None, batch_size: int = 32,
            matmul_dtype: Any = None) -> list[list[Prediction]]:
    """Top-k ``(index, name, prob)`` for each image (paths, PIL images or uint8 arrays).

    ``resolution`` defaults to the one the parameters' position table was made for.
    ``matmul_dtype``: None (float32) or "bfloat16" (see :func:`predict_arrays`).
    """
    from augreg_nb.checkpoint import checkpoint_resolution

    if resolution is None:
        resolution = checkpoint_resolution(model_name, params)
    arrays = prepare_images(images, int(resolution))
    return predict_arrays(model_name, params, arrays, top_k=top_k, label_names=label_names,
                          batch_size=batch_size, matmul_dtype=matmul_dtype)


class Agreement(NamedTuple):
    """How far a low-precision forward pass is from float32 on the same images."""

    images: int
    #: Share of images whose top-1 class is the same.
    top1_agreement: float
    #: Largest absolute difference of any logit.
    max_abs_logit_diff: float
    #: Largest absolute logit of the float32 pass (the scale of the difference).
    max_abs_logit: float

    def text(self) -> str:
        return (f"bfloat16 matrix multiplies against float32 on {self.images} image(s): "
                f"top-1 agreement {self.top1_agreement:.1%}, largest logit difference "
                f"{self.max_abs_logit_diff:.3g} (largest logit {self.max_abs_logit:.3g})")


def agreement(model_name: str, params: dict, arrays: np.ndarray, *,
              matmul_dtype: Any = "bfloat16", batch_size: int = 32) -> Agreement:
    """Run pre-processed images (N, H, W, 3) through the float32 and the ``matmul_dtype``
    forward pass and compare the logits: top-1 agreement and the largest difference."""
    arrays = _check_arrays(arrays)
    num_classes = int(np.shape(params["head"]["bias"])[0])
    low_name = matmul_dtype_name(matmul_dtype)
    if low_name is None:
        raise ValueError("agreement compares a bfloat16 forward pass with float32; pass "
                         "matmul_dtype='bfloat16'")

    def logits(dtype_name):
        fn = _compiled_logits(model_name, num_classes, dtype_name)
        return np.concatenate([np.asarray(fn(params, arrays[i:i + batch_size]))
                               for i in range(0, len(arrays), batch_size)])

    a, b = logits(None), logits(low_name)
    return Agreement(images=len(arrays),
                     top1_agreement=float(np.mean(a.argmax(-1) == b.argmax(-1))),
                     max_abs_logit_diff=float(np.max(np.abs(a - b))),
                     max_abs_logit=float(np.max(np.abs(a))))


def format_predictions(images: Sequence[Any], predictions: list[list[Prediction]]) -> str:
    """Plain-text table: one block per image, one line per class."""
    lines = []
    for image, preds in zip(images, predictions, strict=True):
        lines.append(str(image))
        for p in preds:
            label = p.name if p.name is not None else f"class {p.index}"
            lines.append(f"  {p.prob:7.2%}  {p.index:>5}  {label}")
    return "\n".join(lines)
