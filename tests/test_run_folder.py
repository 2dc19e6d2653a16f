"""Run folders record what produced them, are used by one run at a time, have safe names, and
their files are read back with checks: no result is served for a config that did not
produce it, no folder lands outside its parent, and damaged files are named."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil

import pytest

from augreg_nb import config as config_lib
from augreg_nb import run_folder
from augreg_nb.atomic import dumps_strict, write_json_atomic
from augreg_nb.config import apply_overrides, get_config
from augreg_nb.names import MAX_FOLDER_NAME, safe_folder_name, shorten
from augreg_nb.sweep import sweep
from augreg_nb.train import finetune

FAST = ["total_steps=4", "warmup_steps=1", "eval_every=0", "checkpoint_every=0",
        "log_every=2", "export=False"]


def tiny(workdir, *overrides):
    c = get_config("smoke")
    apply_overrides(c, [*FAST, *overrides])
    c.workdir = str(workdir)
    return c


def _strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("text", ["../../../../x", "..", ".", "a/b", "/etc/passwd", "a\0b",
                                  "tfds:../../../x", "", ".hidden", "x" * 5000])
def test_folder_names_never_leave_their_parent(tmp_path, text):
    name = safe_folder_name(text)
    assert name and "/" not in name and "\\" not in name and "\0" not in name
    assert ".." not in name and not name.startswith(".")
    assert len(name) <= MAX_FOLDER_NAME
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_long_names_are_cut_with_a_hash_that_keeps_them_apart():
    a, b = safe_folder_name("a" * 300), safe_folder_name("a" * 301)
    assert len(a) == len(b) == MAX_FOLDER_NAME and a != b
    assert safe_folder_name("cifar100") == "cifar100"  # plain names stay as they are


def test_hostile_task_strings_give_run_folders_under_the_cache(tmp_path):
    c = get_config("smoke")
    runs = config_lib.cache_dir() / "runs"
    for task in ["tfds:../../../../x", "tfds:" + "a" * 800, "tfds:" + "b" * 5000]:
        c.task = task
        name = config_lib.run_name(c)
        assert len(name) <= MAX_FOLDER_NAME
        assert config_lib.default_workdir(c).resolve().parent == runs.resolve()
        assert config_lib.default_sweep_root(c).resolve().parent == runs.resolve()
        assert len(config_lib.run_name(c, in_sweep=True)) <= MAX_FOLDER_NAME


def test_a_folder_task_is_named_by_its_base_name_and_a_hash(tmp_path):
    one, two = tmp_path / "a" / "photos", tmp_path / "b" / "photos"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    a, b = config_lib.task_folder_name(str(one)), config_lib.task_folder_name(str(two))
    assert a.startswith("photos-") and b.startswith("photos-") and a != b
    assert config_lib.task_folder_name("cifar100") == "cifar100"


def test_error_lines_quote_long_text_shortened():
    text = "z" * 5000
    assert len(shorten(text)) < 120 and "5,000 characters" in shorten(text)
    assert shorten("short") == "'short'"
    with pytest.raises(ValueError) as err:
        apply_overrides(get_config("smoke"), [f"{text}=1"])
    assert len(str(err.value)) < 400


# ------------------------------------------------------------------ strict JSON


def test_json_files_are_strict_and_nan_reads_back(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"result_row": {"adapt_filename": "x", "a": math.nan,
                                            "b": float("inf"), "c": 0.5}, "final": {}})
    _strict_loads(path.read_text())
    back = run_folder.read_result(path)["result_row"]
    assert math.isnan(back["a"]) and math.isnan(back["b"]) and back["c"] == 0.5
    assert "NaN" not in dumps_strict([math.nan, {"x": (float("-inf"),)}])


# ------------------------------------------------------------------ records and conflicts


def test_a_changed_field_is_refused_with_its_name(tmp_path):
    c = tiny(tmp_path / "run")
    assert run_folder.claim(tmp_path / "run", c) == tmp_path / "run"
    assert (tmp_path / "run" / run_folder.RUN_FILE).is_file()
    _strict_loads((tmp_path / "run" / run_folder.RUN_FILE).read_text())
    for field, value in [("seed", 1), ("momentum", 0.8), ("train_preprocess", "random_crop"),
                         ("checkpoint", "fake:Ti/16"), ("model", "Ti/16")]:
        other = tiny(tmp_path / "run", f"{field}={value}")
        with pytest.raises(run_folder.RunFolderError, match=rf"{field}: .* -> ") as err:
            run_folder.claim(tmp_path / "run", other)
        assert str(tmp_path / "run") in str(err.value) and "if_different" in str(err.value)
    # Fields that only change memory use or logging may differ.
    same = tiny(tmp_path / "run", "micro_batches=2", "log_every=1", "eval_batch=64")
    assert run_folder.claim(tmp_path / "run", same) == tmp_path / "run"


def test_new_folder_runs_a_different_config_next_to_the_old_one(tmp_path):
    run_folder.claim(tmp_path / "run", tiny(tmp_path / "run"))
    other = tiny(tmp_path / "run", "seed=3", "if_different=new_folder")
    target = run_folder.claim(tmp_path / "run", other)
    assert target.parent == tmp_path and target.name.startswith("run-")
    assert run_folder.claim(tmp_path / "run", other) == target  # the same folder again


def test_a_replaced_checkpoint_file_is_another_checkpoint(tmp_path):
    ckpt = tmp_path / "model.npz"
    ckpt.write_bytes(b"one")
    c = tiny(tmp_path / "run", f"checkpoint={ckpt}")
    run_folder.claim(tmp_path / "run", c)
    ckpt.write_bytes(b"other")
    with pytest.raises(run_folder.RunFolderError, match="checkpoint file: sha256"):
        run_folder.claim(tmp_path / "run", c)


@pytest.mark.parametrize("content", ["", "{", "[]", "{}", '{"config": 3}'])
def test_a_damaged_record_is_named(tmp_path, content):
    (tmp_path / run_folder.RUN_FILE).write_text(content)
    with pytest.raises(run_folder.RunFolderError, match="run.json is damaged"):
        run_folder.claim(tmp_path, tiny(tmp_path))


@pytest.mark.parametrize("content", ["", '{"result_row": {"adapt_f', "{}", "[]",
                                     '{"result_row": []}', "\0\0\0"])
def test_a_damaged_result_file_is_named(tmp_path, content):
    (tmp_path / "result.json").write_text(content)
    with pytest.raises(run_folder.RunFolderError, match="result.json is damaged"):
        run_folder.read_result(tmp_path / "result.json")


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path):
    with run_folder.locked(tmp_path):
        with pytest.raises(run_folder.RunFolderError, match=r"another run is using .* \(pid \d+\)"):
            with run_folder.locked(tmp_path):
                pass
    with run_folder.locked(tmp_path):  # released when the first ends
        pass


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch, code):
    def refuse(path, payload):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(run_folder, "write_json_atomic", refuse)
    with pytest.raises(run_folder.RunFolderError, match="cannot write in the run folder") as e:
        run_folder.claim(tmp_path / "run", tiny(tmp_path / "run"))
    assert str(tmp_path / "run") in str(e.value)
    assert ("disk is full" in str(e.value)) == (code == errno.ENOSPC)


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_finetune_never_serves_another_configs_result(tmp_path, caplog):
    first = finetune(tiny(tmp_path / "run"))
    assert (tmp_path / "run" / run_folder.RUN_FILE).is_file()
    with pytest.raises(run_folder.RunFolderError, match="seed: 0 -> 1"):
        finetune(tiny(tmp_path / "run", "seed=1"))
    again = finetune(tiny(tmp_path / "run"))  # the same config: served, not trained
    assert again.result_row == first.result_row
    other = finetune(tiny(tmp_path / "run", "seed=1", "if_different=new_folder"))
    assert other.workdir != first.workdir and other.workdir.parent == tmp_path
    # A damaged result.json is named and written again from the saved state.
    for content in ["", "{", "{}", "[]"]:
        (tmp_path / "run" / "result.json").write_text(content)
        back = finetune(tiny(tmp_path / "run"))
        assert back.result_row["adapt_final_test"] == first.result_row["adapt_final_test"]
        _strict_loads((tmp_path / "run" / "result.json").read_text())
    # A result without its state is not trusted: the run trains again, and says so.
    shutil.rmtree(tmp_path / "run" / "state")
    with caplog.at_level("WARNING", logger="augreg_nb.train"):
        again = finetune(tiny(tmp_path / "run"))
    assert "holds a result but no saved training state" in caplog.text
    assert again.result_row["adapt_final_test"] == first.result_row["adapt_final_test"]


@pytest.mark.slow
def test_a_sweep_rerun_with_another_config_is_refused(tmp_path):
    base = tiny(tmp_path)
    first = sweep(base, root=tmp_path / "sw", learning_rates=[0.1], lengths=[4],
                  resolutions=[32])
    for change in ["seed=5", "momentum=0.5", "checkpoint=fake:Ti/16"]:
        with pytest.raises(run_folder.RunFolderError, match=change.split("=")[0]):
            sweep(tiny(tmp_path, change), root=tmp_path / "sw", learning_rates=[0.1],
                  lengths=[4], resolutions=[32])
    # A finished run of the same config is read back; a damaged result is recomputed.
    run = first.table["workdir"].iloc[0]
    (tmp_path / "sw" / run.rsplit("/", 1)[-1] / "result.json").write_text("[]")
    again = sweep(base, root=tmp_path / "sw", learning_rates=[0.1], lengths=[4],
                  resolutions=[32])
    assert again.table["adapt_final_test"].tolist() == first.table["adapt_final_test"].tolist()
    shutil.rmtree(tmp_path / "sw")
