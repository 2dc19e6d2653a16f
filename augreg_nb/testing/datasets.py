"""Tiny datasets in real formats for tests and benchmarks (generated TFDS examples of any
dataset are :func:`augreg_nb.mock_tfds.mock_tfds`, which smoke mode uses too).

    from augreg_nb.testing import datasets
    task = datasets.write_tfds_dataset(tmp / "tfds")  # a prepared TFDS dataset on disk
    datasets.write_tfds_metadata("tf_flowers", tmp / "meta", {"train": 3670})
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=tmp / "meta"):
        ...                                           # tf_flowers as if prepared, offline
    info = datasets.write_image_folder(tmp / "imgs")  # JPEG + PNG class folders (+ a corrupt file)
    digits = datasets.digits_task(tmp / "tfds")       # the shipped digits as a TFDS task
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from augreg_nb.digits import DIGITS_NAME, digits_task  # noqa: F401 - the smoke task's data
from augreg_nb.tasks import Task, folder_task, tfds_task


def write_tfds_metadata(
    name: str, data_dir: str | os.PathLike, split_sizes: Mapping[str, int]
) -> Path:
    """Write the metadata a prepared registered TFDS dataset has (``dataset_info.json``,
    label files), with the given split names and sizes, but no examples.

    Features and version come from the dataset's TFDS code; the splits are what preparing
    it would record. ``tfds.testing.mock_data(policy=MockPolicy.USE_FILES, data_dir=...)``
    then reads the dataset as prepared, offline, with generated examples (TFDS's advice for
    realistic mocks: the true metadata files). Returns the version folder.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix="tfrecord",
        template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[int(n)], num_bytes=0,
                            filename_template=template)
        for split, n in split_sizes.items()]))
    Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return Path(builder.data_dir)


def _store(name: str, data_dir: Path, features, splits: Mapping[str, list]) -> None:
    import tensorflow_datasets as tfds

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=features,
        split_datasets={k: [(f"{k}{i}", ex) for i, ex in enumerate(v)] for k, v in splits.items()},
        data_dir=str(data_dir),
        description="tiny dataset written by augreg_nb.testing.datasets",
    )


def write_tfds_dataset(
    data_dir: str | os.PathLike,
    *,
    name: str = "augreg_tiny",
    class_names: tuple[str, ...] = ("red", "green", "blue"),
    sizes: Mapping[str, int] | None = None,
    image_shape: tuple[int, int] = (24, 40),
    encoding: str = "png",
    seed: int = 0,
) -> Task:
    """Write a prepared TFDS dataset of coloured images; return it as a Task.

    Image ``i`` of class ``c`` is a noisy image whose channel ``c % 3`` is bright, so a
    model can learn it. Default sizes: train 20, validation 7, test 9 (uneven on purpose).
    The task's splits are ``train`` / ``validation`` / ``test``.
    """
    import tensorflow_datasets as tfds

    sizes = dict(sizes or {"train": 20, "validation": 7, "test": 9})
    rng = np.random.default_rng(seed)
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=encoding),
            "label": tfds.features.ClassLabel(names=list(class_names)),
        }
    )
    splits = {}
    for split, n in sizes.items():
        labels = np.arange(n) % len(class_names)
        splits[split] = [
            {"image": _coloured_image(rng, image_shape, int(c)), "label": int(c)} for c in labels
        ]
    _store(name, Path(data_dir), features, splits)
    return tfds_task(name, train="train", val="validation", test="test", data_dir=data_dir)


def _coloured_image(rng: np.random.Generator, shape: tuple[int, int], cls: int) -> np.ndarray:
    image = rng.integers(0, 90, size=(*shape, 3), dtype=np.uint8)
    image[..., cls % 3] += 150
    return image


def write_image_folder(
    root: str | os.PathLike,
    *,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 6,
    corrupt: bool = True,
    split_folders: bool = False,
    seed: int = 0,
) -> dict:
    """Write ``root/<class>/*.jpg|png`` (alternating JPEG and PNG of varying sizes).

    With ``corrupt`` one extra ``.jpg`` that is not an image is added to the first class.
    With ``split_folders`` the layout is ``root/{train,val,test}/<class>/`` with
    per_class images in train and 2 per class in val and test.
    Returns {"root", "files": {path: class}, "corrupt": path or None}.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Path(root)
    files: dict[str, str] = {}
    layout = {"train": per_class, "val": 2, "test": 2} if split_folders else {"": per_class}
    for split, count in layout.items():
        for ci, cls in enumerate(classes):
            folder = base / split / cls if split else base / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = (20 + 3 * i, 28 + 2 * ci)
                img = Image.fromarray(_coloured_image(rng, shape, ci))
                path = folder / (f"{cls}_{i:03d}." + ("jpg" if i % 2 == 0 else "png"))
                img.save(path, quality=95) if i % 2 == 0 else img.save(path)
                files[str(path)] = cls
    bad = None
    if corrupt:
        folder = (base / "train" / classes[0]) if split_folders else base / classes[0]
        bad = folder / f"{classes[0]}_broken.jpg"
        buf = io.BytesIO()
        Image.fromarray(_coloured_image(rng, (16, 16), 0)).save(buf, format="JPEG")
        bad.write_bytes(b"not an image: " + buf.getvalue()[40:120])
        files[str(bad)] = classes[0]
    return {"root": str(base), "files": files, "corrupt": str(bad) if bad else None}


def image_folder_task(root: str | os.PathLike, **kwargs) -> Task:
    """Write an image folder (see write_image_folder) and return its folder_task."""
    write_image_folder(root, **kwargs)
    return folder_task(root)
