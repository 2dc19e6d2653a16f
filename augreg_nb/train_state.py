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
saving leaves the previous state intact. Restoring gives the bit-identical arrays.
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

logger = logging.getLogger(__name__)

_MANIFEST = "__manifest__"


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


def _to_host(x) -> np.ndarray:
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
        host = _to_host(leaf)
        dtypes.append(str(host.dtype))
        if host.dtype == jnp.bfloat16:
            host = host.view(np.uint16)
        arrays[f"leaf_{i:05d}"] = host
    manifest = {"paths": _path_names(state), "dtypes": dtypes, "meta": meta or {}}
    arrays[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        logger.debug("saved training state to %s", path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"save_state:{path}")
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict stored with a state file (cheap: reads the manifest only)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data[_MANIFEST].tobytes().decode())["meta"]


def restore_state(path: str | os.PathLike, *, like):
    """Read a state written by :func:`save_state` into the tree structure of ``like``.

    Each leaf takes the sharding of the matching leaf of ``like`` (or stays a numpy array
    where ``like`` has no sharding). Returns ``(state, meta)``. Raises ValueError naming the
    first mismatching leaf when the file holds a different tree (another model or optimiser).
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        manifest = json.loads(data[_MANIFEST].tobytes().decode())
        stored = [data[f"leaf_{i:05d}"] for i in range(len(manifest["paths"]))]
    template, treedef = jax.tree_util.tree_flatten(like)
    names = _path_names(like)
    if names != manifest["paths"]:
        diff = sorted(set(names) ^ set(manifest["paths"]))[:5]
        raise ValueError(
            f"{path} holds a different training state (differing entries: {diff}); it was "
            "written for another model, task or optimiser setting. Use a new workdir or "
            "delete the old state file."
        )
    leaves = []
    for name, arr, dtype, ref in zip(names, stored, manifest["dtypes"], template, strict=True):
        if dtype == "bfloat16":
            arr = arr.view(jnp.bfloat16)
        ref_shape = tuple(getattr(ref, "shape", ()))
        if arr.shape != ref_shape or str(arr.dtype) != str(getattr(ref, "dtype", arr.dtype)):
            raise ValueError(
                f"{path}: {name} is {arr.dtype}{list(arr.shape)} but this run needs "
                f"{getattr(ref, 'dtype', '?')}{list(ref_shape)}; use a new workdir."
            )
        sharding = getattr(ref, "sharding", None)
        if sharding is not None:
            arr = jax.make_array_from_callback(arr.shape, sharding, lambda idx, a=arr: a[idx])
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(treedef, leaves), manifest["meta"]
