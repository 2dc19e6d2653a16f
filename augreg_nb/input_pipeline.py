"""Batches for fine-tuning and evaluation, as global ``jax.Array``s sharded over devices.

    from augreg_nb.tasks import get_task
    from augreg_nb import input_pipeline as ip

    task = get_task("oxford_iiit_pet")
    train = ip.make_train_iterator(task, resolution=224, global_batch=512, seed=0)
    batch = next(train)             # {"image": (512, 224, 224, 3) f32, "label": (512,) i32}

    for batch in ip.make_eval_iterator(task, "test", resolution=224, batch_size=512):
        logits = predict(params, batch["image"])          # jitted; padding rows are junk
        # count only rows where batch["mask"] is True

Training data: one stream of global batches, a function of the seed alone: the split's
*encoded* examples (TFDS with file shuffling) are shuffled with the seed (small buffer
memory) and repeated; global batch k is the k-th run of ``global_batch`` of them. Each
process keeps its rows of every global batch (process p: rows p*L .. (p+1)*L - 1, with
L = global_batch / process_count) while they are still encoded, then decodes and augments
only those (``preprocess.train_preprocess``, a stateless seed per example from its position
in the stream), batches and prefetches. So the batches, and the trained weights, do not
depend on how many processes or devices share the work, and a run resumes on any number of
them. Each batch becomes one global array sharded along the batch axis over the mesh
(default: all devices in a 1-D mesh named "data"), so ``jax.jit`` sees the whole global
batch.

Evaluation covers every example of the split exactly once: processes read disjoint
shards, the last batches are padded with zeros and ``mask`` is False on padding rows, and
all processes run the same number of steps (``len(iterator)``).

TensorFlow only runs on the CPU here; accelerators are left to JAX.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from augreg_nb import augment, preprocess
from augreg_nb.preprocess import import_tf
from augreg_nb.tasks import (
    DatasetNotReadyError,
    Task,
    not_ready_message,
    tfds_builder,
)

log = logging.getLogger(__name__)

DATA_AXIS = "data"
#: (root, split, hash of its file list) -> (readable (path, label) pairs, unreadable paths)
_SCANNED: dict[tuple[str, str, int], tuple[tuple, tuple[str, ...]]] = {}


# ----------------------------------------------------------------------------- sources


def _process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def unreadable_images(task: Task, split: str) -> list[str]:
    """Paths of images in a folder task's split that cannot be decoded (scanned once)."""
    return list(_folder_files(task, split)[1])


#: Images with more pixels than this count as unreadable: decoded, 100 megapixels take
#: 300 MB, and a 400 kB PNG can declare 20000 x 20000.
MAX_PIXELS = 100_000_000


def _too_large(path: str) -> bool:
    """True when the image header of ``path`` declares more than :data:`MAX_PIXELS` (read
    without decoding; files that PIL cannot parse are left to the decoder to judge)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        return True
    except Exception:  # noqa: BLE001 - not parsable here; the decoder decides
        return False
    return width * height > MAX_PIXELS


def _folder_files(task: Task, split: str):
    """((path, label), ...) that decode, and the paths that do not; raises on_error='raise'."""
    assert task.folder is not None
    files = task.folder.files[task.split(split)]
    key = (task.folder.root, task.split(split), hash(files))
    if key not in _SCANNED:
        tf = import_tf()
        paths = [p for p, _ in files]
        too_large = {p for p in paths if _too_large(p)}
        if too_large:
            log.warning("%d image(s) in %s (%s split) exceed %d megapixels and count as "
                        "unreadable (decoding them would take gigabytes):\n  %s",
                        len(too_large), task.folder.root, split, MAX_PIXELS // 10**6,
                        "\n  ".join(sorted(too_large)))
            paths = [p for p in paths if p not in too_large]
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string, shape=[len(paths)]))
        ds = ds.map(
            lambda p: (p, tf.shape(preprocess.decode_image(tf.io.read_file(p)))[0]),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).ignore_errors()
        good = {p.decode() for p, _ in ds.as_numpy_iterator()}
        bad = tuple(p for p, _ in files if p not in good)
        _SCANNED[key] = (tuple(f for f in files if f[0] in good), bad)
        if bad and task.folder.on_error == "skip":
            log.warning(
                "skipping %d unreadable image(s) in %s (%s split):\n  %s",
                len(bad), task.folder.root, split, "\n  ".join(bad),
            )
    readable, bad = _SCANNED[key]
    if bad and task.folder.on_error == "raise":
        listing = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        raise ValueError(
            f"{len(bad)} unreadable image(s) in {task.folder.root} ({split} split):\n  "
            f"{listing}\nFix or delete them, or use folder_task(..., on_error='skip') to skip "
            "them."
        )
    return readable, bad


def _tfds_source(task: Task, split: str, *, shuffle_files: bool, seed: int):
    """TFDS examples as {"encoded": bytes, "label": int64}; images stay encoded."""
    import tensorflow_datasets as tfds

    tf = import_tf()
    builder = tfds_builder(task)
    try:
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders={task.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        )
    except AssertionError as err:  # TFDS: "could not find data in ..."
        raise DatasetNotReadyError(not_ready_message(task)) from err
    if task.label_fn is not None:  # the task's rule, run inside tf.data (Task.label_fn)

        def label_of(ex):
            return tf.cast(task.label_fn(ex), tf.int64)

    else:

        def label_of(ex):
            return tf.cast(ex[task.label_key], tf.int64)

    return ds.map(lambda ex: {"encoded": ex[task.image_key], "label": label_of(ex)})


def _decode(task: Task, encoded):
    """Encoded image -> uint8 (H, W, 3), then the task's own pixel rule (``Task.image_fn``)."""
    image = preprocess.decode_image(encoded)
    return image if task.image_fn is None else task.image_fn(image)


