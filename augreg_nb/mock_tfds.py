"""Every TFDS dataset as generated examples with its real features, offline.

The VTAB panel's smoke mode runs the 19 VTAB tasks on these (the datasets themselves are
gigabytes), and the tests run the input pipeline and the VTAB runner on them::

    from augreg_nb.mock_tfds import mock_tfds
    with mock_tfds(num_examples=10):        # every TFDS dataset yields fakes
        batch = next(make_train_iterator(get_task("kitti"), resolution=32, global_batch=8))

It wraps ``tfds.testing.mock_data`` (part of tensorflow-datasets, a core dependency).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from unittest import mock

from augreg_nb.preprocess import import_tf


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

    # Every dataset reads as prepared (is_prepared: True), so nothing tries to download it.
    with tfds.testing.mock_data(
        num_examples=num_examples,
        policy=tfds.testing.MockPolicy.USE_CODE,
        as_dataset_fn=as_dataset,
    ), mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", lambda self: True):
        yield
