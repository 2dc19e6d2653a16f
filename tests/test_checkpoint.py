"""Reading, checking, adapting and writing checkpoints in the published .npz layout."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import scipy.ndimage

from augreg_nb import checkpoint as ck
from augreg_nb import models, sources
from augreg_nb.resources import data_path
from augreg_nb.testing.checkpoints import fake_layout, fake_params, write_fake_checkpoint


def published_layout(name):
    prefix = models.get_model_config(name).file_prefix
    keys = json.loads(data_path("npz_layout", f"{prefix}.json").read_text())["keys"]
    return {k: tuple(v) for k, v in keys.items()}


def Shape(shape):
    """A zero-stride array view: lets the checks run on big models without memory."""
    return np.broadcast_to(np.float32(0), shape)


@pytest.mark.parametrize("name", models.AUGREG_MODELS)
def test_fake_layout_is_the_published_one_and_passes_the_checks(name):
    layout = fake_layout(name)
    assert layout == published_layout(name)
    flat = ck.canonicalize({k: Shape(v) for k, v in layout.items()})
    assert ck.infer_model(flat) == name
    ck.check_params(flat, name)  # no error
    new = ck.canonicalize({k: Shape(v) for k, v in fake_layout(name, numbering="new").items()})
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in flat.items()}


@pytest.mark.parametrize(("name", "numbering"), [
    ("Ti/16", "old"), ("R+Ti/16", "old"), ("R+Ti/16", "new"), ("testing", "new"),
    ("testing-hybrid", "old"),
])
def test_fake_checkpoints_load_with_model_shapes(tmp_path, name, numbering):
    path = write_fake_checkpoint(tmp_path / "f.npz", name, num_classes=10, numbering=numbering)
    with np.load(path, allow_pickle=False) as f:
        stored = {k: f[k].shape for k in f.files}
    assert stored == fake_layout(name, num_classes=10, numbering=numbering)
    params = ck.load(path)
    want = {k: tuple(v.shape) for k, v in ck.flatten(models.abstract_params(name, 10)).items()}
    assert {k: v.shape for k, v in ck.flatten(params).items()} == want
    assert all(v.dtype == np.float32 for v in ck.flatten(params).values())


def test_old_and_new_numbering_give_the_same_tree(tmp_path):
    old = write_fake_checkpoint(tmp_path / "old.npz", "testing-hybrid", num_classes=3,
                                resolution=32, seed=5)
    new = write_fake_checkpoint(tmp_path / "new.npz", "testing-hybrid", num_classes=3,
                                resolution=32, seed=5, numbering="new")
    with np.load(new) as f:
        assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in f
        assert "Transformer/encoderblock_1/LayerNorm_1/scale" in f
        assert f["gn_root/scale"].shape == (64,)
    a, b = ck.load_flat(old), ck.load_flat(new)
    assert a[0] == b[0] == "testing-hybrid"
    assert set(a[1]) == set(b[1])
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_save_then_load_is_exact_and_in_the_published_layout(tmp_path):
    src = write_fake_checkpoint(tmp_path / "a.npz", "R+Ti/16", num_classes=12, seed=2)
    params = ck.load(src)
    out = ck.save(params, tmp_path / "sub" / "b.npz")
    with np.load(out, allow_pickle=False) as f:
        stored = {k: f[k] for k in f.files}
    assert {k: v.shape for k, v in stored.items()} == fake_layout("R+Ti/16", num_classes=12)
    assert stored["gn_root/scale"].shape == (1, 1, 1, 64)
    with np.load(src) as f:  # bit-identical to the original file, array by array
        for k in f.files:
            np.testing.assert_array_equal(stored[k], f[k])
            assert stored[k].dtype == np.float32
    again = ck.flatten(ck.load(out))
    for k, v in ck.flatten(params).items():
        np.testing.assert_array_equal(again[k], v)
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary files left


def test_head_is_replaced_by_zeros_or_kept(tmp_path):
    path = write_fake_checkpoint(tmp_path / "t.npz", "testing", num_classes=10, resolution=32)
    kept = ck.load(path, num_classes=10)
    raw = ck.read_npz(path)
    np.testing.assert_array_equal(kept["head"]["kernel"], raw["head/kernel"])
    new = ck.load(path, num_classes=37)
    assert new["head"]["kernel"].shape == (32, 37) and new["head"]["bias"].shape == (37,)
    assert not new["head"]["kernel"].any() and not new["head"]["bias"].any()
    np.testing.assert_array_equal(new["cls"], raw["cls"])


@pytest.mark.parametrize(("old", "new"), [(14, 24), (7, 12), (14, 10), (2, 5)])
def test_posemb_resize_matches_scipy_zoom_order_1(old, new):
    rng = np.random.default_rng(old * 100 + new)
    posemb = rng.normal(size=(1, 1 + old * old, 16)).astype(np.float32)
    got = ck.resize_posemb(posemb, new)
    grid = posemb[0, 1:].reshape(old, old, 16)
    want = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    assert got.shape == (1, 1 + new * new, 16) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, :1], posemb[:, :1])  # class-token row kept
    np.testing.assert_allclose(got[0, 1:].reshape(new, new, 16), want, atol=2e-6, rtol=1e-6)
    # Corners are aligned: the four corner cells keep their values.
    np.testing.assert_allclose(got[0, 1:].reshape(new, new, 16)[[0, -1]][:, [0, -1]],
                               grid[[0, -1]][:, [0, -1]], atol=1e-6)


def test_load_resizes_posemb_for_a_resolution_and_logs_it(tmp_path, caplog):
    path = write_fake_checkpoint(tmp_path / "r.npz", "R+Ti/16", num_classes=5)
    with caplog.at_level(logging.INFO, logger="augreg_nb.checkpoint"):
        params = ck.load(path, resolution=384)
    table = params["Transformer"]["posembed_input"]["pos_embedding"]
    assert table.shape == (1, 1 + 12 * 12, 192)
    assert "7x7 to a 12x12 grid" in caplog.text
    assert ck.checkpoint_resolution("R+Ti/16", params) == 384
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="augreg_nb.checkpoint"):
        ck.load(path, resolution=224)
    assert "resizing" not in caplog.text


# ----------------------------------------------------------------------- bad files


def test_corrupt_file_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ck.CheckpointError, match="not an .npz archive.*fetch the checkpoint"):
        ck.load(bad)


def test_truncated_file_is_refused(tmp_path):
    path = write_fake_checkpoint(tmp_path / "t.npz", "testing", num_classes=10, resolution=32)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
            ck.load(path)


def test_pickled_content_is_never_loaded(tmp_path):
    flat = fake_params("testing", num_classes=4, resolution=32)
    flat["cls"] = np.array([{"evil": 1}], dtype=object)
    path = tmp_path / "p.npz"
    np.savez(path, **flat)
    with pytest.raises(ck.CheckpointError, match="pickled"):
        ck.load(path)
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps({"cls": np.zeros(3)}))
    with pytest.raises(ck.CheckpointError, match="not an .npz archive"):
        ck.load(raw)


def test_wrong_model_lists_mismatches_and_names_the_right_model(tmp_path):
    path = write_fake_checkpoint(tmp_path / "ti.npz", "Ti/16", num_classes=10, resolution=64)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load(path, model_name="S/16")
    msg = str(err.value)
    assert "does not fit model S/16" in msg and "wrong shape" in msg
    assert "cls: file (1, 1, 192), model (1, 1, 384)" in msg
    assert "looks like a Ti/16 checkpoint" in msg
    with pytest.raises(ck.CheckpointError, match=r"missing:\n    conv_root/kernel \(7, 7, 3, 64\)"):
        ck.load(path, model_name="R+Ti/16")


def test_missing_and_extra_keys_are_listed(tmp_path):
    flat = fake_params("testing", num_classes=4, resolution=32)
    del flat["Transformer/encoderblock_1/LayerNorm_2/bias"]
    flat["pre_logits/kernel"] = np.zeros((32, 32), np.float32)
    path = tmp_path / "m.npz"
    np.savez(path, **flat)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load(path, model_name="testing")
    msg = str(err.value)
    assert "1 missing:\n    Transformer/encoderblock_1/LayerNorm_2/bias (32,)" in msg
    assert "1 unexpected:\n    pre_logits/kernel (32, 32)" in msg


def test_unknown_architecture_and_other_errors(tmp_path):
    flat = fake_params("testing", num_classes=4, resolution=32)
    flat["embedding/kernel"] = np.zeros((4, 4, 3, 32), np.float32)
    path = tmp_path / "u.npz"
    np.savez(path, **flat)
    with pytest.raises(ck.CheckpointError, match="match no registered model"):
        ck.load(path)
    np.savez(path, labels=np.arange(3))
    with pytest.raises(ck.CheckpointError, match="dtype int64"):
        ck.load(path)
    with pytest.raises(FileNotFoundError):
        ck.load(tmp_path / "nope.npz")
    with pytest.raises(ck.CheckpointError, match="not a ViT parameter tree"):
        ck.save({"params": {}}, tmp_path / "x.npz")


# ----------------------------------------------------------------- load_pretrained


def test_load_pretrained_uses_the_resolver(tmp_path, monkeypatch):
    name = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    path = write_fake_checkpoint(tmp_path / f"{name}.npz", "Ti/16", num_classes=21843,
                                 resolution=64)
    calls = []

    def fake_resolve(name_or_path, *, offline=None, on_attempt=None):
        calls.append((name_or_path, offline, on_attempt))
        return sources.Resolved(path=path, source="local", layout="npz", name=name)

    monkeypatch.setattr(sources, "resolve_checkpoint", fake_resolve)
    model_name, params = ck.load_pretrained(name, num_classes=5, offline=True)
    assert calls == [(name, True, None)]
    assert model_name == "Ti/16"
    assert params["head"]["kernel"].shape == (192, 5)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 192)


def test_load_pretrained_finds_a_file_in_the_checkpoint_dir(tmp_path, monkeypatch):
    """Through the real resolver: $AUGREG_NB_CHECKPOINT_DIR holds {name}.npz."""
    from augreg_nb.resources import ENV_CHECKPOINT_DIR, ENV_OFFLINE

    name = "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    write_fake_checkpoint(tmp_path / f"{name}.npz", "R+Ti/16", num_classes=21843)
    monkeypatch.setenv(ENV_CHECKPOINT_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_OFFLINE, "1")
    model_name, params = ck.load_pretrained(name, num_classes=37, resolution=384)
    assert model_name == "R+Ti/16"
    assert params["head"]["bias"].shape == (37,)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 145, 192)