def _folder_source(files, *, shuffle: bool, seed: int):
    tf = import_tf()
    paths = tf.constant([p for p, _ in files], tf.string, shape=[len(files)])
    labels = tf.constant([c for _, c in files], tf.int64, shape=[len(files)])
    ds = tf.data.Dataset.from_tensor_slices({"path": paths, "label": labels})
    if shuffle:  # shuffle the (cheap) paths every epoch, read the bytes afterwards
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.map(lambda ex: {"encoded": tf.io.read_file(ex["path"]), "label": ex["label"]})


def num_examples(task: Task, split: str) -> int:
    """Number of examples in a split (folder tasks: readable images only)."""
    if task.folder is not None:
        return len(_folder_files(task, split)[0])
    split_str = task.split(split)
    try:
        count = tfds_builder(task).info.splits[split_str].num_examples
    except (KeyError, ValueError, TypeError):
        count = 0
    if count:
        return int(count)
    # Split sizes unknown to the metadata (e.g. mocked datasets): count the records.
    ds = _tfds_source(task, split_str, shuffle_files=False, seed=0)
    card = int(ds.cardinality())
    if card >= 0:
        return card
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


# ----------------------------------------------------------------------------- tf.data

#: The pre-processing a task without its own gets when none is asked for.
DEFAULT_MODES = {"train": "inception_crop", "eval": "resize_crop"}


def task_preprocess(task: Task, requested: str | None, kind: str = "train") -> str:
    """The pre-processing mode ``kind`` ("train" or "eval") of ``task``: its own
    (``Task.train_preprocess`` / ``eval_preprocess``, chosen so that its labels survive),
    else ``requested``, else :data:`DEFAULT_MODES`. Asking a task with its own mode for
    another one raises with the fix: such a mode would change the task's labels."""
    own = getattr(task, f"{kind}_preprocess")
    if own is None:
        return requested or DEFAULT_MODES[kind]
    if requested is not None and requested != own:
        raise ValueError(
            f"task {task.name!r} {'trains' if kind == 'train' else 'evaluates'} with "
            f"{kind}_preprocess={own!r}, its label-safe pre-processing "
            f"(augreg_nb.vtab.TRAIN_PREPROCESS says why); {requested!r} would cut out, move "
            f"or mirror what its label depends on. Set {kind}_preprocess={own!r} (--set "
            f"{kind}_preprocess={own}).")
    return own



