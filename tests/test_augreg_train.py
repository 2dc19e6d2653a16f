"""Training with the AugReg recipe: the train step's Mixup and sigmoid loss against a
hand-written computation, the input pipeline's RandAugment, the config names, resumption
bit for bit with augmentation, Mixup and dropout on, result rows and the command line."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augreg_nb import cli, preprocess
from augreg_nb.augment import randaugment_setting
from augreg_nb.config import apply_overrides, get_config, index_aug, validate
from augreg_nb.index import COLUMNS
from augreg_nb.input_pipeline import data_mesh as make_mesh
from augreg_nb.train import finetune, mixup_alpha
from augreg_nb.train_state import TrainState
from augreg_nb.train_step import make_train_step
from tests.test_train import _Interrupt


def augreg_smoke(tmp_path, *overrides):
    c = get_config("augreg-smoke")
    c.workdir = str(tmp_path)
    apply_overrides(c, overrides)
    return c


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _linear(variables, x, train=False, rngs=None):
    p = variables["params"]
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def _numpy_step(w, b, x, y, a, loss, lr):
    """One SGD step of the linear model on the batch mixed by hand with weight ``a``."""
    xm = a * x + (1 - a) * np.roll(x, 1, axis=0)
    ym = a * y + (1 - a) * np.roll(y, 1, axis=0)
    flat = xm.reshape(len(xm), -1).astype(np.float64)
    z = flat @ w + b
    if loss == "sigmoid":
        p = 1 / (1 + np.exp(-z))
        value = -np.mean(np.sum(ym * np.log(p) + (1 - ym) * np.log(1 - p), axis=1))
        dz = (p - ym) / len(z)
    else:
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        value = -np.mean(np.sum(ym * np.log(p), axis=1))
        dz = (p - ym) / len(z)
    return w - lr * flat.T @ dz, b - lr * dz.sum(0), value


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_train_step_with_mixup_matches_a_hand_written_step(loss, micro_batches):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 5, size=8)
    y = np.eye(5, dtype=np.float32)[labels]
    params = {"w": (rng.normal(size=(12, 5)) * 0.1).astype(np.float32),
              "b": (rng.normal(size=5) * 0.1).astype(np.float32)}
    tx = optax.sgd(0.5)
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(_linear, tx, mesh=mesh, num_classes=5, seed=3, loss=loss,
                           mixup_alpha=0.5, micro_batches=micro_batches, donate=False)
    state = TrainState.create(jax.tree.map(jnp.asarray, params), tx)
    new, metrics = step(state, {"image": x, "label": labels.astype(np.int32)})
    # The documented key of update 1's mixing weight, then the formula by hand in float64.
    b = float(jax.random.beta(jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), 1),
                              0.5, 0.5))
    a = max(b, 1 - b)
    assert 0.5 <= a < 1.0
    w, bias, value = _numpy_step(params["w"].astype(np.float64), params["b"].astype(np.float64),
                                 x.astype(np.float64), y.astype(np.float64), a, loss, 0.5)
    np.testing.assert_allclose(float(metrics["loss"]), value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.params["w"]), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new.params["b"]), bias, rtol=1e-4, atol=1e-6)


def test_without_mixup_and_with_softmax_the_step_is_the_transfer_step_bitwise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 5, size=8).astype(np.int32)
    params = {"w": rng.normal(size=(12, 5)).astype(np.float32), "b": np.zeros(5, np.float32)}
    tx = optax.sgd(0.1, momentum=0.9)
    mesh = make_mesh(jax.devices()[:1])
    outs = []
    for kwargs in ({}, {"mixup_alpha": 0.0, "loss": "softmax"}):
        step = make_train_step(_linear, tx, mesh=mesh, num_classes=5, donate=False, **kwargs)
        state = TrainState.create(jax.tree.map(jnp.asarray, params), tx)
        for _ in range(3):
            state, _ = step(state, {"image": x, "label": labels})
        outs.append(leaves(state.params))
    for p, q in zip(*outs, strict=True):
        assert np.array_equal(p, q)


def test_pipeline_randaugment_sits_between_crop_flip_and_value_range():
    tf = preprocess.import_tf()
    image = tf.constant(np.random.default_rng(2).integers(0, 256, (40, 30, 3)), tf.uint8)
    seed = tf.constant([5, 9], tf.int32)
    plain = preprocess.train_preprocess(image, 32, seed=seed, mode="resize_random_crop")
    crop = preprocess.train_crop_flip(image, 32, seed=seed, mode="resize_random_crop")
    np.testing.assert_array_equal(plain.numpy(), preprocess.value_range(crop).numpy())
    # What the pipeline does for aug="medium2", written out: RandAugment on the uint8 crop
    # with a seed folded from the example's seed, then (x / 255) * 2 - 1.
    aug_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    expected = randaugment_setting(crop, "medium2", seed=aug_seed).numpy() / 127.5 - 1.0
    got = preprocess.value_range(randaugment_setting(crop, "medium2", seed=aug_seed)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.array_equal(got, plain.numpy())


def test_aug_names_index_and_paper():
    assert index_aug("medium2") == "medium2"
    assert index_aug("light1") == "light1"  # a bare light1 is the index name
    assert index_aug("light2") == "light1"  # the paper's light2
    assert index_aug("paper:light1") == "light0"
    assert index_aug("heavy2") == "strong2"
    with pytest.raises(ValueError, match="did you mean 'medium2'"):
        index_aug("medum2")
    c = get_config("augreg-smoke")
    assert mixup_alpha(c) == 0.5
    apply_overrides(c, ["aug=light2"])
    assert mixup_alpha(c) == 0.2


def test_config_checks_the_augreg_fields():
    c = get_config("smoke")
    assert (c.recipe, c.aug, c.wd, c.do, c.sd) == ("transfer", "none", 0.0, 0.0, 0.0)
    apply_overrides(c, ["wd=0.1"])
    with pytest.raises(ValueError, match="wd=0.1 needs recipe=augreg"):
        validate(c)
    apply_overrides(c, ["recipe=augreg", "checkpoint=scratch", "model=None"])
    with pytest.raises(ValueError, match="needs a model"):
        validate(c)
    with pytest.raises(ValueError, match=r"override 'do=1.5': do must be a rate in \[0, 1\)"):
        apply_overrides(c, ["model=testing", "do=1.5"])  # refused as it is set
    c.do = 1.5  # set directly, validate names it
    with pytest.raises(ValueError, match="do=1.5 is invalid"):
        validate(c)


@pytest.mark.slow
def test_augreg_resumes_bitwise_with_augmentation_mixup_and_dropout(tmp_path):
    over = ["total_steps=12", "warmup_steps=2", "checkpoint_every=4", "eval_every=0",
            "log_every=2", "export=False"]
    full = finetune(augreg_smoke(tmp_path / "full", *over))
    with pytest.raises(KeyboardInterrupt):
        finetune(augreg_smoke(tmp_path / "cut", *over), callbacks=[_Interrupt(10)])
    resumed = finetune(augreg_smoke(tmp_path / "cut", *over))
    for a, b in zip(leaves(full.params), leaves(resumed.params), strict=True):
        assert np.array_equal(a, b)
    np.testing.assert_array_equal(full.history.loss, resumed.history.loss)
    # The settings change the run: without them the same seed gives other parameters.
    plain = finetune(augreg_smoke(tmp_path / "plain", *over, "aug=none", "do=0.0", "sd=0.0"))
    assert not all(np.array_equal(a, b) for a, b in
                   zip(leaves(full.params), leaves(plain.params), strict=True))
    row = full.result_row
    assert list(row) == list(COLUMNS)
    assert (row["aug"], row["wd"], row["do"], row["sd"]) == ("medium2", 0.1, 0.1, 0.1)
    assert row["filename"] == "scratch" and row["adapt_ds"] == "digits"
    assert row["adapt_filename"] == ("scratch_testing--digits-steps_12-lr_0.003-res_32"
                                     "-augreg-aug_medium2-wd_0.1-do_0.1-sd_0.1")


@pytest.mark.slow
def test_augreg_smoke_learns_above_chance(tmp_path):
    result = finetune(augreg_smoke(tmp_path))
    row = result.result_row
    print(f"augreg-smoke: val {row['adapt_final_val']:.3f} test {row['adapt_final_test']:.3f}")
    # Chance is 0.1; 180 test images give a standard error of about 0.022 at chance. With
    # the translate and cutout of RandAugment relative to the 32 px picture and 1200 steps,
    # medium2 with dropout and stochastic depth is well above it (41% measured).
    assert row["adapt_final_test"] > 0.3 and row["adapt_final_val"] > 0.25
    assert result.history.loss.iloc[-1] < result.history.loss.iloc[0]


def test_sigmoid_runs_start_with_the_head_bias_at_minus_log_classes(tmp_path):
    result = finetune(augreg_smoke(tmp_path, "loss=sigmoid", "total_steps=1", "warmup_steps=0",
                                   "eval_every=0", "export=False", "base_lr=1e-9"))
    np.testing.assert_allclose(np.asarray(result.params["head"]["bias"]),
                               -math.log(10), atol=1e-6)


def test_cli_sets_the_settings_by_name(tmp_path, capsys):
    argv = ["finetune", "--preset", "augreg-smoke", "--set", "aug=light2", "--set", "wd=0.03",
            "--set", "do=0.0", "--set", "sd=0.1", "--set", "total_steps=4", "--set",
            "warmup_steps=1", "--set", "eval_every=0", "--set", "export=False",
            "--workdir", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "-augreg-aug_light1-wd_0.03-do_0.0-sd_0.1" in out
    assert cli.main(["finetune", "--preset", "augreg-smoke", "--set", "aug=medum2"]) == 1
    assert "did you mean 'medium2'" in capsys.readouterr().err
