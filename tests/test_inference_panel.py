"""Notebook 4's panel at its edges: a bad upload among good ones, library stderr, labels."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from augreg_nb.testing.checkpoints import write_fake_checkpoint
from augreg_nb.widgets import InferencePanel
from augreg_nb.widgets import inference_panel as ip


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="PNG")
    return buf.getvalue()


def _upload_value(files: dict[str, bytes], ipywidgets_major: int):
    if ipywidgets_major >= 8:
        import datetime

        when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        return tuple({"name": n, "type": "image/png", "size": len(c),
                      "content": memoryview(c), "last_modified": when}
                     for n, c in files.items())
    return {n: {"metadata": {"name": n, "type": "image/png", "size": len(c),
                             "lastModified": 0}, "content": c} for n, c in files.items()}


@pytest.mark.parametrize("major", [7, 8])
def test_an_unreadable_upload_is_named_and_the_others_are_read(major):
    value = _upload_value({"red.png": _png((255, 0, 0)), "notes.png": b"not an image",
                           "blue.png": _png((0, 0, 255))}, major)
    with pytest.raises(ValueError, match="notes.png is not an image Pillow can read"):
        ip.uploaded_images(value)
    errors: dict[str, str] = {}
    images = ip.uploaded_images(value, errors=errors)
    assert list(images) == ["red.png", "blue.png"]
    assert np.asarray(images["blue.png"])[0, 0].tolist() == [0, 0, 255]
    assert list(errors) == ["notes.png"] and "BytesIO" not in errors["notes.png"]
    assert "0x" not in errors["notes.png"]


def test_classify_classifies_readable_uploads_names_the_bad_one_and_allows_removing_it(
        tmp_path):
    path = write_fake_checkpoint(tmp_path / "fake.npz", "testing", num_classes=10,
                                 resolution=32, seed=3)
    panel = InferencePanel(str(path))
    assert panel.labels.style.description_width == "initial"  # "Class names", not "Class na..."
    panel.load_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    major = int(ip.w.__version__.split(".")[0])
    panel.use_samples.value = ("cat",)
    # What the front end does after an upload (ipywidgets 7's value is read-only to code).
    panel.upload.set_trait("value", _upload_value({"red.png": _png((255, 0, 0)),
                                                   "broken.jpg": b"\xff\xd8 cut off"}, major))
    assert list(panel.use_uploads.options) == ["red.png", "broken.jpg"]
    assert panel.use_uploads.value == ("red.png", "broken.jpg")  # new uploads are chosen
    panel.classify_button.click()
    assert panel.messages.kind == "warning", panel.messages.text
    assert "classified 2 image(s)" in panel.messages.text
    assert "broken.jpg is not an image Pillow can read" in panel.messages.text
    assert "BytesIO" not in panel.messages.text
    assert len(panel.predictions) == 2 and list(panel.skipped) == ["broken.jpg"]
    # Unselecting the bad upload removes it from Classify.
    panel.use_uploads.value = ("red.png",)
    panel.classify_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    assert "classified 2 image(s)" in panel.messages.text and not panel.skipped
    # Only bad uploads and no sample: an error that names the file.
    panel.use_samples.value = ()
    panel.use_uploads.value = ("broken.jpg",)
    panel.classify_button.click()
    assert panel.messages.kind == "error" and "broken.jpg" in panel.messages.text


def test_library_stderr_goes_to_the_collapsed_block(tmp_path, monkeypatch):
    """C++ libraries write to file descriptor 2 directly (TensorFlow's oneDNN notice): the
    panel keeps it in its library messages instead of red lines in the notebook."""
    path = write_fake_checkpoint(tmp_path / "fake.npz", "testing", num_classes=10,
                                 resolution=32, seed=3)
    real_load = ip.load_pretrained

    def noisy_load(*args, **kwargs):
        os.write(2, b"\x1b[0;31mI0000 port.cc:153] oneDNN custom operations are on.\x1b[0m\n")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ip, "load_pretrained", noisy_load)
    panel = InferencePanel(str(path))
    panel.load_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    assert "oneDNN custom operations are on." in panel.stderr.text
    assert "library messages" in panel.details.value and "<details" in panel.details.value
    assert "oneDNN" in panel.details.value and "\x1b" not in panel.details.value


def test_stderr_captures_nest_across_threads_and_restore_fd2(tmp_path):
    before = os.fstat(2)
    outer, inner = ip.StderrCapture(), ip.StderrCapture()
    entered = threading.Event()

    def other_thread():
        with inner:  # entered while the main thread's capture is on, left before it ends
            entered.set()
            os.write(2, b"from the thread\n")

    thread = threading.Thread(target=other_thread)
    with outer:
        thread.start()
        entered.wait(10)
        thread.join()
        os.write(2, b"from the main thread\n")
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)  # fd 2 restored
    assert outer.text == "from the thread\nfrom the main thread\n"
    assert inner.text == "from the thread\n"


def test_bf16_box_classifies_with_bfloat16_matmuls(tmp_path, monkeypatch):
    path = write_fake_checkpoint(tmp_path / "fake.npz", "testing", num_classes=10,
                                 resolution=32, seed=3)
    panel = InferencePanel(str(path))
    panel.load_button.click()
    panel.use_samples.value = ("cat",)
    panel.classify_button.click()
    full = panel.predictions
    seen = []
    real = ip.predict

    def spy(*args, **kwargs):
        seen.append(kwargs.get("matmul_dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ip, "predict", spy)
    assert not panel.bf16.value  # float32 unless asked
    panel.bf16.value = True
    panel.classify_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    assert "(bfloat16 matmuls)" in panel.messages.text and seen == ["bfloat16"]
    low = panel.predictions
    assert [p.index for p in low[0]][:1] == [p.index for p in full[0]][:1]
    assert low[0][0].prob != full[0][0].prob
