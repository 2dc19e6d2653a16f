"""Few-shot linear probes on frozen features, exactly as big_vision's ``fewshot_lsr``.

    from augreg_nb import fewshot
    table = fewshot.evaluate(train_x, train_y, test_x, test_y, num_classes=37)
    table          # one row per (shots, seed): accuracy on the whole test split
    fewshot.summarize(table)   # per shots: mean and spread (max - min) over the seeds

This is the evaluator the authors ran during pre-training
(``big_vision/evaluators/fewshot_lsr.py``, configured by ``get_fewshot_lsr`` in
``big_vision/configs/common_fewshot.py``, google-research/big_vision), and its numbers are
reproduced here, not only its idea:

- Representation: the pre-logits (the class token after the encoder's final LayerNorm,
  the head's input), computed once per split (:mod:`augreg_nb.features`).
- Pre-processing (:func:`fewshot_preprocess`): ``decode | resize(256) | central_crop(224) |
  value_range(-1, 1)``, train and test alike. ``resize`` squashes the whole image to
  256 x 256 (bilinear, no antialias, back to uint8 by truncation); at another resolution r
  the resize is ``augreg_nb.preprocess.eval_resize_size(r)`` (448 for 384).
- Per seed (``seeds`` = 3: 0, 1, 2): ``numpy.random.default_rng(seed)`` permutes the
  train indices of each class (class 0 first); the k-shot train set is the first k of
  every class's permutation, so the 1-shot set is part of the 5-shot set of the same seed.
  A class with fewer than k examples gives all it has (as big_vision does).
- Shots (1, 5, 10, 25) per class. Features are standardised with the mean and standard
  deviation (``ddof=0``, plus 1e-5) of the k-shot train features; test features with the
  same numbers. A constant column of 100 is appended (the bias, large so that the ridge
  penalty barely touches it).
- Targets: one-hot rescaled to {-1, 1}. Ridge regression with l2 = 2^10 in closed form
  through an eigendecomposition of the smaller Gram matrix: with N points of dimension D
  (bias included), ``q diag(e) q^T = X^T X`` and ``W = q (e + l2)^-1 q^T X^T Y`` when
  N >= D, else ``q diag(e) q^T = X X^T`` and ``W = X^T q (e + l2)^-1 q^T Y``.
- Accuracy: the share of test examples whose argmax of ``X_test W`` is their label.

The linear algebra runs in float32 on the CPU (numpy's LAPACK ``eigh``), as big_vision's
does (``jit_cpu``): an accelerator's memory is not touched, and nothing is compiled, so a
re-ranking from cached features takes seconds. ``tests/test_fewshot.py`` checks it against an
independent ridge solver (scikit-learn) in both Gram-matrix cases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

#: The evaluator's settings (big_vision ``configs/common_fewshot.py``).
SHOTS = (1, 5, 10, 25)
L2_REG = 2.0**10
NUM_SEEDS = 3
#: The constant feature appended for the bias (big_vision ``BIAS_CONSTANT``).
BIAS_CONSTANT = 100.0
#: Added to the standard deviation before dividing.
STD_EPS = 1e-5
#: Resolution of the evaluator's pre-processing; the resize before the crop is
#: ``augreg_nb.preprocess.eval_resize_size`` of the resolution (256 for 224).
RESOLUTION = 224


def pipeline_text(resolution: int = RESOLUTION) -> str:
    """The pre-processing as big_vision writes it, for ``resolution``."""
    from augreg_nb.preprocess import eval_resize_size

    return (f"resize({eval_resize_size(resolution)})|central_crop({resolution})|"
            "value_range(-1,1)")


def fewshot_preprocess(image_uint8, resolution: int = RESOLUTION):
    """uint8 (H, W, 3) -> float32 (r, r, 3) in [-1, 1]: ``resize(R)|central_crop(r)|
    value_range(-1,1)``, R = ``eval_resize_size(r)``. Unlike the fine-tuning evaluation
    (``resize_small``), the resize ignores the aspect ratio, as big_vision's ``resize``."""
    from augreg_nb import preprocess

    tf = preprocess.import_tf()
    image = tf.convert_to_tensor(image_uint8)
    if image.dtype != tf.uint8 or image.shape.rank != 3:
        raise ValueError(f"expected a uint8 image (height, width, 3), got {image.dtype.name} "
                         f"{image.shape}")
    big = preprocess.eval_resize_size(resolution)
    image = preprocess._resize_uint8(image, (big, big), "bilinear")
    offset = (big - resolution) // 2
    image = tf.image.crop_to_bounding_box(image, offset, offset, resolution, resolution)
    return preprocess.value_range(image)


