"""Export to timm's folder layout and to the Hub, checked without PyTorch.

The round trip goes out through ``timm_export`` and back through the package's own timm
reader (``checkpoint.load_flat`` on the safetensors file); the names and shapes are checked
against timm's own list shipped in ``data/timm_layout``; the uploads go to the loopback Hub.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from augreg_nb import checkpoint as ck
from augreg_nb import models, names
from augreg_nb import timm_export as te
from augreg_nb.loopback import FakeHub
from augreg_nb.preprocess import eval_resize_size
from augreg_nb.testing.checkpoints import write_fake_checkpoint
from tests.test_models import random_images
from tests.test_timm_convert import timm_reference_forward

# (model, resolution, classes): each of the 10 at a small input it supports, a resolution
# timm names (224/384) and one it does not (64, 96), heads of several sizes.
ROUND_TRIPS = [
    ("Ti/16", 32, 10), ("S/16", 32, 5), ("S/32", 64, 3), ("B/16", 32, 4), ("B/32", 64, 2),
    ("B/8", 16, 3), ("L/16", 32, 2), ("R+Ti/16", 64, 6), ("R26+S/32", 64, 7),
    ("R50+L/32", 32, 3),
]
# A first forward pass of a base-sized or hybrid model costs 5 to 30 s on two cores (and
# L/16 and R50+L/32 have 300 million parameters): those run with the slow tests, in
# tests/test_timm_export_large.py so that a parallel run gives them a worker of their own.
SLOW = {"B/16", "B/32", "B/8", "L/16", "R26+S/32", "R50+L/32"}


def _params(model, resolution, classes, seed=0):
    """Seeded float32 parameters of the model's tree (drawn directly in float32: L/16 and
    R50+L/32 have 300 million of them)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in sorted(ck.expected_shapes(model, classes, resolution).items()):
        value = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("/kernel"):
            fan_in = shape[0] if "MultiHead" in name and "/out/" not in name else \
                int(np.prod(shape[:-1]))
            value *= np.float32(1 / np.sqrt(fan_in))
        elif name.endswith("/scale"):
            value = 1 + np.float32(0.1) * value
        else:
            value *= np.float32(0.1)
        flat[name] = value
    return flat


@pytest.mark.parametrize("model,resolution,classes",
                         [c for c in ROUND_TRIPS if c[0] not in SLOW],
                         ids=[c[0] for c in ROUND_TRIPS if c[0] not in SLOW])
def test_every_model_round_trips_to_the_same_logits(tmp_path, model, resolution, classes):
    round_trip(tmp_path, model, resolution, classes)


def round_trip(tmp_path, model, resolution, classes):
    """Export seeded weights, read them back: same tree, same logits, timm's layout."""
    flat = _params(model, resolution, classes, seed=3)
    labels = [f"class {i}" for i in range(classes)]
    out = te.export_timm(flat, tmp_path / "out", label_names=labels)
    assert out.model_name == model and out.num_classes == classes
    assert out.resolution == resolution
    back = te.read_timm_folder(tmp_path / "out")
    assert back.model_name == model
    assert set(back.flat) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(back.flat[k], flat[k], err_msg=k)
    images = random_images(2, resolution, seed=1)
    net = models.create_model(model, classes)
    before = np.asarray(net.apply({"params": ck.unflatten(flat)}, images))
    after = np.asarray(net.apply({"params": back.params}, images))
    np.testing.assert_array_equal(after, before)
    state = load_file(str(tmp_path / "out" / te.WEIGHTS_FILE))
    assert {k: v.shape for k, v in state.items()} == te.reference_layout(model, classes,
                                                                         resolution)
    assert back.config["label_names"] == labels
    assert "torch" not in sys.modules


@pytest.mark.parametrize("model", models.AUGREG_MODELS)
def test_written_names_and_shapes_are_timms_for_every_model(model):
    # timm's list is read off its own state dicts (data/timm_layout); the export's is
    # computed by the converter: they agree name for name, at timm's size and another.
    assert te.export_layout(model, 1000, 224) == te.reference_layout(model, 1000, 224)
    assert te.export_layout(model, 37, 128) == te.reference_layout(model, 37, 128)


