"""What a task is: the ``Task`` record and its parts, and the labelling rules tasks share.

``augreg_nb.tasks`` holds the registry of named tasks and the builders (``tfds_task``,
``folder_task``); ``augreg_nb.vtab`` defines the VTAB tasks. Both build ``Task`` records
from here. A task carries callables, not switches: ``label_fn`` computes a label from a TFDS
example (KITTI-distance: :class:`ClosestVehicleDistance`), ``image_fn`` fixes decoded pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from augreg_nb.download import cache_dir
from augreg_nb.preprocess import import_tf
from augreg_nb.protocol import LEARNING_RATES, warmup_steps

#: The names ``Task.split`` understands besides the canonical train/val/test.
SPLIT_ALIASES = {"validation": "val", "minival": "val", "eval": "test"}
#: The TFDS version of ``kitti`` that the VTAB task loads (task_adaptation's
#: ``data/kitti.py`` builds "kitti:3.1.0"); TFDS's default is newer.
KITTI_TFDS_VERSION = "3.1.0"
KITTI_DISTANCE_NAMES = ("0-8 m", "8-20 m", "20-999 m", "no vehicle")


class DatasetNotReadyError(RuntimeError):
    """A dataset is missing, unprepared or needs a manual download; the message says how."""


@dataclasses.dataclass(frozen=True)
class ManualDownload:
    """What a user must fetch by hand before TFDS can prepare a dataset."""

    files: tuple[str, ...]  # names that must be in the manual dir (files or folders)
    url: str  # where to get them
    note: str = ""  # e.g. "extract the .rar so that NWPU-RESISC45/ is in the manual dir"


@dataclasses.dataclass(frozen=True)
class FolderSplits:
    """Image files of a folder dataset, split into train/val/test (built by folder_task)."""

    root: str
    class_names: tuple[str, ...]
    files: Mapping[str, tuple[tuple[str, int], ...]] = dataclasses.field(repr=False)
    # split -> ((path, label), ...)
    on_error: str = "skip"  # what to do with unreadable images: "skip" or "raise"
    layout: str = "flat"  # "flat" (root/class/*) or "split-folders" (root/train/class/*)


@dataclasses.dataclass(frozen=True)
class Task:
    """One image classification task and the paper's sweep for it."""

    name: str  # short name (registry key, TFDS name or folder name)
    splits: Mapping[str, str]  # "train"/"val"/"test" -> TFDS split string or folder split
    num_classes: int
    tfds_name: str | None = None  # TFDS dataset ("name" or "name:version"); None for folders
    data_dir: str | None = None  # TFDS data dir; None uses TFDS_DATA_DIR / ~/tensorflow_datasets
    class_names: tuple[str, ...] | None = None  # None: read from the TFDS label feature
    sweep_steps: tuple[int, ...] = (500, 2500)  # run lengths of the paper's sweep
    learning_rates: tuple[float, ...] = LEARNING_RATES
    image_key: str = "image"
    label_key: str = "label"
    # Label computed from the TFDS example instead of read from label_key: a callable
    # (example dict of tensors -> int64 label tensor, run inside tf.data), e.g.
    # ClosestVehicleDistance() for KITTI-distance; see augreg_nb.vtab for more.
    label_fn: Callable[[Mapping[str, Any]], Any] | None = None
    # Applied to each decoded uint8 (H, W, 3) image, e.g. dSprites' 0/1 pixels -> 0/255.
    image_fn: Callable[[Any], Any] | None = None
    manual: ManualDownload | None = None
    # The task's own pre-processing by name (augreg_nb.preprocess modes), when the config's
    # generic one would change its labels (a crop that cuts out what a VTAB label counts or
    # locates, a flip where left/right is in the label); None: the config's. The input
    # pipeline refuses another one with the fix (input_pipeline.task_preprocess).
    train_preprocess: str | None = None
    eval_preprocess: str | None = None
    folder: FolderSplits | None = dataclasses.field(default=None, repr=False)
    description: str = ""
    # How to make the data when the task ships it (e.g. the digits smoke task writes its
    # arrays as a TFDS dataset): build(task), idempotent, called before the data is read.
    # Such a task keeps its data in <augreg_nb cache>/tfds unless data_dir is set.
    build: Callable[[Task], None] | None = dataclasses.field(default=None, repr=False)

    @property
    def tfds_dir(self) -> str | None:
        """The TFDS data dir the task reads (None: TFDS_DATA_DIR or ~/tensorflow_datasets)."""
        if self.data_dir is None and self.build is not None:
            return str(cache_dir() / "tfds")
        return self.data_dir

    @property
    def sweep(self) -> tuple[tuple[int, int], ...]:
        """((total_steps, warmup_steps), ...) of the paper's sweep for this task."""
        return tuple((n, warmup_steps(n)) for n in self.sweep_steps)

    def split(self, name: str) -> str:
        """The split string for "train", "val" or "test" (or a raw TFDS split string)."""
        key = SPLIT_ALIASES.get(name, name)
        if key in self.splits:
            return self.splits[key]
        if self.folder is None and self.tfds_name is not None and name:
            return name  # a raw TFDS split such as "test[:100]"
        raise ValueError(
            f"task {self.name!r} has no split {name!r}; use one of {sorted(self.splits)}"
        )

    @functools.cached_property
    def label_names(self) -> tuple[str, ...]:
        """Names of the classes, index = label (from the TFDS features when not given)."""
        if self.class_names is not None:
            return tuple(self.class_names)
        feature = tfds_builder(self).info.features[self.label_key]
        names = getattr(feature, "names", None)
        if not names:
            return tuple(str(i) for i in range(self.num_classes))
        return tuple(names)


