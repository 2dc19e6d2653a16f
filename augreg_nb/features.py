"""Pre-logits features of a checkpoint on a task's split, computed once and cached on disk.

    from augreg_nb import features
    x, y = features.extract("Ti/16", params, task, "train", resolution=224)
    path = features.cache_path("Ti_16-i21k-...", task, "test", 224)
    features.write(path, x, y, meta); features.read(path, meta)   # None when absent or stale

The representation is the one big_vision's few-shot evaluator reads (``pre_logits``): the
class token after the encoder's final LayerNorm, i.e. the input of the classification head.
It is taken from the unchanged model (``augreg_nb.models``) by intercepting the head's call,
so the head's parameters are not even needed. Images go through
:func:`augreg_nb.fewshot.fewshot_preprocess` in a ``tf.data`` pipeline over the task's split
(paper task, VTAB task, TFDS dataset or folder of images, all as ``augreg_nb.tasks`` defines
them), in the split's order, with the last batch padded to the batch size so one compiled
forward pass serves every batch.

Cache: ``<cache>/features/<checkpoint>/<task>/<split>-res_<r>-<fingerprint>.npz`` holds
``features`` (float32, N x D), ``labels`` (int32, N) and ``meta`` (JSON: checkpoint, model,
task, split string, resolution, pre-processing, examples, the seconds the extraction took
here; for a folder task a hash of its file list, for a local checkpoint file its size and
modification time). Files are written
atomically (``augreg_nb.atomic``), so a killed run leaves either the whole file or none; a
file whose meta or shapes disagree with what is asked for, or that cannot be read, is
ignored and computed again (a warning says why).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from augreg_nb.atomic import atomic_write
from augreg_nb.download import cache_dir
from augreg_nb.fewshot import fewshot_preprocess, pipeline_text
from augreg_nb.inference import matmul_dtype_name
from augreg_nb.names import safe_folder_name
from augreg_nb.task_types import Task

logger = logging.getLogger(__name__)

#: Folder under the cache.
FEATURES_DIR = "features"
#: Images per forward pass by default.
DEFAULT_BATCH = 64


class Stopped(RuntimeError):
    """``should_stop()`` said stop during an extraction; nothing of it was cached."""


def task_fingerprint(task: Task, split: str) -> dict[str, Any]:
    """What identifies a split's images: the task, its TFDS dataset (name, version where
    pinned, data_dir when not the default) and split string, or for a folder task the hash
    of its (path, label) list."""
    out: dict[str, Any] = {"task": task.name, "split": split, "split_str": task.split(split)}
    if task.folder is not None:
        files = task.folder.files[task.split(split)]
        digest = hashlib.sha256(json.dumps([[str(p), int(c)] for p, c in files]).encode())
        out.update(folder=str(task.folder.root), files=len(files),
                   files_sha256=digest.hexdigest())
    else:
        out.update(tfds=task.tfds_name, data_dir=task.data_dir)
    return out


def checkpoint_fingerprint(checkpoint: str) -> dict[str, Any]:
    """A checkpoint name as given; a local file also by its size and modification time
    (published names are immutable files, a local file may be replaced)."""
    out: dict[str, Any] = {"checkpoint": str(checkpoint)}
    path = Path(str(checkpoint)).expanduser()
    if path.is_file():
        st = path.stat()
        out.update(path=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    return out


def describe(checkpoint: str, task: Task, split: str, resolution: int,
             matmul_dtype: Any = None) -> dict[str, Any]:
    """The meta a cached file must carry to be used for these arguments. Features computed
    with bfloat16 matrix multiplies carry ``"matmul_dtype": "bfloat16"`` and are never
    mixed up with float32 ones."""
    meta = {**checkpoint_fingerprint(checkpoint), **task_fingerprint(task, split),
            "resolution": int(resolution), "preprocess": pipeline_text(int(resolution)),
            "representation": "pre_logits"}
    if matmul_dtype_name(matmul_dtype) is not None:
        meta["matmul_dtype"] = "bfloat16"
    return meta


def cache_path(checkpoint: str, task: Task, split: str, resolution: int,
               root: str | os.PathLike | None = None, matmul_dtype: Any = None) -> Path:
    """Where the features of these arguments live (see the module docstring)."""
    meta = describe(checkpoint, task, split, resolution, matmul_dtype)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(root) if root is not None else cache_dir() / FEATURES_DIR
    name = Path(str(checkpoint)).name if Path(str(checkpoint)).is_file() else str(checkpoint)
    return (base / safe_folder_name(name.removesuffix(".npz"))
            / safe_folder_name(str(task.name))
            / f"{split}-res_{int(resolution)}-{digest}.npz")


def read(path: str | os.PathLike, meta: dict[str, Any]
         ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(features, labels, stored meta) of a cached file made for ``meta``; None when there
    is none or it does not fit (then it is computed again)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = json.loads(str(f["meta"]))
            x, y = f["features"], f["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        logger.warning("ignoring unreadable cached features %s (%s); computing them again",
                       path, err)
        return None
    wanted = {k: v for k, v in meta.items() if k != "examples"}
    if {k: stored.get(k) for k in wanted} != wanted:
        logger.warning("cached features %s were made for other inputs; computing again", path)
        return None
    if (x.ndim != 2 or y.shape != (len(x),) or stored.get("examples") != len(x)
            or x.dtype != np.float32 or not np.isfinite(x).all()):
        logger.warning("cached features %s are damaged; computing them again", path)
        return None
    return x, y.astype(np.int64), stored


def write(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> Path:
    """Store features atomically with their meta (``examples`` added; the caller may add
    more, e.g. the model and the extraction's ``seconds``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({**meta, "examples": len(x)}, sort_keys=True)
    with atomic_write(path) as f:
        np.savez(f, features=np.asarray(x, np.float32), labels=np.asarray(y, np.int32),
                 meta=np.array(payload))
    return path


@functools.lru_cache(maxsize=16)
def pre_logits_fn(model_name: str, matmul_dtype: str | None = None):
    """A jitted ``f(params, images) -> (N, hidden)`` pre-logits of ``model_name``
    (``matmul_dtype``: None for float32, or "bfloat16", see ``models.create_model``)."""
    import flax.linen as nn
    import jax

    from augreg_nb import compile_cache
    from augreg_nb.models import create_model, forward_chunk, in_chunks

    compile_cache.enable()
    model = create_model(model_name, 1, matmul_dtype=matmul_dtype)

    def head_input(next_fun, args, kwargs, context):
        if context.module.name == "head" and context.method_name == "__call__":
            return args[0]  # the head's input: the pre-logits
        return next_fun(*args, **kwargs)

    def apply(params, images):
        with nn.intercept_methods(head_input):
            return model.apply({"params": params}, images, train=False)

    # On CPUs, batches run in chunks of 16 images (models.in_chunks: faster there).
    return jax.jit(in_chunks(apply, forward_chunk()))


def without_head(params: dict) -> dict:
    """The parameter tree minus the classification head (not used for features)."""
    return {k: v for k, v in params.items() if k != "head"}


def make_dataset(task: Task, split: str, *, resolution: int, batch_size: int):
    """The split in order, pre-processed as the few-shot evaluator does, batched."""
    from augreg_nb import input_pipeline as ip
    from augreg_nb.preprocess import import_tf

    tf = import_tf()
    if task.folder is not None:
        files = ip._folder_files(task, split)[0]
        if not files:
            raise ValueError(f"no readable images in the {split} split of {task.folder.root}")
        ds = ip._folder_source(files, shuffle=False, seed=0)
    else:
        ds = ip._tfds_source(task, task.split(split), shuffle_files=False, seed=0)

    def pp(ex):
        image = fewshot_preprocess(ip._decode(task, ex["encoded"]), resolution)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def extract(model_name: str, params: dict, task: Task, split: str, *, resolution: int,
            batch_size: int = DEFAULT_BATCH, should_stop: Callable[[], bool] | None = None,
            on_batch: Callable[[int], None] | None = None, matmul_dtype: Any = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features (N, D) float32 and labels (N,) of every example of ``split``.

    ``on_batch(n)`` is called after each batch with the number of its examples;
    ``should_stop()`` is asked before each batch and raises :class:`Stopped`.
    ``matmul_dtype="bfloat16"``: the opt-in faster forward pass (``models.create_model``).
    """
    fn = pre_logits_fn(model_name, matmul_dtype_name(matmul_dtype))
    params = without_head(params)
    feats, labels = [], []
    for batch in make_dataset(task, split, resolution=resolution,
                              batch_size=batch_size).as_numpy_iterator():
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped during the {split} split of {task.name}")
        k = len(batch["label"])
        images = batch["image"]
        if k < batch_size:  # pad: one compiled shape for every batch
            images = np.concatenate(
                [images, np.zeros((batch_size - k, *images.shape[1:]), images.dtype)])
        out = np.asarray(fn(params, images))[:k]
        feats.append(out.astype(np.float32))
        labels.append(batch["label"])
        if on_batch is not None:
            on_batch(k)
    if not feats:
        raise ValueError(f"the {split} split of {task.name} is empty")
    x = np.concatenate(feats)
    if not np.isfinite(x).all():
        raise ValueError(f"the features of {task.name} ({split}) hold NaN or infinite values; "
                         "the checkpoint is damaged")
    return x, np.concatenate(labels).astype(np.int64)
