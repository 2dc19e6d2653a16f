"""The training state under damage and failure: metadata with fields missing, a full disk or
a read-only folder while saving, two runs on one folder. Each ends in one message naming the
folder and what to do; no finished save is lost and nothing half-written is trusted."""

from __future__ import annotations

import errno
import json
import os

import orbax.checkpoint as ocp
import pytest

from augreg_nb import run_folder, train_state
from augreg_nb.train import finetune
from tests.test_run_folder import tiny
from tests.test_train_engine import run, small_config


def _metadata(workdir):
    save = max((workdir / "state").iterdir(), key=lambda p: int(p.name))
    return save / "meta" / "metadata"


def test_metadata_without_its_recipe_is_named_as_damaged(tmp_path):
    run(small_config(total_steps=20), tmp_path)
    path = _metadata(tmp_path)
    manifest = json.loads(path.read_text())
    manifest["meta"] = {"config": manifest["meta"]["config"]}  # recipe, step, history gone
    path.write_text(json.dumps(manifest))
    with pytest.raises(train_state.StateFileError) as err:
        run(small_config(total_steps=40), tmp_path)
    assert str(tmp_path / "state") in str(err.value) and "lacks the recipe" in str(err.value)
    assert "Move it away" in str(err.value)


def test_metadata_without_step_or_history_is_answered_from_the_arrays(tmp_path):
    full = run(small_config(total_steps=20), tmp_path)
    path = _metadata(tmp_path)
    manifest = json.loads(path.read_text())
    manifest["meta"].pop("step")
    manifest["meta"]["history"] = "not a list"
    path.write_text(json.dumps(manifest))
    again = run(small_config(total_steps=20), tmp_path)  # step 20 read from the arrays
    assert again.final == full.final  # evaluated again, nothing trained
    assert list(again.history.step) == [20]


def _failing_save(code, calls):
    real = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) < fail_at[0]:
            return real(self, step, *args, **kwargs)
        tmp = self.directory / f"{step}.orbax-checkpoint-tmp-1234"
        (tmp / "arrays").mkdir(parents=True)
        (tmp / "arrays" / "half").write_bytes(b"\0" * 10)
        raise OSError(code, os.strerror(code))

    fail_at = [1]
    return save, fail_at


@pytest.mark.parametrize("when", [1, 2])
@pytest.mark.parametrize("code, why", [(errno.ENOSPC, "the disk is full"),
                                       (errno.EROFS, "the folder is not writable")])
def test_a_failed_save_keeps_the_last_one_and_leaves_no_temporary_folder(
        tmp_path, monkeypatch, when, code, why):
    calls = []
    save, fail_at = _failing_save(code, calls)
    fail_at[0] = when
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    with pytest.raises(train_state.StateSaveError) as err:
        run(small_config(total_steps=40), tmp_path)
    text = str(err.value)
    assert str(tmp_path / "state") in text and why in text and "run the same command" in text
    assert ("no earlier save exists" in text) == (when == 1)
    assert not any("tmp" in p.name for p in (tmp_path / "state").iterdir())
    monkeypatch.undo()
    if when == 2:  # the save of step 20 is kept and resumed from
        assert train_state.read_meta(tmp_path / "state")["step"] == 20
        resumed = run(small_config(total_steps=40), tmp_path)
        assert int(resumed.history.step.min()) == 5  # the history of steps 1-20 came back
        assert train_state.read_meta(tmp_path / "state")["step"] == 40
    else:
        assert not train_state.saved(tmp_path / "state")


def test_a_second_run_on_a_folder_in_use_is_refused_before_anything_loads(tmp_path):
    config = tiny(tmp_path / "run")
    with run_folder.locked(tmp_path / "run"):
        with pytest.raises(run_folder.RunFolderError, match=r"another run is using .*run"):
            finetune(config)
    assert not (tmp_path / "run" / "state").exists()
