"""Failure paths of local files: damaged states, forged sizes, temp files, NaN weights,
linked class folders, permissions and configuration values."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from augreg_nb import checkpoint as ck
from augreg_nb import config as config_lib
from augreg_nb import input_pipeline as ip
from augreg_nb import train_state
from augreg_nb.tasks import folder_task
from augreg_nb.testing.checkpoints import write_fake_checkpoint

# --------------------------------------------------------------------------- 6. state files


def _state():
    return {"w": jnp.arange(12, dtype=jnp.float32).reshape(4, 3) + 1,
            "m": jnp.ones((3,), jnp.bfloat16), "step": jnp.asarray(7, jnp.int32)}


def _write_npz_state(path: Path, state, meta: dict) -> None:
    """A state file in the earlier single-file format: one array per leaf and a manifest."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:05d}": np.asarray(x).view(np.uint16) if x.dtype == jnp.bfloat16
              else np.asarray(x) for i, x in enumerate(leaves)}
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    manifest = {"paths": paths, "dtypes": [str(x.dtype) for x in leaves], "meta": meta}
    arrays["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _rewrite(path: Path, drop: str | None = None, manifest: bytes | None = None) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != drop}
    if manifest is not None:
        arrays["__manifest__"] = np.frombuffer(manifest, np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _data_files(folder: Path) -> list[Path]:
    """The files of a save that hold array bytes (orbax's OCDBT data files), largest first."""
    files = [p for p in (folder / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: -p.stat().st_size)


STATE_DAMAGES = ["truncated", "empty", "random-bytes", "flipped-byte", "missing-data-file",
                 "missing-manifest", "bad-metadata", "missing-metadata", "file-in-place"]


def _large_state():
    """A state whose arrays are too large for orbax to keep inside its index nodes."""
    return {**_state(), "w": jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64)}


@pytest.mark.parametrize("damage", STATE_DAMAGES)
def test_a_damaged_state_is_named_with_the_way_out(tmp_path, damage):
    path = tmp_path / "run" / "state"
    save = train_state.save_state(path, _large_state(), meta={"recipe": {"a": 1}})
    data = _data_files(save)
    raw = data[0].read_bytes()
    if damage == "truncated":
        data[0].write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "empty":
        data[0].write_bytes(b"")
    elif damage == "random-bytes":
        data[0].write_bytes(np.random.default_rng(0).bytes(len(raw)))
    elif damage == "flipped-byte":
        i = len(raw) // 2
        data[0].write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:])
    elif damage == "missing-data-file":
        for f in data:
            f.unlink()
    elif damage == "missing-manifest":
        for f in (save / "arrays").rglob("manifest.ocdbt"):
            f.unlink()
    elif damage == "bad-metadata":
        (save / "meta" / "metadata").write_text("{not json")
    elif damage == "missing-metadata":
        (save / "meta" / "metadata").unlink()
    else:
        shutil.rmtree(path)
        path.write_bytes(b"a file where the state folder belongs")
    calls = [lambda: train_state.restore_state(path, like=_large_state())]
    if damage in ("bad-metadata", "missing-metadata", "file-in-place"):
        calls.append(lambda: train_state.read_meta(path))
    for call in calls:
        with pytest.raises(train_state.StateFileError) as info:
            call()
        text = str(info.value)
        assert str(path) in text and "Move it away" in text and "step 0" in text
        assert "Traceback" not in text and len(text) < 800
    assert path.exists()  # never removed or restarted silently


NPZ_DAMAGES = ["truncated", "empty", "random-bytes", "flipped-byte", "bad-manifest",
               "missing-array", "directory", "object-array"]


@pytest.mark.parametrize("damage", NPZ_DAMAGES)
def test_a_damaged_state_file_of_the_earlier_format_is_named_with_the_way_out(tmp_path,
                                                                               damage):
    path = tmp_path / "run" / "state.npz"
    _write_npz_state(path, _state(), meta={"recipe": {"a": 1}})
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif damage == "flipped-byte":
        i = raw.index(np.float32(5.0).tobytes())  # inside the array data, not a header
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:])
    elif damage == "bad-manifest":
        _rewrite(path, manifest=b"{not json")
    elif damage == "missing-array":
        _rewrite(path, drop="leaf_00001")
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["leaf_00000"] = np.array([{"x": 1}], dtype=object)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    for call in (lambda: train_state.read_npz_meta(path),
                 lambda: train_state.restore_npz_state(path, like=_state())):
        with pytest.raises(train_state.StateFileError) as info:
            call()
        text = str(info.value)
        assert str(path) in text and "Move it away" in text and "step 0" in text
        assert "pickle=" not in text.replace(" ", "") and "allow_pickle" not in text
    if damage != "directory":
        assert path.exists()  # never removed or restarted silently


