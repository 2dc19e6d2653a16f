"""Pre-processing: eager == tf.data under a seed, geometry and value range vs numpy/PIL."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from augreg_nb import preprocess  # noqa: E402
from augreg_nb.preprocess import (  # noqa: E402
    eval_preprocess,
    eval_resize_size,
    prepare_images,
    train_preprocess,
)


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _coordinate_image(h, w):
    """R = row index, G = column index, B = 0: lets a test read back a crop's geometry."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def test_eval_resize_sizes_of_the_protocol():
    assert eval_resize_size(384) == 448
    assert eval_resize_size(224) == 256
    assert eval_resize_size(112) == 128
    with pytest.raises(ValueError, match="positive"):
        eval_resize_size(0)


@pytest.mark.parametrize("mode", ["inception_crop", "random_crop"])
def test_train_preprocess_eager_equals_tf_data_under_a_seed(mode):
    images = [_random_image(60 + 7 * i, 90 - 5 * i, seed=i) for i in range(6)]
    eager = [
        train_preprocess(im, 32, seed=(5, i), mode=mode).numpy() for i, im in enumerate(images)
    ]

    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
    ).enumerate()
    ds = ds.map(
        lambda i, im: train_preprocess(im, 32, seed=tf.stack([5, tf.cast(i, tf.int32)]), mode=mode),
        num_parallel_calls=4,
    )
    in_pipeline = list(ds.as_numpy_iterator())
    for a, b in zip(eager, in_pipeline, strict=True):
        assert a.shape == (32, 32, 3) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    again = train_preprocess(images[0], 32, seed=(5, 0), mode=mode).numpy()
    np.testing.assert_array_equal(eager[0], again)
    other = train_preprocess(images[0], 32, seed=(6, 0), mode=mode).numpy()
    assert not np.array_equal(eager[0], other)


def test_inception_crop_area_aspect_and_flip_from_the_pixels():
    h, w = 200, 240
    image = _coordinate_image(h, w)
    areas, aspects, flips = [], [], []
    for s in range(60):
        out = train_preprocess(image, 64, seed=s).numpy()
        px = np.round((out + 1.0) * 127.5)  # back to 0..255 (exact: outputs are k/127.5 - 1)
        rows, cols = px[..., 0], px[..., 1]
        crop_h = rows.max() - rows.min() + 1
        crop_w = cols.max() - cols.min() + 1
        areas.append(crop_h * crop_w / (h * w))
        aspects.append(crop_w / crop_h)
        flips.append(cols[:, 0].mean() > cols[:, -1].mean())
    areas, aspects = np.array(areas), np.array(aspects)
    # bilinear resize blurs the edge pixels by at most one, hence the small slack
    assert areas.min() >= 0.05 * 0.9 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.9 and aspects.max() <= (4 / 3) * 1.1
    assert areas.std() > 0.1  # random sizes, not always the whole image
    assert 10 < sum(flips) < 50  # horizontal flip about half of the time


def test_eval_centre_crop_without_resize_is_a_numpy_slice():
    image = _random_image(256, 300)  # short side already 256 -> only the crop remains
    out = eval_preprocess(image, 224).numpy()
    top, left = (256 - 224) // 2, (300 - 224) // 2
    ref = image[top : top + 224, left : left + 224].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_eval_short_side_resize_then_centre_crop_matches_numpy():
    image = _random_image(512, 600, seed=3)  # factor 1/2: area resize = 2x2 block means
    out = eval_preprocess(image, 224).numpy()
    blocks = image.reshape(256, 2, 300, 2, 3).astype(np.float64).mean(axis=(1, 3))
    small = np.round(blocks)  # back to uint8 levels, half to even like tf.round
    top, left = 16, 38
    ref = small[top : top + 224, left : left + 224] / 127.5 - 1.0
    np.testing.assert_allclose(out, ref, atol=1e-6)

    tall = _random_image(300, 128, seed=4)  # portrait, factor 2: pixel replication
    out = eval_preprocess(tall, 224).numpy()
    big = tall.repeat(2, axis=0).repeat(2, axis=1)  # (600, 256)
    ref = big[188 : 188 + 224, 16 : 16 + 224] / 127.5 - 1.0
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_value_range_and_plain_resize_mode():
    for value in (0, 1, 128, 254, 255):
        image = np.full((50, 70, 3), value, np.uint8)
        for mode in ("resize_crop", "resize"):
            out = eval_preprocess(image, 16, mode).numpy()
            assert out.shape == (16, 16, 3)
            np.testing.assert_allclose(out, value / 127.5 - 1.0, atol=1e-6)
    assert eval_preprocess(np.full((9, 9, 3), 255, np.uint8), 8).numpy().max() == 1.0
    assert eval_preprocess(np.zeros((9, 9, 3), np.uint8), 8).numpy().min() == -1.0


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="uint8"):
        eval_preprocess(np.zeros((8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError, match="inception_crop"):
        train_preprocess(_random_image(8, 8), 4, seed=0, mode="mixup")
    with pytest.raises(ValueError, match="resize_crop"):
        eval_preprocess(_random_image(8, 8), 4, mode="crop")
    with pytest.raises(ValueError, match="255"):
        prepare_images(np.zeros((8, 8, 3), np.float64), 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_images("/nonexistent/cat.jpg", 4)


def test_prepare_images_accepts_paths_pil_and_arrays(tmp_path):
    arrays = [_random_image(40, 52, seed=i) for i in range(3)]
    png = tmp_path / "a.png"
    Image.fromarray(arrays[0]).save(png)
    jpg = tmp_path / "b.jpg"
    Image.fromarray(arrays[1]).save(jpg, quality=90)
    grey = Image.fromarray(arrays[2][..., 0], mode="L")

    out = prepare_images([str(png), jpg, grey, arrays[2]], 24)
    assert out.shape == (4, 24, 24, 3) and out.dtype == np.float32
    expected_jpg = np.asarray(Image.open(jpg).convert("RGB"))
    np.testing.assert_array_equal(out[0], eval_preprocess(arrays[0], 24).numpy())
    np.testing.assert_array_equal(out[1], eval_preprocess(expected_jpg, 24).numpy())
    grey_rgb = np.repeat(arrays[2][..., :1], 3, axis=-1)
    np.testing.assert_array_equal(out[2], eval_preprocess(grey_rgb, 24).numpy())
    np.testing.assert_array_equal(out[3], eval_preprocess(arrays[2], 24).numpy())
    batch = prepare_images(np.stack(arrays), 24)  # (N, H, W, 3) uint8 is a batch
    assert batch.shape == (3, 24, 24, 3)
    assert prepare_images(arrays[0], 24).shape == (1, 24, 24, 3)


def test_decode_image_gives_rgb_for_grey_png():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    encoded = tf.io.encode_png(grey[..., None])
    decoded = preprocess.decode_image(encoded).numpy()
    assert decoded.shape == (6, 8, 3)
    np.testing.assert_array_equal(decoded[..., 1], grey)
