"""The ``digits`` smoke task: 1,797 handwritten digits shipped with the package, offline.

The smoke preset (``augreg-nb finetune --preset smoke``) fine-tunes a tiny ViT on them in
seconds on a CPU: it proves the plumbing (data, training, evaluation, export), not transfer.
The arrays (``data/digits/digits.npz``, see ``data/SOURCES.md``) are the 8x8 grey images of
the UCI handwritten digits (values 0..16); on first use they are written as a prepared TFDS
dataset, so the task goes through the same input pipeline as every other task::

    from augreg_nb.tasks import get_task
    task = get_task("digits")                  # registered like the paper's tasks
    task.num_classes, task.split("val")        # 10, 'train[80%:90%]'
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from augreg_nb.resources import data_path
from augreg_nb.task_types import Task

DIGITS_NAME = "augreg_digits"
#: Side of the stored images: the 8x8 digits upscaled (nearest) by this factor / 8.
DEFAULT_SIZE = 32


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) uint8 in 0..16, labels (1797,) uint8) from the shipped file."""
    with np.load(data_path("digits", "digits.npz"), allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    if images.shape != (1797, 8, 8) or labels.shape != (1797,) or images.max() > 16:
        raise ValueError("the shipped digits file is damaged; reinstall augreg_nb")
    return images, labels


def build_digits(task: Task) -> None:
    """Write the digits as the prepared TFDS dataset ``task.tfds_name`` (once).

    The grey images are scaled to 0..255, upscaled (nearest) to the task's size, made RGB
    and put in a fixed shuffled order; the task's splits cut that order 80/10/10.
    """
    import tensorflow_datasets as tfds

    data_dir = Path(task.tfds_dir)
    if (data_dir / task.tfds_name / "1.0.0" / "dataset_info.json").is_file():
        return
    size = int(task.tfds_name.removeprefix(DIGITS_NAME))
    images, labels = load_digits_arrays()
    order = np.random.default_rng(0).permutation(len(labels))
    grey = (images[order].astype(np.float64) * (255.0 / 16.0)).round().astype(np.uint8)
    scale = max(1, size // 8)
    big = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    examples = [
        {"image": np.repeat(img[..., None], 3, axis=-1), "label": int(t)}
        for img, t in zip(big, labels[order], strict=True)
    ]
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(8 * scale, 8 * scale, 3)),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    tfds.dataset_builders.store_as_tfds_dataset(
        name=task.tfds_name,
        version="1.0.0",
        features=features,
        split_datasets={"train": [(f"train{i}", ex) for i, ex in enumerate(examples)]},
        data_dir=str(data_dir),
        description="the UCI handwritten digits shipped with augreg_nb",
    )


def digits_task(data_dir: str | os.PathLike | None = None, *, size: int = DEFAULT_SIZE,
                name: str | None = None) -> Task:
    """The digits as a 10-class task of ``size`` px images.

    Stored on first use as the TFDS dataset ``augreg_digits{size}`` in ``data_dir``
    (default: <augreg_nb cache>/tfds). Splits: train[:80%] (1438), train[80%:90%] (179),
    train[90%:] (180) of a fixed shuffle.
    """
    tfds_name = f"{DIGITS_NAME}{size}"
    return Task(
        name=name or tfds_name,
        tfds_name=tfds_name,
        splits={"train": "train[:80%]", "val": "train[80%:90%]", "test": "train[90%:]"},
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        data_dir=None if data_dir is None else str(data_dir),
        sweep_steps=(20, 100),
        build=build_digits,
        description="handwritten digits (8x8, upscaled): the offline smoke task",
    )