def test_a_sound_state_still_restores_bit_identically(tmp_path):
    state = _state()
    for n in range(3):  # only the newest save is kept
        train_state.save_state(tmp_path / "state", state, meta={"k": n})
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["3"]
    got, meta = train_state.restore_state(tmp_path / "state", like=state)
    assert meta == {"k": 2} and train_state.read_meta(tmp_path / "state") == {"k": 2}
    _write_npz_state(tmp_path / "state.npz", state, meta={"k": 1})
    old, old_meta = train_state.restore_npz_state(tmp_path / "state.npz", like=state)
    assert old_meta == {"k": 1}
    for tree in (got, old):
        for a, b in zip(jax_leaves(tree), jax_leaves(state), strict=True):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def test_a_state_whose_arrays_declare_other_shapes_is_refused_before_reading(tmp_path):
    like = {**_state(), "w": jnp.zeros((40, 3), jnp.float32)}
    train_state.save_state(tmp_path / "state", _state())
    with pytest.raises(ValueError, match=r"\['w'\] is float32\[4, 3\] but this run needs"):
        train_state.restore_state(tmp_path / "state", like=like)
    _write_npz_state(tmp_path / "state.npz", _state(), {})
    with pytest.raises(ValueError, match=r"\['w'\] is float32\[4, 3\] but this run needs"):
        train_state.restore_npz_state(tmp_path / "state.npz", like=like)


# --------------------------------------------------------------------------- 10. sizes