def test_shipped_layouts_describe_the_table_of_architectures():
    for model in models.AUGREG_MODELS:
        shipped = json.loads(te.data_path("timm_layout", f"{names.model_to_prefix(model)}.json")
                             .read_text())
        assert shipped["architecture"] == names.model_to_timm_arch(model, 224)
        assert shipped["arrays"] == len(shipped["keys"])
        hidden = models.get_model_config(model).hidden_size
        assert shipped["keys"]["cls_token"] == [1, 1, hidden]
        grid = models.get_model_config(model).grid_size(224)
        assert shipped["keys"]["pos_embed"] == [1, grid * grid + 1, hidden]


def test_a_wrong_layout_is_refused_with_the_names():
    state = {k: np.empty(s, np.dtype([])) for k, s in
             te.reference_layout("Ti/16", 10, 224).items()}
    del state["blocks.3.norm1.bias"]
    state["blocks.0.ls1.gamma"] = np.empty((192,), np.dtype([]))
    state["head.weight"] = np.empty((10, 191), np.dtype([]))
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224: missing \['blocks.3.norm1.bias"
                       r"'\]; not in timm \['blocks.0.ls1.gamma'\]; wrong shape "
                       r"\['head.weight \(10, 191\) \(timm: \(10, 192\)\)'\]"):
        te.check_layout(state, "Ti/16", 10, 224)


@pytest.mark.parametrize("model", ["R+Ti/16", pytest.param("R26+S/32", marks=pytest.mark.slow)])
def test_the_file_computes_what_timm_computes(tmp_path, model):
    # timm's semantics, written independently in tests/test_timm_convert.py, on the exported
    # file: the same logits as the JAX model up to float error.
    flat = _params(model, 64, 5, seed=2)
    te.export_timm(flat, tmp_path, label_names=list("abcde"))
    state = load_file(str(tmp_path / te.WEIGHTS_FILE))
    images = random_images(2, 64, seed=4)
    jax_logits = np.asarray(models.create_model(model, 5).apply(
        {"params": ck.unflatten(flat)}, images))
    ref = timm_reference_forward(state, images, models.get_model_config(model).num_heads)
    np.testing.assert_allclose(jax_logits, ref, rtol=1e-4, atol=1e-4)


