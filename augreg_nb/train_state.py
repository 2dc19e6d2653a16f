"""The fine-tuning state and its atomic, sharded save/restore, so that a killed run resumes exactly.

A :class:`TrainState` holds everything the next step depends on: the step count, the
parameters, the optimiser state (SGD momentum) and the step at which the loss first became
non-finite (0 while training is healthy). The data order is a function of (seed, step), so
the step count is the data position too.

    from augreg_nb.train_state import save_state, restore_state, read_meta
    save_state(workdir / "state", state, meta={"config": config.to_dict()})  # every process
    state, meta = restore_state(workdir / "state", like=state)   # like's tree and shardings
    read_meta(workdir / "state")["config"]                       # cheap: JSON only

The state is an orbax-checkpoint folder: every process writes the shards of the arrays it
holds (nothing is gathered on one host), and the save is committed atomically, written
under a temporary name and renamed into place once every process has finished, so a run
killed while saving keeps the previous state (orbax removes the unfinished folder at the
next save). Only the newest save is kept, as ``state/<n>/`` (n counts the saves):
``state/<n>/arrays`` holds the leaves (``leaf_00000``, ...; bfloat16 stays bfloat16) and
``state/<n>/meta`` a JSON document with the leaves' tree paths, shapes, dtypes and
checksums and the caller's ``meta``. Restoring places each leaf with the sharding of the
matching leaf of ``like``, so a state saved on N devices resumes on M, and gives the
bit-identical arrays. A damaged state (a truncated, overwritten or missing file; arrays
whose checksums disagree with the ones recorded at the save) raises
:class:`StateFileError`, which names the folder and says how to start over; sizes and dtypes
are checked against the run's own state before any array is read.

States of the earlier single-file format (``state.npz``) are read by
:func:`restore_npz_state` so that runs saved that way resume once; they are saved in the
folder format afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from augreg_nb import npzfile
from augreg_nb.atomic import strict_json, sweep_stale_temps

logger = logging.getLogger(__name__)

_MANIFEST = "__manifest__"
#: A manifest (leaf names, dtypes, history) larger than this is not one this module wrote.
MAX_MANIFEST_BYTES = 64 << 20
#: The items of one save in the state folder.
ARRAYS, META = "arrays", "meta"


class StateFileError(ValueError):
    """A training state cannot be read; the message names it and the way out."""


def _damaged(path: Path, why: str) -> StateFileError:
    return StateFileError(
        f"the training state {path} is damaged ({why}), so the run cannot resume from it. "
        f"Move it away (e.g. `mv {path} {path}.damaged`) or delete it to start the run "
        "over from step 0, or use another workdir."
    )


@flax.struct.dataclass
class TrainState:
    """Step count, parameters, optimiser state, and the first non-finite step (0 = none)."""

    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite_step: jax.Array

    @classmethod
    def create(cls, params, tx) -> TrainState:
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            nonfinite_step=jnp.zeros((), jnp.int32),
        )


def to_host(x) -> np.ndarray:
    """``x`` as one numpy array on this host (gathered from every process when needed)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _path_names(tree) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def _leaf_key(i: int) -> str:
    return f"leaf_{i:05d}"


# ------------------------------------------------------------------ checksums


def _words(x):
    """The bits of ``x`` as uint32 words (one per element), whatever its dtype."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}"))
    return bits.astype(jnp.uint32)


@jax.jit
def _checksums(leaves):
    # Integer sums wrap around modulo 2**32 and are exact in any order, so the value does
    # not depend on how an array is sharded: a state saved on N devices checks on M.
    def one(x):
        w = _words(x)
        return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * w, dtype=jnp.uint32)])

    return [one(x) for x in leaves]


def checksums(leaves) -> list[list[int]]:
    """Two order-independent 32-bit sums of the bits of each array (sharded or not)."""
    sums = _checksums(list(leaves))
    return [[int(v) for v in (to_host(c) if not c.is_fully_replicated else np.asarray(c))]
            for c in sums]


# ------------------------------------------------------------------ the state folder


def _manager(directory: Path, *, saving: bool):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=saving, cleanup_tmp_directories=saving,
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options,
                                 item_names=(ARRAYS, META))


def saved(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a committed save (cheap: lists the folder)."""
    return _latest(Path(directory)) is not None


def _latest(directory: Path) -> int | None:
    """The newest committed save in ``directory`` (temporary folders of an unfinished save
    carry a suffix and do not count), or None."""
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]
    return max(steps) if steps else None


