"""Tiny datasets in real formats for tests, benchmarks and the notebooks' smoke mode.

    from augreg_nb.testing import datasets
    with datasets.mock_tfds(num_examples=10):        # every TFDS dataset yields fakes
        batch = next(make_train_iterator(get_task("kitti"), resolution=32, global_batch=8))
    task = datasets.write_tfds_dataset(tmp / "tfds")  # a prepared TFDS dataset on disk
    info = datasets.write_image_folder(tmp / "imgs")  # JPEG + PNG class folders (+ a corrupt file)
    digits = datasets.digits_task(tmp / "tfds")       # the shipped digits as a TFDS task
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from augreg_nb.digits import DIGITS_NAME, digits_task  # noqa: F401 - the smoke task's data
from augreg_nb.preprocess import import_tf
from augreg_nb.tasks import Task, folder_task, tfds_task


@contextlib.contextmanager
def mock_tfds(
    num_examples: int = 8,
    *,
    seed: int = 0,
    edit: Callable[[str, dict], dict] | None = None,
) -> Iterator[None]:
    """``tfds.testing.mock_data``: random examples with each dataset's real features.

    Inside the context every TFDS dataset (cifar100, oxford_iiit_pet, resisc45, kitti,
    imagenet2012, ...) reads as ``num_examples`` generated examples per split without any
    download; unknown dimensions (image sizes, object counts) are 10. Features read
    undecoded (``tfds.decode.SkipDecoding``) come as real PNG bytes, as TFDS stores them.
    (TFDS's own encoded fakes cannot encode random bounding boxes, so the examples are
    generated decoded and only the images are encoded.)

    ``edit(dataset_name, example) -> example`` may reshape each generated example (numpy
    values, before encoding) into a more realistic one, e.g. 3 to 10 Clevr objects at
    plausible depths instead of 10 objects at depths in [0, 1); it must be deterministic.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing.mocking import RandomFakeGenerator


    tf = import_tf()

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        del split, read_config, shuffle_files  # every split yields the same fakes
        features = self.info.features
        info = features.get_tensor_info()
        def examples():
            fakes = RandomFakeGenerator(
                features, num_examples, seed=seed, constant_dynamic_shape=True
            )
            return fakes if edit is None else (edit(self.name, ex) for ex in fakes)

        ds = tf.data.Dataset.from_generator(
            examples,
            output_signature=tf.nest.map_structure(
                lambda t: tf.TensorSpec(t.shape, t.dtype), info
            ),
        ).apply(tf.data.experimental.assert_cardinality(num_examples))
        skipped = [
            k for k, v in (decoders or {}).items() if isinstance(v, tfds.decode.SkipDecoding)
        ]

        def encode(ex):
            return {k: tf.io.encode_png(v) if k in skipped else v for k, v in ex.items()}

        return ds.map(encode) if skipped else ds

    with tfds.testing.mock_data(
        num_examples=num_examples,
        policy=tfds.testing.MockPolicy.USE_CODE,
        as_dataset_fn=as_dataset,
    ):
        yield


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