def make_train_dataset(
    task: Task,
    *,
    resolution: int,
    batch_size: int,
    seed: int = 0,
    preprocess_mode: str | None = None,
    shuffle_buffer: int = 50_000,
    start_batch: int = 0,
    aug: str = "none",
):
    """This process's endless training stream of numpy-ready batches (a tf.data.Dataset).

    ``batch_size`` is this process's share of the global batch (global_batch /
    process_count): of global batch k it yields rows p * batch_size .. (p + 1) * batch_size
    - 1 (p: this process), so the processes' batches, concatenated in process order, are
    the global batch of one process with all the devices.

    ``aug`` names an AugReg augmentation setting (index name); its RandAugment is applied
    per image after crop and flip (:func:`augreg_nb.preprocess.train_preprocess`); its
    Mixup acts on whole batches in the training step.

    ``preprocess_mode``: the crop and flip (:func:`task_preprocess`: the task's own when it
    has one, else this, else "inception_crop").

    Elements: {"image": float32 (batch_size, r, r, 3) in [-1, 1], "label": int32}.
    The stream is a function of ``seed``: ``start_batch=k`` yields exactly the batches
    k, k+1, ... of the stream from 0 (for resuming), skipping the first k global batches
    while they are still encoded, so nothing is decoded or augmented twice; other
    processes' rows are dropped encoded too.
    """
    tf = import_tf()
    preprocess_mode = task_preprocess(task, preprocess_mode, "train")
    p, n = _process()
    stream_seed = int(seed) * 1000  # the same stream in every process
    if task.folder is not None:
        files = _folder_files(task, "train")[0]
        if not files:
            raise ValueError(f"no readable training images in {task.folder.root}")
        ds = _folder_source(files, shuffle=True, seed=stream_seed)
    else:
        ds = _tfds_source(task, task.split("train"), shuffle_files=True, seed=stream_seed)
        ds = ds.shuffle(shuffle_buffer, seed=stream_seed, reshuffle_each_iteration=True)
        ds = ds.repeat()

    def pp(index, ex):
        image = _decode(task, ex["encoded"])
        ex_seed = tf.stack([tf.constant(stream_seed % 2**31, tf.int32),
                            tf.cast(index % 2**31, tf.int32)])
        if aug == "none":
            image = preprocess.train_preprocess(image, resolution, seed=ex_seed,
                                                mode=preprocess_mode)
        else:  # RandAugment on the uint8 crop, then the value range (the authors' order)
            image = preprocess.train_crop_flip(image, resolution, seed=ex_seed,
                                               mode=preprocess_mode)
            if image.dtype != tf.uint8:  # "random_crop" resizes in float
                image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            aug_seed = tf.random.experimental.stateless_fold_in(ex_seed, 1)
            image = preprocess.value_range(augment.randaugment_setting(image, aug,
                                                                       seed=aug_seed))
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    global_batch = int(batch_size) * n
    skip = int(start_batch) * global_batch
    ds = ds.skip(skip).enumerate(start=skip)
    if n > 1:  # this process's rows of each global batch, dropped while still encoded
        ds = ds.filter(lambda index, ex: (index % global_batch) // batch_size == p)
    ds = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    task: Task, split: str, *, resolution: int, batch_size: int,
    preprocess_mode: str | None = None,
):
    """This process's shard of ``split``, pre-processed (:func:`task_preprocess`: the
    task's own, else ``preprocess_mode``, else "resize_crop") and batched (last batch
    partial)."""
    tf = import_tf()
    preprocess_mode = task_preprocess(task, preprocess_mode, "eval")
    p, n = _process()
    if task.folder is not None:
        ds = _folder_source(_folder_files(task, split)[0][p::n], shuffle=False, seed=0)
    else:
        ds = _tfds_source(task, task.split(split), shuffle_files=False, seed=0).shard(n, p)

    def pp(ex):
        image = _decode(task, ex["encoded"])
        image = preprocess.eval_preprocess(image, resolution, preprocess_mode)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(pp, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- jax side


def data_mesh(devices=None):
    """A 1-D mesh named "data" over ``devices`` (default: every device of every process)."""
    import jax

    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return jax.sharding.Mesh(devices, (DATA_AXIS,))


def batch_sharding(mesh):
    """Sharding that splits the leading (batch) axis over all axes of ``mesh``."""
    import jax

    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))


def local_batch_size(global_batch: int, mesh) -> int:
    """The rows one process feeds: global_batch / process_count; checks divisibility."""
    import jax

    n_proc = jax.process_count()
    n_local = len(mesh.local_devices)
    if global_batch <= 0 or global_batch % n_proc:
        raise ValueError(
            f"global batch {global_batch} does not split over {n_proc} processes; use a "
            f"multiple of {n_proc * n_local}"
        )
    local = global_batch // n_proc
    if local % n_local:
        raise ValueError(
            f"global batch {global_batch} gives {local} rows per process, which do not split "
            f"over its {n_local} devices; use a multiple of {n_proc * n_local} "
            "(e.g. 512 on 8 devices)"
        )
    return local