def _npy_header(shape, dtype="<f4") -> bytes:
    text = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def test_an_npz_declaring_a_trillion_floats_is_refused_without_allocating(tmp_path):
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("embedding/kernel.npy", _npy_header((10**12,)) + b"\0" * 100_000)
    tracemalloc.start()
    try:
        with pytest.raises(ck.CheckpointError, match="declares float32"):
            ck.load_flat(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_a_compressed_npz_that_inflates_far_beyond_the_model_is_refused_first(tmp_path):
    path = write_fake_checkpoint(tmp_path / "bomb.npz", "testing", num_classes=10,
                                 resolution=32)
    size = 256 << 20  # 256 MiB of zeros, about 250 kB compressed
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("Transformer/extra.npy", "w", force_zip64=True) as f:
            header = _npy_header((size // 4,))
            f.write(header)
            block = b"\0" * (1 << 20)
            for _ in range(size // len(block)):
                f.write(block)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ck.CheckpointError, match="unexpected"):
            ck.load_flat(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def _png(width: int, height: int) -> bytes:
    """A PNG header of the given size (the image data is never read by the size check)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_images_too_large_to_decode_count_as_unreadable(tmp_path, monkeypatch):
    from PIL import Image

    huge = tmp_path / "huge.png"
    huge.write_bytes(_png(20000, 20000))
    assert ip._too_large(str(huge)) and not ip._too_large(str(tmp_path / "missing.png"))
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (40 + i, 30), (i * 40, 0, 0))
            image.save(tmp_path / "data" / cls / f"{i}.png")
    task = folder_task(tmp_path / "data", val_fraction=0.0, test_fraction=0.0)
    monkeypatch.setattr(ip, "MAX_PIXELS", 41 * 30)  # here: the 42 px wide images
    bad = ip.unreadable_images(task, "train")
    assert sorted(Path(p).name for p in bad) == ["2.png", "2.png"]
    assert len(ip._folder_files(task, "train")[0]) == 4


# --------------------------------------------------------------------------- 11. temp files


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_stale_temp_files_are_swept_and_failed_writes_leave_none(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    stale = run / f".state.npz.tmp-{_dead_pid()}"
    stale.write_bytes(b"left by a killed run")
    mine = run / f".result.json.tmp-{os.getpid()}"  # a live writer's file stays
    mine.write_bytes(b"in progress")
    keep = run / "notes.tmp"
    keep.write_bytes(b"not ours")
    tree = {"embedding": {"kernel": np.zeros((2, 2, 3, 4))}}
    path = ck.save(tree, run / "export.npz")
    assert not stale.exists() and mine.exists() and keep.exists()
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space"):
        ck.save(tree, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [mine.name, keep.name, "export.npz"])


def test_an_unfinished_save_of_a_killed_run_is_ignored_and_removed(tmp_path):
    folder = tmp_path / "state"
    train_state.save_state(folder, _state(), meta={"k": 1})
    # What a run killed while saving leaves: the next save under a temporary name.
    unfinished = folder / "2.orbax-checkpoint-tmp-1700000000000000"
    (unfinished / "arrays").mkdir(parents=True)
    (unfinished / "arrays" / "_METADATA").write_bytes(b"{")
    assert train_state.read_meta(folder) == {"k": 1}
    got, _ = train_state.restore_state(folder, like=_state())
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(_state()["w"]))
    train_state.save_state(folder, _state(), meta={"k": 2})
    assert [p.name for p in folder.iterdir()] == ["2"]
    assert train_state.read_meta(folder) == {"k": 2}


# --------------------------------------------------------------------------- Also: umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    from augreg_nb.testing.checkpoints import fake_params

    old = os.umask(umask)
    try:
        state = train_state.save_state(tmp_path / "state", _state())
        export = ck.save(ck.unflatten(fake_params("testing", num_classes=3, resolution=32)),
                         tmp_path / "export.npz")
    finally:
        os.umask(old)
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {mode}
    folders = [state, *(p for p in state.rglob("*") if p.is_dir())]
    assert {p.stat().st_mode & 0o777 for p in folders} == {mode | (mode & 0o444) >> 2}
    assert export.stat().st_mode & 0o777 == mode


# --------------------------------------------------------------------------- 12. NaN weights


def test_nonfinite_weights_are_refused_and_predictions_never_show_nan(tmp_path, caplog):
    from augreg_nb.inference import predict_arrays

    path = write_fake_checkpoint(tmp_path / "ok.npz", "testing", num_classes=3, resolution=32)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    name = "Transformer/encoder_norm/scale"
    arrays[name] = arrays[name].copy()
    arrays[name][1] = np.nan
    arrays["head/bias"] = np.array([0.0, np.inf, 0.0], np.float32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ck.CheckpointError, match="NaN or infinite") as info:
        ck.load(bad)
    assert name in str(info.value) and "head/bias: 1 of 3" in str(info.value)
    params = ck.load(bad, allow_nonfinite=True)
    assert "allow_nonfinite" in caplog.text
    images = np.zeros((2, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict_arrays("testing", params, images)


# --------------------------------------------------------------------------- 13. links


def test_linked_class_folders_never_relabel_or_double_count(tmp_path, caplog):
    from PIL import Image

    root = tmp_path / "pets"
    for cls, n in (("cat", 4), ("dog", 3)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / cls / f"{i}.png")
    (root / "all").symlink_to(root, target_is_directory=True)  # would relabel everything
    (root / "cat" / "loop").symlink_to(root, target_is_directory=True)
    (root / "kitten").symlink_to(root / "cat", target_is_directory=True)  # same images
    elsewhere = tmp_path / "extra" / "bird"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(elsewhere / "0.png")
    (root / "bird").symlink_to(elsewhere, target_is_directory=True)  # a real class, linked
    task = folder_task(root, val_fraction=0.0, test_fraction=0.0)
    files = task.folder.files["train"]
    reals = [Path(p).resolve() for p, _ in files]
    assert len(reals) == len(set(reals))
    assert "all" not in task.class_names and "bird" in task.class_names
    by_class = {}
    for p, label in files:
        by_class.setdefault(task.class_names[label], []).append(Path(p).resolve().parent.name)
    assert by_class["dog"] == ["dog"] * 3 and by_class["bird"] == ["bird"]
    # cat/ and kitten/ are the same folder: its images would get either label, so neither.
    assert "cat" not in by_class and "kitten" not in by_class
    assert "links to the dataset folder itself" in caplog.text
    assert "4 image(s) that links make part of more than one class" in caplog.text


# --------------------------------------------------------------------------- 7. config values


@pytest.mark.parametrize("field,value", [
    ("base_lr", -0.01), ("base_lr", 0.0), ("base_lr", float("nan")), ("momentum", 1.0),
    ("momentum", -0.1), ("grad_clip", -1.0), ("log_every", 0), ("shuffle_buffer", 0),
    ("eval_batch", 0), ("total_steps", 0), ("global_batch", 0), ("micro_batches", 0),
    ("resolution", 0), ("seed", -1), ("eval_every", -5), ("checkpoint_every", -1),
    ("warmup_steps", -1), ("checkpoint", " "), ("task", ""), ("workdir", ""),
])
def test_every_config_field_is_validated_by_name(field, value):
    config = config_lib.get_config("smoke")
    config.unlock()
    config[field] = value
    with pytest.raises(ValueError, match=rf"^config field {field}=") as info:
        config_lib.validate(config, 1)
    assert "global batch" not in str(info.value)


def test_every_config_field_has_a_rule():
    """A new field needs a rule in FIELD_RULES (or a list of allowed values in validate)."""
    choices = {"dtype", "momentum_dtype", "param_sharding", "train_preprocess",
               "eval_preprocess"}
    fields = set(config_lib.get_config("smoke").keys())
    assert fields - set(config_lib.FIELD_RULES) - choices == set()
    for preset in ("smoke", "cifar100-2500-0.01-384", "oxford_iiit_pet-500-0.003-224"):
        config_lib.validate(config_lib.get_config(preset), 1)  # every preset passes
