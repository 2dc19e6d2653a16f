"""The few-shot linear probe against independent solvers, and its sampling and pre-processing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from augreg_nb import fewshot


def _reference(train_x, train_y, test_x, num_classes, l2):
    """An independent ridge probe in float64: scikit-learn's solver on the same design."""
    train_x = np.asarray(train_x, np.float64)
    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-5
    design = np.hstack([(train_x - mean) / std, np.full((len(train_x), 1), 100.0)])
    targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver="svd").fit(design, targets)
    test = np.hstack([(np.asarray(test_x, np.float64) - mean) / std,
                      np.full((len(test_x), 1), 100.0)])
    return ridge.coef_.T, np.argmax(test @ ridge.coef_.T, axis=1)


def _data(n, d, classes, seed=0, n_test=300):
    """Random features with a class signal, so the probe's accuracy is informative."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 0.6
    y = np.arange(n) % classes
    x = centres[y] + rng.normal(size=(n, d)) + 3.0  # offset: standardisation matters
    yt = rng.integers(0, classes, n_test)
    xt = centres[yt] + rng.normal(size=(n_test, d)) + 3.0
    return x.astype(np.float32), y, xt.astype(np.float32), yt


@pytest.mark.parametrize("n,d", [(40, 96), (400, 24)], ids=["N<D", "N>D"])
def test_weights_and_predictions_match_sklearn_ridge(n, d):
    x, y, xt, yt = _data(n, d, 5)
    ref_w, ref_pred = _reference(x, y, xt, 5, fewshot.L2_REG)
    w = fewshot.ridge_weights(x, y, 5)
    assert w.shape == (d + 1, 5)
    np.testing.assert_allclose(w, ref_w, rtol=2e-3, atol=2e-5 * np.abs(ref_w).max())
    acc = fewshot.fewshot_accuracy(x, y, xt, yt, 5)
    assert acc == pytest.approx(np.mean(ref_pred == yt), abs=1 / len(yt))
    assert acc > 0.5  # the signal is found (chance: 0.2)


@pytest.mark.parametrize("n,d", [(12, 50), (200, 10)], ids=["N<D", "N>D"])
def test_other_l2_matches_normal_equations(n, d):
    """The eigendecomposition path equals solving (X^T X + l2 I) W = X^T Y directly."""
    x, y, _, _ = _data(n, d, 3, seed=1)
    xs = (x.astype(np.float64) - x.mean(0)) / (x.astype(np.float64).std(0) + 1e-5)
    design = np.hstack([xs, np.full((n, 1), 100.0)])
    targets = 2.0 * np.eye(3)[y] - 1.0
    for l2 in (1.0, 2.0**10):
        direct = np.linalg.solve(design.T @ design + l2 * np.eye(d + 1), design.T @ targets)
        np.testing.assert_allclose(fewshot.ridge_weights(x, y, 3, l2), direct, rtol=5e-3,
                                   atol=1e-4 * np.abs(direct).max())


def test_tiny_l2_interpolates_when_points_are_few():
    """With N < D and almost no penalty the probe fits its train points exactly, so it
    classifies them all correctly: a property of the X X^T branch."""
    x, y, _, _ = _data(10, 64, 5, seed=2)
    assert fewshot.fewshot_accuracy(x, y, x, y, 5, l2=1e-3) == 1.0


def test_sample_shots_nested_per_class_and_seeded():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 3)
    first = fewshot.sample_shots(labels, 3, (1, 5, 10), seed=0)
    again = fewshot.sample_shots(labels, 3, (1, 5, 10), seed=0)
    other = fewshot.sample_shots(labels, 3, (1, 5, 10), seed=1)
    for k in (1, 5, 10):
        np.testing.assert_array_equal(first[k], again[k])
        counts = np.bincount(labels[first[k]], minlength=3)
        assert counts.tolist() == [k, k, min(k, 3)]  # class 2 gives all it has
        assert len(set(first[k].tolist())) == len(first[k])
    assert set(first[1]) <= set(first[5]) <= set(first[10])
    assert not np.array_equal(first[10], other[10])
    # the draw is numpy's default_rng(seed) permutation of each class's indices, in order
    rng = np.random.default_rng(0)
    perm0 = rng.permutation(np.arange(30))
    np.testing.assert_array_equal(first[5][:5], perm0[:5])


def test_evaluate_table_and_summary():
    x, y, xt, yt = _data(300, 16, 4, seed=3)
    table = fewshot.evaluate(x, y, xt, yt, 4, shots=(1, 5), seeds=3)
    assert list(table.columns) == ["shots", "seed", "accuracy", "train_examples"]
    assert sorted(zip(table["shots"], table["seed"], strict=True)) == [(k, s) for k in (1, 5)
                                                          for s in range(3)]
    assert table.loc[table["shots"] == 5, "train_examples"].eq(20).all()
    summary = fewshot.summarize(table)
    five = table[table["shots"] == 5]["accuracy"]
    row = summary.set_index("shots").loc[5]
    assert row["mean"] == pytest.approx(five.mean())
    assert row["spread"] == pytest.approx(five.max() - five.min())
    assert row["seeds"] == 3


def test_bad_input_is_named():
    x, y, xt, yt = _data(20, 8, 2)
    with pytest.raises(ValueError, match="different models"):
        fewshot.fewshot_accuracy(x, y, xt[:, :4], yt, 2)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fewshot.evaluate(bad, y, xt, yt, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        fewshot.evaluate(x, y + 5, xt, yt, 2)


def test_preprocess_squashes_the_whole_image_then_crops_the_centre():
    """resize(256) ignores the aspect ratio (unlike the fine-tuning eval's resize_small):
    a 3:1 image keeps almost all of its width after the central crop."""
    width = 300
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (100, 1))
    image = np.repeat(ramp[..., None], 3, axis=-1)
    out = np.asarray(fewshot.fewshot_preprocess(image, 224))
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    # the crop drops 16 of 256 columns on each side: the ramp from 6.25% to 93.75% remains
    left, right = (out[112, 0, 0] + 1) * 127.5, (out[112, -1, 0] + 1) * 127.5
    assert left == pytest.approx(0.0625 * 255, abs=3)
    assert right == pytest.approx(0.9375 * 255, abs=3)
    assert fewshot.pipeline_text(224) == "resize(256)|central_crop(224)|value_range(-1,1)"
    assert fewshot.pipeline_text(384) == "resize(448)|central_crop(384)|value_range(-1,1)"