def test_config_json_is_what_timm_reads(tmp_path):
    flat = _params("Ti/16", 384, 3)
    out = te.export_timm(flat, tmp_path, label_names=["cat", "dog", "fox"])
    cfg = json.loads((tmp_path / te.CONFIG_FILE).read_text())
    assert cfg == out.config
    assert cfg["architecture"] == "vit_tiny_patch16_384"
    assert cfg["num_classes"] == 3 and cfg["label_names"] == ["cat", "dog", "fox"]
    assert cfg["num_features"] == 192 and cfg["global_pool"] == "token"
    assert cfg["model_args"] == {"img_size": 384}
    p = cfg["pretrained_cfg"]
    assert p["input_size"] == [3, 384, 384] and p["num_classes"] == 3
    # The package's evaluation: short side 448, centre crop 384, values x / 127.5 - 1.
    assert p["crop_pct"] * 448 == pytest.approx(384) and p["crop_mode"] == "center"
    assert int(384 / p["crop_pct"]) == eval_resize_size(384)  # timm's floor gives 448
    pixels = np.array([0.0, 127.5 / 255, 1.0])
    mean, std = np.array(p["mean"]), np.array(p["std"])
    np.testing.assert_allclose((pixels - mean[0]) / std[0], [-1.0, 0.0, 1.0])
    assert p["interpolation"] == "bilinear" and p["first_conv"] == "patch_embed.proj"
    assert p["custom_load"] is False and p["classifier"] == "head"
    card = (tmp_path / te.CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    assert "pretrained_cfg_overlay=dict(" in card and "num_classes=3))" in card


@pytest.mark.parametrize("resolution", [64, 128, 160, 224, 384, 448, 512])
def test_crop_pct_gives_back_the_resize_for_every_resolution(resolution):
    crop = te.pretrained_cfg("x", 2, resolution, "patch_embed.proj")["crop_pct"]
    assert int(np.floor(resolution / crop)) == eval_resize_size(resolution)


def test_architecture_for_resolutions_timm_does_not_name():
    assert te.timm_architecture("B/16", 384) == ("vit_base_patch16_384", {"img_size": 384})
    assert te.timm_architecture("B/8", 384) == ("vit_base_patch8_224", {"img_size": 384})
    assert te.timm_architecture("R26_S_32", 128) == ("vit_small_r26_s32_224", {"img_size": 128})


def test_bad_inputs_are_explained(tmp_path):
    flat = _params("Ti/16", 32, 4)
    with pytest.raises(ValueError, match="3 label names were given for a 4-class head"):
        te.export_timm(flat, tmp_path / "a", label_names=["a", "b", "c"])
    assert not (tmp_path / "a" / te.CONFIG_FILE).exists()
    with pytest.raises(ck.CheckpointError, match="not the variables dict"):
        te.export_timm({"params": ck.unflatten(flat)}, tmp_path / "b")
    headless = {k: v for k, v in flat.items() if not k.startswith("head/")}
    with pytest.raises(ck.CheckpointError, match="no head"):
        te.export_timm(headless, tmp_path / "c")
    bad = dict(flat)
    bad["head/bias"] = np.full(4, np.nan, np.float32)
    with pytest.raises(ck.CheckpointError, match="NaN"):
        te.export_timm(bad, tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="not a complete timm export"):
        te.read_timm_folder(tmp_path / "d")
    with pytest.raises(ValueError, match="timm has no architecture for 'testing'"):
        te.export_timm(_params("testing", 32, 2), tmp_path / "e")


def test_a_folder_whose_config_disagrees_is_refused(tmp_path):
    te.export_timm(_params("Ti/16", 32, 4), tmp_path)
    cfg = json.loads((tmp_path / te.CONFIG_FILE).read_text())
    cfg["num_classes"] = 5
    (tmp_path / te.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ck.CheckpointError, match="says 5 classes, the weights have 4"):
        te.read_timm_folder(tmp_path)


def _fake_run(tmp_path, *, export=True):
    """A finetune run folder as ``augreg_nb.train.finetune`` leaves it."""
    from augreg_nb.atomic import write_json_atomic
    from augreg_nb.train import RESULT_FILE

    run = tmp_path / "run"
    run.mkdir()
    stem = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    adapt = f"{stem}--digits-steps_60-lr_0.03-res_32"
    npz = run / f"{adapt}.npz"
    if export:
        write_fake_checkpoint(npz, "Ti/16", num_classes=10, resolution=32, seed=5)
    row = {"name": "Ti/16", "filename": stem, "aug": "none", "wd": 0.03, "do": 0.0, "sd": 0.0,
           "adapt_ds": "digits", "adapt_lr": 0.03, "adapt_steps": 60, "adapt_resolution": 32,
           "adapt_final_val": 0.8125, "adapt_final_test": 0.79, "adapt_filename": adapt}
    write_json_atomic(run / RESULT_FILE, {"result_row": row, "final": {},
                                          "export_path": str(npz) if export else ""})
    return run, npz


def test_a_run_folder_exports_with_its_task_names_and_card(tmp_path):
    from augreg_nb.tasks import get_task

    run, npz = _fake_run(tmp_path)
    out = te.export_run(run, tmp_path / "timm", command="augreg-nb export --format timm run")
    assert out.label_names == tuple(get_task("digits").label_names)
    assert out.architecture == "vit_tiny_patch16_224" and out.resolution == 32
    back = te.read_timm_folder(out.folder)
    want = ck.read_npz(npz)
    for k in want:
        np.testing.assert_array_equal(back.flat[k], want[k])
    card = (out.folder / te.CARD_FILE).read_text()
    for text in ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0`",
                 "| task | digits (10 classes) |", "60 steps, learning rate 0.03, 32 px",
                 "| val accuracy | 81.25 % |", "| test accuracy | 79.00 % |",
                 "`augreg-nb export --format timm run`"):
        assert text in card, text
    assert "augreg-nb reproduce" not in card  # 60 steps on digits: not a published run


def test_the_card_of_a_published_grid_run_says_how_to_train_it_again():
    adapt = ("R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.0-sd_0.0--"
             "oxford_iiit_pet-steps_0k-lr_0.003-res_384")
    row = {"filename": adapt.split("--")[0], "adapt_ds": "oxford_iiit_pet",
           "adapt_steps": 500, "adapt_lr": 0.003, "adapt_final_val": 0.93,
           "adapt_final_test": float("nan"), "adapt_filename": adapt}
    card = te.model_card("vit_small_r26_s32_384", "R26+S/32", 37, 384, None, {"row": row})
    assert f"| fine-tuned by | `augreg-nb reproduce {adapt}` |" in card
    assert "| val accuracy | 93.00 % |" in card and "| test accuracy | - |" in card
    assert "| classes | not recorded (class indices only) |" in card


def test_a_run_without_weights_says_how_to_get_them(tmp_path):
    run, _ = _fake_run(tmp_path, export=False)
    with pytest.raises(FileNotFoundError, match="config.export = True"):
        te.export_run(run, tmp_path / "timm")


def test_a_checkpoint_file_exports_with_imagenet_names(tmp_path):
    path = write_fake_checkpoint(tmp_path / "m.npz", "S/32", num_classes=1000, resolution=64)
    out = te.export_run(path, tmp_path / "timm")
    assert len(out.label_names) == 1000 and out.label_names[0].startswith("tench")
    assert out.config["label_names"] == list(out.label_names)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "ENDPOINT", server.url)
        monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored"))
        yield server


def test_upload_to_the_hub_and_download_back(tmp_path, hub, monkeypatch):
    from huggingface_hub import hf_hub_download

    folder = tmp_path / "timm"
    te.export_timm(_params("R+Ti/16", 64, 3), folder, label_names=["a", "b", "c"],
                   card={"command": "augreg-nb export --format timm x --out timm"})
    url = te.push_to_hub(folder, "me/r-ti-16-test", token="hf_loopback")
    assert "/me/r-ti-16-test/commit/" in url
    posts = [r.path for r in hub.requests if r.method == "POST"]
    assert posts[0] == "/api/repos/create"
    assert posts[-1] == "/api/models/me/r-ti-16-test/commit/main"
    assert all({k.lower(): v for k, v in r.headers.items()}.get("authorization")
               == "Bearer hf_loopback" for r in hub.requests if r.method == "POST")
    files = hub.files("me/r-ti-16-test")
    assert set(files) == {te.WEIGHTS_FILE, te.CONFIG_FILE, te.CARD_FILE}
    for name, data in files.items():
        assert data == (folder / name).read_bytes(), name
    assert '"hf-hub:me/r-ti-16-test"' in files[te.CARD_FILE].decode()
    # What timm's hf-hub: loader fetches, read back through the package.
    down = tmp_path / "down"
    for name in (te.WEIGHTS_FILE, te.CONFIG_FILE):
        hf_hub_download("me/r-ti-16-test", name, local_dir=down)
    back = te.read_timm_folder(down)
    assert back.model_name == "R+Ti/16" and back.config["label_names"] == ["a", "b", "c"]
    # A second upload to the same repo (exists already) replaces the files.
    te.export_timm(_params("R+Ti/16", 64, 3, seed=9), folder, label_names=["a", "b", "c"])
    te.push_to_hub(folder, "me/r-ti-16-test", token="hf_loopback")
    assert hub.files("me/r-ti-16-test")[te.WEIGHTS_FILE] == (folder / te.WEIGHTS_FILE).read_bytes()


def test_upload_without_a_token_is_refused(tmp_path, hub):
    from huggingface_hub.errors import HfHubHTTPError

    te.export_timm(_params("Ti/16", 32, 2), tmp_path / "timm")
    with pytest.raises(HfHubHTTPError, match="401"):
        te.push_to_hub(tmp_path / "timm", "me/x")
    assert hub.files("me/x") == {}


def test_an_incomplete_folder_is_never_uploaded(tmp_path, hub):
    te.export_timm(_params("Ti/16", 32, 2), tmp_path / "timm")
    (tmp_path / "timm" / te.CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete timm export"):
        te.push_to_hub(tmp_path / "timm", "me/x", token="hf_loopback")
    assert not hub.requests


def test_command_line_exports_a_run_and_uploads_it(tmp_path, hub, monkeypatch, capsys):
    from augreg_nb.cli import main

    run, _ = _fake_run(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    out = tmp_path / "timm"
    code = main(["export", "--format", "timm", str(run), "--out", str(out),
                 "--labels", str(labels), "--push-to-hub", "me/digits"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (f"exported Ti/16 as timm's vit_tiny_patch16_224 (32 px, 10 classes, 10 class "
            f"names): {out}") in printed
    assert "uploaded to me/digits: " in printed
    assert te.read_timm_folder(out).config["label_names"][3] == "digit 3"
    card = hub.files("me/digits")[te.CARD_FILE].decode()
    assert f"`augreg-nb export --format timm {run} --out {out} --labels {labels}`" in card
    assert any({k.lower(): v for k, v in r.headers.items()}.get("authorization")
               == "Bearer hf_from_env" for r in hub.requests)


def test_command_line_explains_a_run_without_weights(tmp_path, capsys):
    from augreg_nb.cli import main

    run, _ = _fake_run(tmp_path, export=False)
    assert main(["export", "--format", "timm", str(run), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("augreg-nb export: error: run folder") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_finetune_panel_exports_the_finished_run_for_timm(tmp_path, monkeypatch):
    from augreg_nb.index import load_index
    from augreg_nb.train import FinetuneResult
    from augreg_nb.widgets.finetune_panel import FinetunePanel

    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    panel = FinetunePanel(load_index("catalogue", strict=False), workdir=tmp_path / "runs",
                          smoke=True, results_csv=tmp_path / "own.csv")
    assert panel.timm_button.disabled  # nothing finished yet
    assert any(panel.timm_button in getattr(b, "children", ()) for b in panel.widget.children)
    run, _ = _fake_run(tmp_path)
    row = json.loads((run / "result.json").read_text())["result_row"]
    panel.result = FinetuneResult(params={}, history=None, result_row=row,
                                  export_path=None, workdir=run)
    panel.export_button.disabled = False  # as a finished run leaves it
    assert not panel.timm_button.disabled
    panel.timm_button.click()
    assert panel.messages.kind == "info", panel.messages.text
    assert f"{run / 'timm'}: timm's vit_tiny_patch16_224, 10 classes" in panel.messages.text
    assert te.read_timm_folder(run / "timm").model_name == "Ti/16"
    # A run whose weights are gone: the panel says so and claims no export.
    (run / "timm" / te.CONFIG_FILE).unlink()
    for npz in run.glob("*.npz"):
        npz.unlink()
    panel.timm_button.click()
    assert panel.messages.kind == "error" and "config.export = True" in panel.messages.text
    assert not (run / "timm" / te.CONFIG_FILE).exists()


def test_a_folder_that_is_not_a_finished_run_is_named(tmp_path):
    (tmp_path / "running").mkdir()
    with pytest.raises(FileNotFoundError, match="without result.json: not a finished finetune"):
        te.export_run(tmp_path / "running", tmp_path / "timm")
    run, _ = _fake_run(tmp_path)
    with pytest.raises(ValueError, match="3 label names were given for a 10-class head"):
        te.export_run(run, tmp_path / "timm", label_names=["a", "b", "c"])
