"""finetune() end to end: real offline images, the real input pipeline, fake checkpoints in
the published layout, export, result rows, sweeps, reproduce and the CLI."""

import json
import logging

import jax
import numpy as np
import pytest

from augreg_nb import checkpoint, cli
from augreg_nb.callbacks import Callback
from augreg_nb.config import apply_overrides, get_config
from augreg_nb.index import COLUMNS
from augreg_nb.sweep import reproduce, reproduce_config, sweep
from augreg_nb.testing.checkpoints import write_fake_checkpoint
from augreg_nb.train import adapt_filename, finetune, result_row
from tests.conftest import run_python

PETS = ("R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.0-sd_0.0"
        "--oxford_iiit_pet-steps_0k-lr_0.003-res_384")
TI16_I1K = ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
                "--imagenet2012-steps_20k-lr_0.03-res_384")


def smoke(tmp_path, *overrides):
    c = get_config("smoke")
    c.workdir = str(tmp_path)
    apply_overrides(c, overrides)
    return c


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_smoke_preset_learns_digits_far_above_chance(tmp_path):
    result = finetune(smoke(tmp_path))
    row = result.result_row
    print(f"digits (10 classes, 1438 train images at 32 px): val {row['adapt_final_val']:.3f}"
          f" test {row['adapt_final_test']:.3f} after 300 steps")
    assert row["adapt_final_test"] > 0.5 and row["adapt_final_val"] > 0.5  # chance: 0.1
    h = result.history
    assert h.loss.iloc[-1] < 0.75 * h.loss.iloc[0]
    evals = h.dropna(subset=["val_accuracy"])
    assert list(evals.step) == [100, 200, 300]
    assert set(evals.val_count) == {179} and set(evals.test_count) == {180}  # every image once
    # The export is a published-layout .npz that loads back to the same parameters.
    assert result.export_path.name == f"{row['adapt_filename']}.npz"
    back = checkpoint.load(result.export_path, model_name="testing")
    for a, b in zip(leaves(back), leaves(result.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(row) == list(COLUMNS) and len(row) == 21
    assert row["adapt_filename"] == "fake-testing--digits-steps_300-lr_0.1-res_32"
    saved = json.loads((result.workdir / "result.json").read_text())
    assert saved["result_row"]["adapt_final_test"] == row["adapt_final_test"]


class _Interrupt(Callback):
    def __init__(self, step):
        self.step = step

    def on_log(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_finetune_resumes_bitwise_through_the_input_pipeline(tmp_path):
    over = ["total_steps=30", "warmup_steps=3", "checkpoint_every=10", "eval_every=0",
            "log_every=5"]
    full = finetune(smoke(tmp_path / "full", *over))
    with pytest.raises(KeyboardInterrupt):
        finetune(smoke(tmp_path / "cut", *over), callbacks=[_Interrupt(25)])
    resumed = finetune(smoke(tmp_path / "cut", *over))
    for a, b in zip(leaves(full.params), leaves(resumed.params), strict=True):
        assert np.array_equal(a, b)
    assert resumed.result_row["adapt_final_test"] == full.result_row["adapt_final_test"]
    np.testing.assert_array_equal(full.history.loss, resumed.history.loss)


def test_finetune_from_a_checkpoint_file_in_the_published_layout(tmp_path):
    path = write_fake_checkpoint(tmp_path / "ckpt" / "mine.npz", "testing", num_classes=7)
    c = smoke(tmp_path / "run", "total_steps=4", "warmup_steps=1", "eval_every=0",
              "export=False")
    c.checkpoint = str(path)
    c.model = None  # inferred from the file
    result = finetune(c)
    assert result.export_path is None
    assert np.asarray(result.params["head"]["kernel"]).shape == (32, 10)
    assert result.result_row["name"] == "testing"
    assert result.result_row["adapt_filename"] == "mine--digits-steps_4-lr_0.1-res_32"


def test_result_row_uses_the_published_naming_and_upstream_columns():
    c = get_config("oxford_iiit_pet-500-0.003-384")
    up = PETS.split("--")[0]
    assert adapt_filename(up, c) == PETS
    params = {"embedding": {"kernel": np.zeros((2, 3))}, "head": {"bias": np.zeros(37)}}
    row = result_row(c, stem=up, model="R26+S/32", params=params,
                     final={"val_accuracy": 0.9, "test_accuracy": 0.8})
    assert list(row) == list(COLUMNS)
    assert (row["name"], row["ds"], row["epochs"], row["aug"], row["wd"]) == (
        "R26+S/32", "i21k", 300, "light0", 0.03)
    assert (row["adapt_ds"], row["adapt_steps"], row["adapt_lr"], row["adapt_resolution"]) == (
        "oxford_iiit_pet", 500, 0.003, 384)
    assert row["params"] == 43 and row["filename"] == up and row["adapt_final_test"] == 0.8
    assert row["final_val"] == pytest.approx(0.465049)  # from the shipped index rows


def test_a_model_name_means_its_recommended_upstream(monkeypatch):
    from augreg_nb.train import _upstream_checkpoint

    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    config = get_config("cifar100-2500-0.01-384")
    assert config.checkpoint == "B/16"
    assert _upstream_checkpoint(config) == (
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0")  # the published pick
    config.checkpoint = "S_32-i1k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0"
    assert _upstream_checkpoint(config) == config.checkpoint


def test_reproduce_config_is_the_published_recipe():
    c = reproduce_config(PETS)
    assert (c.task, c.total_steps, c.warmup_steps, c.base_lr, c.resolution) == (
        "oxford_iiit_pet", 500, 100, 0.003, 384)
    assert c.checkpoint == PETS.split("--")[0] and c.global_batch == 512
    with pytest.raises(ValueError, match="upstream checkpoint"):
        reproduce_config(PETS.split("--")[0])


@pytest.mark.slow
def test_reproduce_runs_the_named_recipe_and_compares(tmp_path, monkeypatch):
    from augreg_nb.index import load_index
    from augreg_nb.mock_tfds import mock_tfds

    index = load_index(strict=False)
    published = index[index["adapt_filename"] == TI16_I1K]
    assert len(published) == 1, "the shipped rows hold this ImageNet fine-tune of Ti/16"
    write_fake_checkpoint(tmp_path / "ckpts" / f"{TI16_I1K.split('--')[0]}.npz", "Ti/16",
                          num_classes=1000)
    monkeypatch.setenv("AUGREG_NB_CHECKPOINT_DIR", str(tmp_path / "ckpts"))
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with mock_tfds(num_examples=16):
        out = reproduce(TI16_I1K, workdir=tmp_path / "run", index=index, overrides=[
            "total_steps=2", "warmup_steps=1", "resolution=32", "global_batch=8",
            "micro_batches=2", "eval_batch=8", "shuffle_buffer=16"])
    assert out["published_final_test"] == pytest.approx(published.adapt_final_test.iloc[0])
    assert 0 <= out["own_final_test"] <= 1
    assert out["test_difference"] == pytest.approx(
        out["own_final_test"] - out["published_final_test"])
    assert out["changed_recipe_fields"] == ["resolution", "total_steps", "warmup_steps",
                                            "global_batch"]


@pytest.mark.slow
def test_sweep_chooses_by_val_and_skips_finished_runs(tmp_path, caplog):
    base = smoke(tmp_path, "eval_every=0", "checkpoint_every=0", "export=False")
    result = sweep(base, root=tmp_path / "sweep", learning_rates=(0.01, 0.1), lengths=(10, 20),
                   resolutions=(32,))
    table = result.table
    assert len(table) == 4 and set(table.adapt_lr) == {0.01, 0.1}
    assert set(table.adapt_steps) == {10, 20}
    assert result.best["adapt_final_val"] == table.adapt_final_val.max()
    assert (tmp_path / "sweep" / "sweep.csv").exists()
    with caplog.at_level(logging.INFO, logger="augreg_nb.sweep"):
        again = sweep(base, root=tmp_path / "sweep", learning_rates=(0.01, 0.1),
                      lengths=(10, 20), resolutions=(32,))
    assert sum("done before" in r.getMessage() for r in caplog.records) == 4
    assert again.table.adapt_final_val.tolist() == table.adapt_final_val.tolist()


def test_cli_finetune_runs_and_resumes(tmp_path, capsys):
    argv = ["finetune", "--preset", "smoke", "--set", "total_steps=6", "--set",
            "warmup_steps=1", "--set", "eval_every=0", "--workdir", str(tmp_path),
            "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "fake-testing--digits-steps_6-lr_0.1-res_32" in out and "exported:" in out
    assert cli.main(argv) == 0  # finished run: answers from its state
    assert cli.main(["finetune", "--set", "base_lf=1"]) == 1
    assert "Did you mean 'base_lr'" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_on_eight_devices_matches_one(tmp_path):
    over = ["total_steps=8", "warmup_steps=2", "eval_every=0", "micro_batches=2",
            "export=False"]
    out = run_python(f"""
        import jax, numpy as np
        from augreg_nb.config import get_config, apply_overrides
        from augreg_nb.train import finetune
        c = get_config("smoke"); apply_overrides(c, {over!r})
        c.workdir = {str(tmp_path / 'eight')!r}
        r = finetune(c)
        np.savez({str(tmp_path / 'eight.npz')!r},
                 *[np.asarray(x) for x in jax.tree.leaves(r.params)])
        print(jax.device_count(), r.result_row["adapt_final_test"])
        """, devices=8)
    n_devices, test_acc = out.split()[-2:]
    assert n_devices == "8"
    one = finetune(smoke(tmp_path / "one", *over))
    eight = np.load(tmp_path / "eight.npz")
    for i, a in enumerate(leaves(one.params)):
        np.testing.assert_allclose(eight[f"arr_{i}"], a, rtol=1e-4, atol=1e-5)
    assert float(test_acc) == pytest.approx(one.result_row["adapt_final_test"], abs=0.02)


def test_a_finished_run_answers_before_its_checkpoint_or_data_are_loaded(tmp_path, monkeypatch):
    import pandas as pd

    from augreg_nb import train

    config = smoke(tmp_path, "total_steps=6", "warmup_steps=1", "eval_every=0")
    first = finetune(config)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not resolve its checkpoint or build data")

    monkeypatch.setattr(train, "load_task", refuse)
    monkeypatch.setattr(train, "load_start_params", refuse)
    seen = []

    class Spy(Callback):
        def on_train_begin(self, info):
            seen.append(info["start_step"])

    again = finetune(config, callbacks=[Spy()])
    assert seen == [6]
    assert json.dumps(again.result_row) == json.dumps(first.result_row)  # NaN-aware
    assert again.export_path == first.export_path and again.export_path.is_file()
    for a, b in zip(leaves(first.params), leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(first.history, again.history, check_dtype=False)
    # Another recipe in the same folder is still refused with the usual message.
    other = smoke(tmp_path, "total_steps=7", "warmup_steps=1", "eval_every=0")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"another config \(total_steps: 6 -> 7\)"):
        finetune(other)