def save_state(directory: str | os.PathLike, state, *, meta: dict | None = None) -> Path:
    """Save ``state`` (any pytree of arrays) into the folder ``directory``, atomically.

    Every process must call it with its part of the same global arrays; each writes the
    shards it holds, process 0 the JSON. Returns the folder of the new save; older ones are
    removed once it is committed.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    leaves = jax.tree_util.tree_leaves(state)
    manifest = {
        "paths": _path_names(state),
        "shapes": [list(np.shape(x)) for x in leaves],
        "dtypes": [str(x.dtype) for x in leaves],
        "checksums": checksums(leaves),
        "meta": strict_json(meta or {}),  # strict JSON: NaN as null
    }
    arrays = {_leaf_key(i): x for i, x in enumerate(leaves)}
    before = _latest(directory)
    try:
        with _quiet_failures(), _manager(directory, saving=True) as manager:
            number = (manager.latest_step() or 0) + 1
            manager.save(number, args=ocp.args.Composite(**{
                ARRAYS: ocp.args.StandardSave(arrays), META: ocp.args.JsonSave(manifest)}))
            manager.wait_until_finished()
    except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many kinds
        logger.debug("saving %s failed", directory, exc_info=True)
        removed = remove_unfinished(directory)
        raise StateSaveError(_save_failed(directory, before, err, removed)) from None
    logger.debug("saved training state to %s/%d", directory, number)
    return directory / str(number)


class _Demote(logging.Filter):
    """Turns a library's error records into debug records (a failure is reported once, by
    the exception the caller gets)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logger.isEnabledFor(logging.DEBUG)
        return True


@contextlib.contextmanager
def _quiet_failures():
    """While saving: orbax's worker threads that fail (a full disk) print their tracebacks
    and log errors on their own; send those to the debug log instead, so that the one
    message of :class:`StateSaveError` is what the user sees."""
    import threading

    hook = threading.excepthook

    def to_debug(args):
        logger.debug("a thread of the save failed: %s", args.exc_value,
                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    demote = _Demote()
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    threading.excepthook = to_debug
    for lg in loggers:
        lg.addFilter(demote)
    failed = False
    try:
        with _stderr_captured() as captured:
            try:
                yield
            except BaseException:
                failed = True
                raise
    finally:
        threading.excepthook = hook
        for lg in loggers:
            lg.removeFilter(demote)
        text = captured() if "captured" in locals() else ""
        if text and failed:  # tracebacks printed by tensorstore's callbacks as the save failed
            logger.debug("output of the failed save:\n%s", text)
        elif text:
            sys.stderr.write(text)


@contextlib.contextmanager
def _stderr_captured():
    """Send what is written to file descriptor 2 (also from C++ threads) to a temporary file
    for the block; yields a function that returns it."""
    import tempfile

    sys.stderr.flush()
    try:
        saved_fd = os.dup(2)
    except OSError:  # no stderr to capture
        yield lambda: ""
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        text = ""
        try:
            yield lambda: text
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")


class StateSaveError(RuntimeError):
    """A save of the training state failed; the previous save (if any) is kept."""


#: Suffix orbax gives a save until it is committed.
_TMP_MARK = ".orbax-checkpoint-tmp"


def remove_unfinished(directory: Path) -> list[str]:
    """Remove the folders of unfinished saves in ``directory`` (orbax's temporary names);
    return their names. A committed save is never touched."""
    import shutil

    removed = []
    try:
        entries = list(Path(directory).iterdir()) if Path(directory).is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        if _TMP_MARK in entry.name:
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry.name)
    return removed


def _save_failed(directory: Path, before: int | None, err: Exception,
                 removed: list[str]) -> str:
    text = f"{type(err).__name__}: {_first_line(err)}"
    full = any(s in text for s in ("No space left", "ENOSPC", "RESOURCE_EXHAUSTED",
                                   "Disk quota"))
    denied = any(s in text for s in ("Permission denied", "Read-only file system",
                                     "PERMISSION_DENIED", "EACCES", "EROFS"))
    why = ("the disk is full" if full else "the folder is not writable" if denied
           else f"{_first_line(err)[:200]}")
    kept = (f"the last complete save ({directory / str(before)}) is kept"
            if before is not None else "no earlier save exists")
    fix = ("free some space" if full else "make it writable or use another workdir"
           if denied else "fix the cause")
    cleaned = " (its unfinished files were removed)" if removed else ""
    return (f"saving the training state to {directory} failed: {why}{cleaned}; {kept}. "
            f"{fix[0].upper()}{fix[1:]}, then run the same command again to resume.")


