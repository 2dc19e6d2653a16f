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


def _np_bilinear(image, out_h, out_w):
    """Bilinear resize with half-pixel centres and edge clamping, written with numpy (what
    tf.image.resize(method="bilinear", antialias=False) computes), in float64."""

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    x = image.astype(np.float64)
    lo, hi, f = taps(image.shape[0], out_h)
    x = x[lo] * (1 - f)[:, None, None] + x[hi] * f[:, None, None]
    lo, hi, f = taps(image.shape[1], out_w)
    return x[:, lo] * (1 - f)[None, :, None] + x[:, hi] * f[None, :, None]


def _truncate(resized):
    """big_vision's return to uint8: clip to 0..255, then a C cast (truncation)."""
    return np.clip(np.asarray(resized), 0, 255).astype(np.uint8)


def _in_tf_data(fn, images):
    """fn applied to each image inside a tf.data pipeline (graph mode, parallel map)."""
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return list(ds.map(fn, num_parallel_calls=4).as_numpy_iterator())


def test_eval_resize_sizes_of_the_protocol():
    assert eval_resize_size(384) == 448
    assert eval_resize_size(224) == 256
    assert eval_resize_size(112) == 128
    with pytest.raises(ValueError, match="positive"):
        eval_resize_size(0)


@pytest.mark.parametrize("mode", ["inception_crop", "resize_random_crop", "random_crop"])
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


@pytest.mark.parametrize("mode", ["inception_crop", "random_crop"])
def test_area_crop_modes_area_aspect_and_flip_from_the_pixels(mode):
    h, w = 200, 240
    image = _coordinate_image(h, w)
    areas, aspects, flips = [], [], []
    for s in range(60):
        out = train_preprocess(image, 64, seed=s, mode=mode).numpy()
        px = np.round((out + 1.0) * 127.5)  # back to 0..255 (to the nearest level)
        rows, cols = px[..., 0], px[..., 1]
        crop_h = rows.max() - rows.min() + 1
        crop_w = cols.max() - cols.min() + 1
        areas.append(crop_h * crop_w / (h * w))
        aspects.append(crop_w / crop_h)
        flips.append(cols[:, 0].mean() > cols[:, -1].mean())
    areas, aspects = np.array(areas), np.array(aspects)
    # bilinear resize blurs the edge pixels by at most one, hence the small slack
    assert areas.min() >= 0.05 * 0.9 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.9 and aspects.max() <= 1.33 * 1.1
    assert areas.std() > 0.1  # random sizes, not always the whole image
    assert 10 < sum(flips) < 50  # horizontal flip about half of the time


def _documented_box(image, seed):
    """The crop box from the documented seed use: stateless_split(seed, 2) -> (crop, flip)
    seeds; the box is TensorFlow's sampler with area 5%..100% and aspect 0.75..1.33."""
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.constant(seed, tf.int32), 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image.shape, tf.zeros([0, 0, 4], tf.float32), seed=crop_seed, min_object_covered=0.0,
        aspect_ratio_range=(0.75, 1.33), area_range=(0.05, 1.0),
        use_image_if_no_bounding_boxes=True)
    (top, left, _), (ch, cw, _) = begin.numpy(), size.numpy()
    return (top, left, ch, cw), flip_seed


