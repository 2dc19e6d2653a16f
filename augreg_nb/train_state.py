"""The fine-tuning state and its atomic save/restore, so that a killed run resumes exactly.

A :class:`TrainState` holds everything the next step depends on: the step count, the
parameters, the optimiser state (SGD momentum) and the step at which the loss first became
non-finite (0 while training is healthy). The data order is a function of (seed, step), so
the step count is the data position too.

    from augreg_nb.train_state import save_state, restore_state
    save_state(workdir / "state.npz", state, meta={"config": config.to_dict()})
    state, meta = restore_state(workdir / "state.npz", like=state)   # same tree, same shardings

Files are plain ``.npz`` (no pickle): one array per leaf, named by its tree path, plus a JSON
manifest with the dtypes (bfloat16 is stored as its raw 16-bit pattern) and ``meta``. They are
written to a temporary file in the same folder and renamed into place, so a run killed while
saving leaves the previous state intact (and the next save removes its temporary file).
Restoring gives the bit-identical arrays. A damaged file (truncated, overwritten, a folder in
its place) raises :class:`StateFileError`, which names the file and says how to start over;
sizes are checked against the run's own state before anything is read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from augreg_nb import npzfile
from augreg_nb.atomic import atomic_write, sweep_stale_temps

logger = logging.getLogger(__name__)

_MANIFEST = "__manifest__"
#: A manifest (leaf names, dtypes, history) larger than this is not one this module wrote.
MAX_MANIFEST_BYTES = 64 << 20


class StateFileError(ValueError):
    """A training state file cannot be read; the message names it and the way out."""


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
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _path_names(tree) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def save_state(path: str | os.PathLike, state, *, meta: dict | None = None) -> Path:
    """Write ``state`` (any pytree of arrays) atomically to ``path`` (.npz).

    Every process must call it (arrays sharded over hosts are gathered); process 0 writes.
    """
    path = Path(path)
    leaves = jax.tree_util.tree_leaves(state)
    arrays, dtypes = {}, []
    for i, leaf in enumerate(leaves):
        host = to_host(leaf)
        dtypes.append(str(host.dtype))
        if host.dtype == jnp.bfloat16:
            host = host.view(np.uint16)
        arrays[f"leaf_{i:05d}"] = host
    manifest = {"paths": _path_names(state), "dtypes": dtypes, "meta": meta or {}}
    arrays[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    if jax.process_index() == 0:
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        logger.debug("saved training state to %s", path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"save_state:{path}")
    return path


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


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict stored with a state file (cheap: reads the manifest only).

    Raises :class:`StateFileError` when the file is damaged."""
    return _open_state(Path(path))[1].get("meta", {})


def restore_state(path: str | os.PathLike, *, like):
    """Read a state written by :func:`save_state` into the tree structure of ``like``.

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
    if names != manifest["paths"]:
        diff = sorted(set(names) ^ set(manifest["paths"]))[:5]
        raise ValueError(
            f"{path} holds a different training state (differing entries: {diff}); it was "
            "written for another model, task or optimiser setting. Use a new workdir or "
            "delete the old state file."
        )
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