def _read_manifest(directory: Path) -> tuple[int, dict]:
    if directory.exists() and not directory.is_dir():
        raise _damaged(directory, "it is a file, not a folder")
    number = _latest(directory)
    if number is None:
        raise _damaged(directory, "it holds no complete save")
    path = directory / str(number) / META / "metadata"
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise _damaged(directory, f"{path.relative_to(directory)} is missing") from None
    except OSError as err:
        raise _damaged(directory, f"unreadable: {err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _damaged(directory, f"its metadata is not valid JSON: {err}") from None
    keys = ("paths", "shapes", "dtypes", "checksums")
    ok = (isinstance(manifest, dict) and all(isinstance(manifest.get(k), list) for k in keys)
          and len({len(manifest[k]) for k in keys}) == 1
          and isinstance(manifest.get("meta", {}), dict))
    if not ok:
        raise _damaged(directory, "its metadata lacks the leaf names, shapes, dtypes or "
                       "checksums")
    return number, manifest


def read_meta(directory: str | os.PathLike) -> dict:
    """The ``meta`` stored with the newest save in ``directory`` (reads its JSON only).

    Raises :class:`StateFileError` when the folder is damaged."""
    return _read_manifest(Path(directory))[1].get("meta", {})


def _same_entries(where: Path, names: list[str], stored: list[str]) -> None:
    """Refuse a saved state whose entries are not those of the state being resumed."""
    if names != stored:
        diff = sorted(set(names) ^ set(stored))[:5]
        raise ValueError(
            f"{where} holds a different training state (differing entries: {diff}); it was "
            "written for another model, task or optimiser setting. Use a new workdir or "
            "delete the old state."
        )


def _check_like(where: Path, manifest: dict, like) -> None:
    names = _path_names(like)
    _same_entries(where, names, manifest["paths"])
    for name, shape, dtype, ref in zip(names, manifest["shapes"], manifest["dtypes"],
                                       jax.tree_util.tree_leaves(like), strict=True):
        ref_shape, ref_dtype = list(np.shape(ref)), str(getattr(ref, "dtype", dtype))
        if shape != ref_shape or dtype != ref_dtype:
            raise ValueError(f"{where}: {name} is {dtype}{shape} but this run needs "
                             f"{ref_dtype}{ref_shape}; use a new workdir.")


def restore_state(directory: str | os.PathLike, *, like):
    """Read the newest save in ``directory`` into the tree structure of ``like``.

    Each leaf takes the sharding of the matching leaf of ``like`` (arrays or
    ``jax.ShapeDtypeStruct``s; without a sharding, a leaf lands on the first device).
    Returns ``(state, meta)``. Raises ValueError naming the first mismatching leaf when the
    folder holds a different tree (another model or optimiser), and :class:`StateFileError`
    when it is damaged. Every process must call it.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory)
    number, manifest = _read_manifest(directory)
    _check_like(directory, manifest, like)
    template, treedef = jax.tree_util.tree_flatten(like)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {
        _leaf_key(i): jax.ShapeDtypeStruct(np.shape(ref), jnp.dtype(ref.dtype),
                                           sharding=getattr(ref, "sharding", None) or default)
        for i, ref in enumerate(template)}
    try:
        with _manager(directory, saving=False) as manager:
            out = manager.restore(number, args=ocp.args.Composite(**{
                ARRAYS: ocp.args.StandardRestore(abstract)}))
        restored = out[ARRAYS]
        leaves = [restored[_leaf_key(i)] for i in range(len(template))]
    except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many kinds
        logger.debug("restoring %s failed", directory, exc_info=True)
        raise _damaged(directory, f"its arrays cannot be read: {_first_line(err)}") from None
    if checksums(leaves) != manifest["checksums"]:
        bad = [name for name, got, want in zip(manifest["paths"], checksums(leaves),
                                               manifest["checksums"], strict=True)
               if got != want]
        raise _damaged(directory, f"{len(bad)} array(s) differ from what was saved, "
                       f"e.g. {bad[0]}")
    return jax.tree_util.tree_unflatten(treedef, leaves), manifest.get("meta", {})


def _first_line(err: Exception, limit: int = 160) -> str:
    """The readable head of an error's first line (TensorStore's spec dumps cut off)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    for cut in (" See full TensorStore details", " [tensorstore_spec", "; tensorstore_spec"):
        line = line.split(cut)[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ------------------------------------------------------------------ the earlier format


def _why(path: Path, err: Exception) -> str:
    return str(err).removeprefix(f"{path}: ").removeprefix(f"{path} ").removeprefix("is ")


def _open_state(path: Path) -> tuple[dict[str, npzfile.ArrayHeader], dict]:
    """The declared arrays and the manifest of a state file, or :class:`StateFileError`."""
    if path.is_dir():
        raise _damaged(path, "it is a folder, not a file")
    try:
        headers = npzfile.read_headers(path)
    except npzfile.NpzError as err:
        raise _damaged(path, _why(path, err)) from None
    except OSError as err:
        raise _damaged(path, f"unreadable: {err.strerror or err}") from None
    head = headers.get(_MANIFEST)
    if head is None or head.dtype != np.uint8 or len(head.shape) != 1:
        raise _damaged(path, "no manifest of its arrays")
    if head.nbytes > MAX_MANIFEST_BYTES:
        raise _damaged(path, f"a manifest of {head.nbytes:,} bytes")
    try:
        raw = npzfile.read_arrays(path, headers, [_MANIFEST])[_MANIFEST]
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except npzfile.NpzError as err:
        raise _damaged(path, _why(path, err)) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _damaged(path, f"its manifest is not valid JSON: {err}") from None
    ok = (isinstance(manifest, dict) and isinstance(manifest.get("paths"), list)
          and isinstance(manifest.get("dtypes"), list)
          and len(manifest["paths"]) == len(manifest["dtypes"])
          and isinstance(manifest.get("meta", {}), dict))
    if not ok:
        raise _damaged(path, "its manifest lacks the leaf names, dtypes or metadata")
    missing = [f"leaf_{i:05d}" for i in range(len(manifest["paths"]))
               if f"leaf_{i:05d}" not in headers]
    if missing:
        raise _damaged(path, f"{len(missing)} array(s) missing, e.g. {missing[0]}")
    return headers, manifest


def read_npz_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict stored with a state file (cheap: reads the manifest only).

    Raises :class:`StateFileError` when the file is damaged."""
    return _open_state(Path(path))[1].get("meta", {})


def restore_npz_state(path: str | os.PathLike, *, like):
    """Read a state file of the earlier single-file format into the tree structure of ``like``.

    Each leaf takes the sharding of the matching leaf of ``like`` (or stays a numpy array
    where ``like`` has no sharding). Returns ``(state, meta)``. Raises ValueError naming the
    first mismatching leaf when the file holds a different tree (another model or optimiser),
    and :class:`StateFileError` when it is damaged.
    """
    path = Path(path)
    sweep_stale_temps(path.parent)  # temporary files of a run killed while saving
    headers, manifest = _open_state(path)
    template, treedef = jax.tree_util.tree_flatten(like)
    names = _path_names(like)
    _same_entries(path, names, manifest["paths"])
    keys = [f"leaf_{i:05d}" for i in range(len(names))]
    for name, key, dtype, ref in zip(names, keys, manifest["dtypes"], template, strict=True):
        head = headers[key]
        stored = "bfloat16" if head.dtype == np.uint16 and dtype == "bfloat16" else head.dtype
        ref_shape = tuple(getattr(ref, "shape", ()))
        if head.shape != ref_shape or str(stored) != str(getattr(ref, "dtype", stored)):
            raise ValueError(
                f"{path}: {name} is {stored}{list(head.shape)} but this run needs "
                f"{getattr(ref, 'dtype', '?')}{list(ref_shape)}; use a new workdir."
            )
    try:
        stored = npzfile.read_arrays(path, headers, keys)
    except npzfile.NpzError as err:
        raise _damaged(path, _why(path, err)) from None
    leaves = []
    for key, dtype, ref in zip(keys, manifest["dtypes"], template, strict=True):
        arr = stored[key]
        if dtype == "bfloat16":
            arr = arr.view(jnp.bfloat16)
        sharding = getattr(ref, "sharding", None)
        if sharding is not None:
            arr = jax.make_array_from_callback(arr.shape, sharding, lambda idx, a=arr: a[idx])
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(treedef, leaves), manifest.get("meta", {})