def test_inception_crop_pixels_are_big_vision_truncated_resize_eager_and_in_tf_data():
    images = [_random_image(120 + 11 * i, 150 - 9 * i, seed=10 + i) for i in range(5)]
    seeds = [(3, i) for i in range(5)]
    eager = [train_preprocess(im, 48, seed=sd).numpy()
             for im, sd in zip(images, seeds, strict=True)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(zip(images, seeds, strict=True)),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)))
    in_data = list(ds.map(lambda im, sd: train_preprocess(im, 48, seed=sd)).as_numpy_iterator())
    rounding_differs = 0
    for image, seed, got, got_data in zip(images, seeds, eager, in_data, strict=True):
        (top, left, ch, cw), flip_seed = _documented_box(image, seed)
        assert 0.05 <= ch * cw / (image.shape[0] * image.shape[1]) <= 1.0
        floats = tf.image.resize(image[top:top + ch, left:left + cw], (48, 48), "bilinear",
                                 antialias=False).numpy()
        np.testing.assert_allclose(floats, _np_bilinear(image[top:top + ch, left:left + cw],
                                                        48, 48), atol=4e-3)  # float32
        want = tf.image.stateless_random_flip_left_right(_truncate(floats), flip_seed).numpy()
        np.testing.assert_array_equal(got, want.astype(np.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(got_data, got)
        rounding_differs += np.mean(np.round(floats) != np.floor(floats))
    assert rounding_differs / len(images) > 0.3  # rounding instead would fail this test


def test_random_crop_is_vit_jax_crop_in_float_with_the_box_read_from_the_pixels():
    h, w, r = 200, 240, 64
    image = _coordinate_image(h, w)
    image[..., 2] = _random_image(h, w, seed=7)[..., 0]  # blue: noise to compare pixels
    boxes = []
    for s in range(40):
        out = train_preprocess(image, r, seed=s, mode="random_crop").numpy()
        px = (out.astype(np.float64) + 1.0) * 127.5
        if px[r // 2, 0, 1] > px[r // 2, -1, 1]:  # flipped: columns run backwards
            px, out = px[:, ::-1], out[:, ::-1]
        # bilinear with half-pixel centres maps output i to input (i + 0.5) * n / r - 0.5,
        # so rows 8..55 read the crop's coordinates without edge clamping
        ch = round((px[55, r // 2, 0] - px[8, r // 2, 0]) / 47 * r)
        cw = round((px[r // 2, 55, 1] - px[r // 2, 8, 1]) / 47 * r)
        top = round(px[32, r // 2, 0] - (32.5 * ch / r - 0.5))
        left = round(px[r // 2, 32, 1] - (32.5 * cw / r - 0.5))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        area, aspect = ch * cw / (h * w), cw / ch
        assert 0.05 <= area <= 1.0 and 0.75 * 0.97 <= aspect <= 1.33 * 1.03
        want = _np_bilinear(image[top:top + ch, left:left + cw], r, r) / 127.5 - 1.0
        np.testing.assert_allclose(out, want, atol=4e-5)  # float: no return to uint8
        boxes.append((top, left, ch, cw))
    assert len(set(boxes)) > 30
    levels = (out.astype(np.float64) + 1.0) * 127.5
    assert np.abs(levels - np.round(levels)).max() > 0.1  # not quantised to uint8 levels


def test_resize_random_crop_is_a_window_of_the_truncated_square_resize():
    image = _random_image(60, 90, seed=5)
    r = 32
    big = eval_resize_size(r)  # 37
    floats = _np_bilinear(image, big, big)
    resized = _truncate(tf.image.resize(image, (big, big), "bilinear", antialias=False))
    np.testing.assert_allclose(
        tf.image.resize(image, (big, big), "bilinear", antialias=False).numpy(), floats,
        atol=4e-3)
    offsets = set()
    for s in range(25):
        out = train_preprocess(image, r, seed=s, mode="resize_random_crop").numpy()
        px = np.round((out + 1.0) * 127.5).astype(np.uint8)
        np.testing.assert_array_equal(px.astype(np.float32) / 127.5 - 1.0, out)
        found = [(dy, dx, flip) for dy in range(big - r + 1) for dx in range(big - r + 1)
                 for flip in (False, True)
                 if np.array_equal(px, resized[dy:dy + r, dx:dx + r][:, ::-1] if flip
                                   else resized[dy:dy + r, dx:dx + r])]
        assert found, s
        offsets.add(found[0])
    assert len(offsets) > 5 and {f for *_, f in offsets} == {False, True}


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
    small = np.floor(blocks)  # back to uint8 as big_vision does: truncation
    top, left = 16, 38
    ref = small[top : top + 224, left : left + 224] / 127.5 - 1.0
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert np.mean(np.round(blocks) != np.floor(blocks)) > 0.3  # rounding would fail here

    tall = _random_image(300, 128, seed=4)  # portrait, factor 2: pixel replication
    out = eval_preprocess(tall, 224).numpy()
    big = tall.repeat(2, axis=0).repeat(2, axis=1)  # (600, 256)
    ref = big[188 : 188 + 224, 16 : 16 + 224] / 127.5 - 1.0
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_eval_resize_crop_truncates_like_big_vision_eager_and_in_tf_data():
    images = [_random_image(300 + 37 * i, 410 - 23 * i, seed=20 + i) for i in range(4)]
    images.append(np.full((50, 70, 3), 1, np.uint8))  # area resize of a constant: 1 -> 0/1
    eager = [eval_preprocess(im, 48).numpy() for im in images]
    in_data = _in_tf_data(lambda im: eval_preprocess(im, 48), images)
    for image, got, got_data in zip(images, eager, in_data, strict=True):
        h, w = image.shape[:2]
        factor = np.float32(eval_resize_size(48)) / np.float32(min(h, w))
        nh, nw = int(np.round(np.float32(h) * factor)), int(np.round(np.float32(w) * factor))
        floats = tf.image.resize(image, (nh, nw), "area", antialias=False).numpy()
        top, left = (nh - 48) // 2, (nw - 48) // 2
        want = _truncate(floats)[top:top + 48, left:left + 48]
        np.testing.assert_array_equal(got, want.astype(np.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(got_data, got)
    # the constant image: every pixel is 1 or 0 (the float result can land just below 1)
    assert set(np.unique(np.round((eager[-1] + 1) * 127.5))) <= {0.0, 1.0}


def test_value_range_and_plain_resize_mode():
    for value in (0, 1, 128, 254, 255):
        image = np.full((50, 70, 3), value, np.uint8)
        out = eval_preprocess(image, 16, "resize").numpy()
        assert out.shape == (16, 16, 3)
        np.testing.assert_allclose(out, value / 127.5 - 1.0, atol=1e-6)
    assert eval_preprocess(np.full((9, 9, 3), 255, np.uint8), 8).numpy().max() == 1.0
    assert eval_preprocess(np.zeros((9, 9, 3), np.uint8), 8).numpy().min() == -1.0
    # vit_jax's eval: bilinear resize of the whole image, kept in float
    image = _random_image(50, 70, seed=9)
    out = eval_preprocess(image, 16, "resize").numpy()
    np.testing.assert_allclose(out, _np_bilinear(image, 16, 16) / 127.5 - 1.0, atol=4e-5)
    assert np.array_equal(_in_tf_data(lambda im: eval_preprocess(im, 16, "resize"), [image])[0],
                          out)


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


def test_config_modes_are_the_preprocess_modes_and_smoke_uses_a_true_name():
    from augreg_nb.config import get_config, validate

    config = get_config("smoke")
    # a 5%-area crop of a 32 px digit is noise: the smoke run resizes, then crops 32 of 37
    assert config.train_preprocess == "resize_random_crop"
    for field, modes in (("train_preprocess", preprocess.TRAIN_MODES),
                         ("eval_preprocess", preprocess.EVAL_MODES)):
        for mode in modes:
            config[field] = mode
            validate(config)
        config[field] = "crop"
        with pytest.raises(ValueError, match=field):
            validate(config)
        config[field] = modes[0]


def test_warm_up_imports_tensorflow_in_the_background_once(python_runner):
    out = python_runner("""
        import sys, threading
        from augreg_nb import preprocess
        assert "tensorflow" not in sys.modules
        first = preprocess.warm_up()
        assert preprocess.warm_up() is first and first is not threading.current_thread()
        first.join(300)
        print("tensorflow" in sys.modules, first.is_alive())
    """)
    assert out.split() == ["True", "False"]


def test_a_failed_warm_up_leaves_the_error_to_the_real_call(python_runner):
    out = python_runner("""
        import sys
        sys.modules["tensorflow"] = None  # TensorFlow not installed
        import numpy as np
        from augreg_nb import preprocess
        preprocess.warm_up().join(60)
        try:
            preprocess.prepare_images(np.zeros((8, 8, 3), np.uint8), 4)
        except ImportError as err:
            print(err)
    """)
    assert "pip install 'augreg_nb[tf]'" in out
