"""Notebook 2's panel at its edges: what it shows before, during and after a run, and that a
run that fails never looks finished."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pandas as pd
import pytest

from augreg_nb import index as index_lib
from augreg_nb.widgets import FinetunePanel
from augreg_nb.widgets import finetune_panel as ftp


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    return index_lib.load_index("catalogue")


def _smoke_panel(tmp_path, monkeypatch, catalogue, **kwargs) -> FinetunePanel:
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    return FinetunePanel(catalogue, workdir=tmp_path / "runs", smoke=True,
                         results_csv=tmp_path / "own.csv", steps=20, **kwargs)


def test_a_run_that_raises_shows_red_and_never_done(tmp_path, monkeypatch, catalogue):
    """The export fails after the last step (the disk is full): the bar already reached its
    end, yet the panel shows a red message, a red bar and no result to export."""
    from augreg_nb import train

    def full_disk(params, path):
        raise OSError(f"No space left on device: {path}")

    monkeypatch.setattr(train.ckpt, "save", full_disk)
    panel = _smoke_panel(tmp_path, monkeypatch, catalogue)
    panel.start_button.click()
    panel.wait(120)
    assert panel.messages.kind == "error", panel.messages.text
    assert "No space left on device" in panel.messages.text
    assert "augreg-error" in panel.messages.widget.value
    assert "augreg-info" not in panel.messages.widget.value + panel.summary.value
    assert panel.bar.bar_style == "danger"
    assert panel.bar_label.value.startswith("failed at step 20 of 20")
    assert "done" not in panel.bar_label.value
    assert panel.result is None and panel.export_button.disabled
    assert not panel.start_button.disabled and panel.stop_button.disabled


def test_the_shown_run_goes_when_a_choice_changes_its_folder(tmp_path, monkeypatch, catalogue):
    panel = _smoke_panel(tmp_path, monkeypatch, catalogue, temporary_workdir=True)
    # No picture yet: the image is hidden, not a broken-image icon under the bar.
    assert panel.plot.layout.display == "none" and panel.plot.value == b""
    panel.start_button.click()
    panel.wait(120)
    assert panel.messages.kind == "info", panel.messages.text
    assert panel.plot.layout.display != "none" and panel.plot.value[:4] == b"\x89PNG"
    assert panel.bar_label.value.startswith("done: 20 steps · last loss ")
    assert panel.bar.bar_style == "success"
    # Export from a temporary run folder names no checkpoint file that will vanish.
    panel.export_button.click()
    assert panel.messages.kind == "info" and "not kept" in panel.messages.text
    assert str(panel.result.export_path) not in panel.messages.text
    assert "own.csv" in panel.messages.text
    # Another learning rate is another run folder: the shown run goes at once.
    folder = panel.config().workdir
    shown = panel.summary.value
    panel.lr.value = 0.01
    assert panel.config().workdir != folder
    assert panel.summary.value == "" and panel.result is None
    assert panel.export_button.disabled and panel.bar_label.value == ""
    assert panel.plot.layout.display == "none" and panel.plot.value == b""
    assert shown and not panel.start_button.disabled
    # An invalid choice clears too (the old result is not the error's run either).
    panel.lr.value = 0.03
    panel.start_button.click()
    panel.wait(120)  # finished before: shown again at once
    assert panel.result is not None and not panel.export_button.disabled
    panel.micro_batches.value = 7  # the batch does not split into 7
    assert panel.messages.kind == "error" and panel.start_button.disabled
    assert panel.result is None and panel.export_button.disabled and panel.summary.value == ""


def test_stop_says_how_long_it_waits(tmp_path, monkeypatch, catalogue):
    panel = _smoke_panel(tmp_path, monkeypatch, catalogue)
    panel.start_button.click()
    panel.stop_button.click()  # while the first step compiles
    assert "Stop pressed: stopping after the current step" in panel.bar_label.value
    assert "compiles" in panel.bar_label.value
    panel.wait(120)
    # No leftover "stopping ..." once it has stopped.
    assert panel.bar_label.value == "stopped at step 1 of 20"
    assert panel.bar.bar_style == "warning"
    measured = ftp._ProgressWidgets(panel.bar, panel.bar_label)
    measured.seconds_per_step = 68.0
    assert "a step takes about 68 s here" in ftp.stop_wait_text(measured)


def test_the_stop_note_outlives_the_compile_ticker_and_the_next_log():
    import ipywidgets as w

    progress = ftp._ProgressWidgets(w.IntProgress(), w.HTML())
    progress.TICK_S = 0.01
    progress.on_train_begin({"total_steps": 20, "start_step": 0, "global_batch": 32})
    progress.stop_note = "Stop pressed: stopping after the current step ..."
    time.sleep(0.1)  # several ticks
    assert progress.label.value.endswith(" · " + progress.stop_note)
    assert "s so far" in progress.label.value
    progress.on_log(1, {"loss": 2.0, "img_per_sec": 100.0})
    assert progress.label.value.endswith(" · " + progress.stop_note)


def test_time_left_after_a_resume_is_the_wall_time_of_this_sessions_steps(monkeypatch):
    import ipywidgets as w

    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    progress = ftp._ProgressWidgets(w.IntProgress(), w.HTML())
    progress.TICK_S = 3600  # no ticks in this test
    progress.on_train_begin({"total_steps": 300, "start_step": 90, "global_batch": 512})
    assert "step 90 of 300 (resumed) · compiling the training step" in progress.label.value
    # Steps are fast (5120 img/s: 0.1 s each) but evaluations and saves take 0.9 s a step.
    progress.on_log(100, {"loss": 1.0, "img_per_sec": 5120.0})
    assert "about 20 s left" in progress.label.value  # one log: its speed is all there is
    clock["now"] += 10.0
    progress.on_log(110, {"loss": 0.9, "img_per_sec": 5120.0})
    assert progress.time_left(110, clock["now"]) == pytest.approx(190.0)
    assert "about 3 min left" in progress.label.value
    clock["now"] += 190.0
    progress.on_log(300, {"loss": 0.5, "img_per_sec": 5120.0})
    assert "about 0 s left" in progress.label.value


def test_something_moves_while_the_first_step_compiles():
    import ipywidgets as w

    progress = ftp._ProgressWidgets(w.IntProgress(), w.HTML())
    progress.TICK_S = 0.01
    seen = []
    progress.label.observe(lambda change: seen.append(change["new"]), names="value")
    progress.on_train_begin({"total_steps": 20, "start_step": 0, "global_batch": 32})
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    progress.on_log(1, {"loss": 2.0, "img_per_sec": 100.0})
    assert len(seen) >= 3 and all("s so far" in text for text in seen[:3])
    assert progress._ticker is None
    assert progress.label.value.startswith("step 1 of 20 · loss 2.0000")
    count = len(seen)
    time.sleep(0.05)
    assert len(seen) == count  # the ticker has stopped


def _image_folder(root):
    from PIL import Image

    for k, cls in enumerate(("daisy", "roses")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (24, 24), (60 * k, 40 * i, 90)).save(root / cls / f"{i}.jpg")
    (root / "roses" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return root


def test_a_folder_of_images_is_summarised_before_start(tmp_path, catalogue):
    folder = _image_folder(tmp_path / "flowers")
    info = ftp.folder_summary(folder)
    assert info["classes"] == ["daisy", "roses"]
    assert sum(info["per_split"].values()) == 11 == info["total"] == info["checked"]
    assert set(info["per_split"]) == {"train", "val", "test"} and info["per_split"]["train"] >= 8
    assert info["unreadable"] == [str(folder / "roses" / "broken.jpg")]
    panel = FinetunePanel(catalogue, workdir=tmp_path / "runs",
                          checkpoint="Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0")
    assert panel.folder_info.value == ""
    panel.folder.value = str(folder)
    text = panel.folder_info.value
    assert "2 classes: daisy, roses" in text and "broken.jpg" in text
    assert f"train {info['per_split']['train']}" in text and "unreadable files of 11: 1" in text
    panel.folder.value = ""
    assert panel.folder_info.value == ""
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    panel.folder.value = str(empty)
    assert "no images found" in panel.folder_info.value


def test_for_session_knows_a_temporary_run_folder(tmp_path, catalogue):
    root = tmp_path / "augreg_nb_smoke_x"
    env = SimpleNamespace(owns_root=True, root=root)
    session = SimpleNamespace(index=catalogue, smoke=True, smoke_env=env,
                              workdir=root / "runs", results_csv=tmp_path / "own.csv")
    assert FinetunePanel.for_session(session).temporary_workdir
    kept = SimpleNamespace(index=catalogue, smoke=True, smoke_env=None,
                           workdir=tmp_path / "runs", results_csv=tmp_path / "own.csv")
    assert not FinetunePanel.for_session(kept).temporary_workdir


def test_library_messages_carry_no_terminal_escape_codes():
    from augreg_nb.widgets.common import details_html

    raw = ("\x1b[1m\x1b[31mE0000 cuda_dnn.cc:8310] Unable to register\x1b[0m\r\n"
           "Dl Completed...:  10%|\x1b[32m#\x1b[0m  \rDl Completed...: 100%|##########|\n"
           "\x1b]0;title\x07plain line\n")
    html_text = details_html(raw, "library messages")
    assert "\x1b" not in html_text and "[0m" not in html_text and "[31m" not in html_text
    assert "E0000 cuda_dnn.cc:8310] Unable to register\n" in html_text
    assert "Dl Completed...: 100%|##########|" in html_text and "10%" not in html_text
    assert "plain line" in html_text and "title" not in html_text
    assert "(3 lines)" in html_text
    assert details_html("\x1b[0m\n", "x") == ""