def sample_shots(labels: np.ndarray, num_classes: int, shots: Sequence[int], seed: int
                 ) -> dict[int, np.ndarray]:
    """Indices of the k-shot train set for each k of ``shots``, for one seed (see the
    module docstring: one permutation per class, the first k of each, classes in order)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return {int(k): np.concatenate([idx[:k] for idx in per_class]).astype(np.int64)
            for k in shots}


def _fit(x: np.ndarray, y_onehot: np.ndarray) -> dict[str, np.ndarray]:
    """Standardise, append the bias feature, decompose the smaller Gram matrix (float32)."""
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + np.float32(STD_EPS)
    x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    y = np.float32(2.0) * y_onehot - np.float32(1.0)
    n, d = x.shape
    if n >= d:  # eigendecomposition of X^T X (D x D)
        eigs, q = np.linalg.eigh(x.T @ x)
        return {"eigs": eigs, "lhs": q, "rhs": q.T @ (x.T @ y), "mean": mean, "std": std}
    eigs, q = np.linalg.eigh(x @ x.T)  # of X X^T (N x N)
    return {"eigs": eigs, "lhs": x.T @ q, "rhs": q.T @ y, "mean": mean, "std": std}


def _weights(cache: dict[str, np.ndarray], l2: float) -> np.ndarray:
    scale = (np.float32(1.0) / (cache["eigs"] + np.float32(l2))).reshape(1, -1)
    return (cache["lhs"] * scale) @ cache["rhs"]


def _predict(cache: dict[str, np.ndarray], x_test: np.ndarray, l2: float) -> np.ndarray:
    x = (x_test - cache["mean"]) / cache["std"]
    x = np.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
    return np.argmax(x @ _weights(cache, l2), axis=1)


def _one_blas_thread():
    """Run the probes' linear algebra on one BLAS thread where threadpoolctl is installed
    (it comes with scikit-learn, on Colab too). The matrices are at most ~1000 x 1000:
    one thread solves them in well under a second, while OpenBLAS's threads, spinning on a
    machine whose cores are busy (a notebook's TensorFlow and XLA pools, other users),
    made a re-ranking from cached features 5 to 20 times slower in the bench."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _onehot(y: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(y), num_classes), np.float32)
    out[np.arange(len(y)), np.asarray(y, np.int64)] = 1.0
    return out


def _check(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"{what}: expected features (N, D) and labels (N,), got {x.shape} "
                         f"and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} features hold NaN or infinite values; the checkpoint or "
                         "the cached features are damaged (remove the cache entry)")
    return x, y


def ridge_weights(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = L2_REG
                  ) -> np.ndarray:
    """The (D + 1, C) ridge weights (last row: the bias feature) fitted to standardised
    ``x`` and {-1, 1} targets, as the evaluator computes them."""
    x, y = _check(x, y, "train")
    return _weights(_fit(x, _onehot(y, num_classes)), l2)


def fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, num_classes: int, l2: float = L2_REG) -> float:
    """Accuracy on (test_x, test_y) of the ridge probe fitted to (train_x, train_y)."""
    train_x, train_y = _check(train_x, train_y, "train")
    test_x, test_y = _check(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train features have {train_x.shape[1]} dimensions, test features "
                         f"{test_x.shape[1]}; they come from different models")
    if len(test_y) == 0:
        raise ValueError("the test split is empty")
    preds = _predict(_fit(train_x, _onehot(train_y, num_classes)), test_x, l2)
    return float(np.mean(preds == test_y))


def evaluate(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
             test_y: np.ndarray, num_classes: int, *, shots: Sequence[int] = SHOTS,
             seeds: int = NUM_SEEDS, l2: float = L2_REG):
    """Few-shot accuracies: a DataFrame with one row per (shots, seed) and the columns
    ``shots``, ``seed``, ``accuracy`` (0..1) and ``train_examples`` (fewer than
    shots x classes when a class lacks examples)."""
    import pandas as pd

    train_x, train_y = _check(train_x, train_y, "train")
    if any(int(k) < 1 for k in shots):
        raise ValueError(f"shots must be positive counts per class, got {list(shots)}")
    if int(seeds) < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    if len(train_y) and (train_y.min() < 0 or train_y.max() >= num_classes):
        raise ValueError(f"train labels must lie in 0..{num_classes - 1}")
    rows = []
    with _one_blas_thread():
        for seed in range(int(seeds)):
            for k, idx in sample_shots(train_y, num_classes, shots, seed).items():
                if len(idx) == 0:
                    raise ValueError("the train split has no examples to draw shots from")
                acc = fewshot_accuracy(train_x[idx], train_y[idx], test_x, test_y,
                                       num_classes, l2)
                rows.append({"shots": k, "seed": seed, "accuracy": acc,
                             "train_examples": len(idx)})
    return pd.DataFrame(rows)


def summarize(table):
    """Per shots: mean accuracy and spread (max - min) over the seeds, and the seed count."""
    g = table.groupby("shots")["accuracy"]
    out = g.agg(mean="mean", spread=lambda a: float(a.max() - a.min()), seeds="count")
    return out.reset_index()