#: Resisc45's manual download (the paper's task and VTAB's use the same files).
RESISC45_MANUAL = ManualDownload(
    files=("NWPU-RESISC45",),
    url="https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs (NWPU-RESISC45.rar)",
    note="extract NWPU-RESISC45.rar so that the folder NWPU-RESISC45/ (45 class "
    "folders of .jpg) is inside the manual dir",
)


def tfds_home(data_dir: str | None) -> str:
    """The TFDS data folder: ``data_dir``, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return str(data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def tfds_builder(task: Task):
    """The TFDS builder of ``task``; raises DatasetNotReadyError for an unknown dataset."""
    if task.tfds_name is None:
        raise ValueError(f"task {task.name!r} is an image folder, not a TFDS dataset")
    if task.build is not None:  # a task that ships its data writes it on first use
        task.build(task)
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(task.tfds_name, data_dir=task.tfds_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DatasetNotReadyError(
            f"TFDS dataset {task.tfds_name!r} is neither a registered TFDS dataset nor prepared "
            f"in {tfds_home(task.tfds_dir)}. Check the name (see `tfds.list_builders()`) or "
            f"pass data_dir= where it was prepared. ({err})"
        ) from err


def kitti_distance_label(objects: Mapping[str, Any]):
    """KITTI-distance label (VTAB ``closest_vehicle_distance``) from TFDS ``kitti`` objects.

    Among objects of type Car, Van or Truck (labels 0, 1, 2) take the smallest depth
    ``location[:, 2]`` in metres, 1000 when there is none. Label 0: d <= 8, 1: 8 < d <= 20,
    2: 20 < d <= 999, 3: otherwise (no vehicle). Works eagerly and inside tf.data.
    """
    tf = import_tf()
    types = tf.convert_to_tensor(objects["type"])
    depth = tf.reshape(tf.cast(tf.convert_to_tensor(objects["location"]), tf.float32), [-1, 3])
    vehicle_depth = tf.boolean_mask(depth[:, 2], types < 3)
    dist = tf.reduce_min(tf.concat([vehicle_depth, tf.constant([1000.0])], axis=0))
    thresholds = tf.constant([8.0, 20.0, 999.0])
    return tf.reduce_sum(tf.cast(thresholds < dist, tf.int64))


@dataclasses.dataclass(frozen=True)
class ClosestVehicleDistance:
    """KITTI-distance: the bin of the nearest Car/Van/Truck (:func:`kitti_distance_label`)."""

    def __call__(self, example: Mapping[str, Any]):
        return kitti_distance_label(example["objects"])