def put_batch(batch: dict, mesh) -> dict[str, Any]:
    """The one way a batch becomes global: this process's rows (numpy) -> global
    ``jax.Array``s split along the batch axis over ``mesh``.

    On several hosts each passes its own rows (global batch / process count), in process
    order; arrays that already are global on this mesh pass through unchanged.
    """
    import jax

    sharding = batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        if isinstance(value, jax.Array) and value.sharding == sharding:
            out[key] = value
        else:
            out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value))
    return out


def _prefetched(iterator: Iterator, size: int) -> Iterator:
    """Keep ``size`` batches in flight (device transfers are asynchronous)."""
    queue: collections.deque = collections.deque()
    for item in iterator:
        queue.append(item)
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def make_train_iterator(
    task: Task,
    *,
    resolution: int,
    global_batch: int = 512,
    seed: int = 0,
    mesh=None,
    preprocess_mode: str | None = None,
    shuffle_buffer: int = 50_000,
    prefetch: int = 2,
    start_batch: int = 0,
) -> Iterator[dict[str, Any]]:
    """Endless iterator of global training batches {"image", "label"} sharded over ``mesh``.

    ``start_batch=k`` resumes the seeded stream at its k-th batch (see make_train_dataset).
    """
    mesh = data_mesh() if mesh is None else mesh
    local = local_batch_size(global_batch, mesh)
    ds = make_train_dataset(
        task,
        resolution=resolution,
        batch_size=local,
        seed=seed,
        preprocess_mode=preprocess_mode,
        shuffle_buffer=shuffle_buffer,
        start_batch=start_batch,
    )
    batches = (put_batch(b, mesh) for b in ds.as_numpy_iterator())
    return _prefetched(batches, prefetch)


class EvalIterator:
    """Re-iterable padded, masked evaluation batches; ``len()`` is the number of steps."""

    def __init__(self, task, split, *, resolution, batch_size, mesh, preprocess_mode):
        import jax

        self.mesh = data_mesh() if mesh is None else mesh
        self.global_batch = batch_size
        self.local_batch = local_batch_size(batch_size, self.mesh)
        self.num_examples = num_examples(task, split)
        per_process = math.ceil(self.num_examples / jax.process_count())
        self.num_steps = math.ceil(per_process / self.local_batch)
        self._dataset = make_eval_dataset(
            task, split, resolution=resolution, batch_size=self.local_batch,
            preprocess_mode=preprocess_mode,
        )
        self._image_shape = (resolution, resolution, 3)

    def __len__(self) -> int:
        return self.num_steps

    def _local_batches(self) -> Iterator[dict[str, np.ndarray]]:
        b = self.local_batch
        produced = 0
        for batch in self._dataset.as_numpy_iterator():
            k = len(batch["label"])
            out = {
                "image": np.zeros((b, *self._image_shape), np.float32),
                "label": np.zeros((b,), np.int32),
                "mask": np.arange(b) < k,
            }
            out["image"][:k] = batch["image"]
            out["label"][:k] = batch["label"]
            produced += 1
            if produced > self.num_steps:
                raise RuntimeError(
                    f"the split yielded more than the {self.num_examples} examples its metadata "
                    "announced; the prepared dataset may be stale, prepare it again"
                )
            yield out
        for _ in range(self.num_steps - produced):  # processes with fewer examples pad
            yield {
                "image": np.zeros((b, *self._image_shape), np.float32),
                "label": np.zeros((b,), np.int32),
                "mask": np.zeros((b,), bool),
            }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = (put_batch(x, self.mesh) for x in self._local_batches())
        return _prefetched(batches, 2)


def make_eval_iterator(
    task: Task,
    split: str,
    *,
    resolution: int,
    batch_size: int = 512,
    mesh=None,
    preprocess_mode: str | None = None,
) -> EvalIterator:
    """Padded evaluation batches {"image", "label", "mask"} covering ``split`` exactly once."""
    return EvalIterator(
        task, split, resolution=resolution, batch_size=batch_size, mesh=mesh,
        preprocess_mode=preprocess_mode,
    )
