"""RandAugment op by op against PIL or a numpy formula, and eager vs tf.data under a seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from augreg_nb import augment as A
from augreg_nb.names import AUGMENTATIONS, paper_to_index_aug

tf = pytest.importorskip("tensorflow")


def _image(h=19, w=23, lo=0, hi=256, seed=0):
    return np.random.default_rng(seed).integers(lo, hi, (h, w, 3), dtype=np.uint8)


def _np(x):
    return np.asarray(x)


IMAGES = [_image(), _image(lo=40, hi=200, seed=1), _image(8, 8, seed=2)]


def _blend_np(a, b, factor):
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    out = a + np.float32(factor) * (b - a)
    return np.clip(out, 0, 255).astype(np.uint8)


def _round_half_away(x):
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _affine_np(img, a0, a1, a2, b0, b1, b2):
    """Nearest-neighbour inverse mapping in float32, grey (128) outside the image."""
    h, w, _ = img.shape
    y, x = np.mgrid[:h, :w].astype(np.float32)
    a0, a1, a2, b0, b1, b2 = (np.float32(v) for v in (a0, a1, a2, b0, b1, b2))
    xin = _round_half_away(a0 * x + a1 * y + a2).astype(np.int64)
    yin = _round_half_away(b0 * x + b1 * y + b2).astype(np.int64)
    ok = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    out = np.full_like(img, 128)
    out[ok] = img[yin[ok], xin[ok]]
    return out


def test_op_list_and_arguments_follow_the_reference_table():
    assert len(A.OPS) == 16 and len(set(A.OPS)) == 16
    assert A.OPS[0] == "AutoContrast" and A.OPS[14] == "Cutout" and A.OPS[15] == "SolarizeAdd"
    expected = {  # magnitude 15 (medium1/medium2) and 20 (strong1/strong2)
        15: {"Rotate": 45.0, "Posterize": 6, "Solarize": 384, "SolarizeAdd": 165,
             "Color": 2.8, "ShearX": 0.45, "TranslateY": 150.0, "Cutout": 60},
        20: {"Rotate": 60.0, "Posterize": 8, "Solarize": 512, "SolarizeAdd": 220,
             "Sharpness": 3.7, "ShearY": 0.6, "TranslateX": 200.0, "Cutout": 80},
        0: {"Rotate": 0.0, "Posterize": 0, "Solarize": 0, "Contrast": 0.1, "Cutout": 0},
    }
    for m, table in expected.items():
        for name, value in table.items():
            assert A.op_argument(name, m) == pytest.approx(value), (name, m)
    assert A.op_argument("Invert", 10) is None
    with pytest.raises(ValueError, match="did you mean 'Rotate'"):
        A.op_argument("Rotat", 10)


@pytest.mark.parametrize("img", IMAGES)
def test_pixel_ops_match_pil(img):
    pil = Image.fromarray(img)
    np.testing.assert_array_equal(_np(A.invert(img)), np.asarray(ImageOps.invert(pil)))
    np.testing.assert_array_equal(_np(A.equalize(img)), np.asarray(ImageOps.equalize(pil)))
    for bits in range(1, 9):
        np.testing.assert_array_equal(_np(A.posterize(img, bits)),
                                      np.asarray(ImageOps.posterize(pil, bits)))
    for threshold in (0, 1, 77, 128, 200, 255):
        np.testing.assert_array_equal(_np(A.solarize(img, threshold)),
                                      np.asarray(ImageOps.solarize(pil, threshold)))
    for factor in (0.1, 0.55, 1.9, 2.8, 3.7):
        np.testing.assert_array_equal(
            _np(A.brightness(img, factor)),
            np.asarray(ImageEnhance.Brightness(pil).enhance(factor)))
    # PIL computes autocontrast in double precision; the reference in float32.
    diff = _np(A.autocontrast(img)).astype(int) - np.asarray(ImageOps.autocontrast(pil))
    assert np.abs(diff).max() <= 1


@pytest.mark.parametrize("img", IMAGES)
def test_pixel_ops_match_the_reference_formulas(img):
    # Posterize with 0 bits: TensorFlow clamps the shift of 8 to 7 -> the top bit stays.
    np.testing.assert_array_equal(_np(A.posterize(img, 0)), img & 128)
    # Solarize thresholds above 255 wrap modulo 256 (the reference compares in uint8).
    for threshold in (256, 384, 512):
        t = threshold % 256
        np.testing.assert_array_equal(_np(A.solarize(img, threshold)),
                                      np.where(img < t, img, 255 - img))
    for addition in (0, 110, 165, 220):
        added = np.clip(img.astype(int) + addition, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(_np(A.solarize_add(img, addition)),
                                      np.where(img < 128, added, img))
    # Autocontrast in float32: (x - lo) * 255 / (hi - lo), truncated.
    want = np.empty_like(img)
    for c in range(3):
        ch = img[..., c]
        lo, hi = np.float32(ch.min()), np.float32(ch.max())
        scale = np.float32(255) / (hi - lo)
        val = ch.astype(np.float32) * scale + (-lo * scale)
        want[..., c] = np.clip(val, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(_np(A.autocontrast(img)), want)
    constant = np.full((5, 6, 3), 77, np.uint8)
    np.testing.assert_array_equal(_np(A.autocontrast(constant)), constant)


@pytest.mark.parametrize("img", IMAGES)
@pytest.mark.parametrize("factor", [0.1, 0.73, 1.9, 2.8, 3.7])
def test_enhance_ops_match_the_reference_formulas(img, factor):
    h, w, _ = img.shape
    # Contrast: the grey level is pixels / 256 (the reference's histogram sum), not the mean.
    grey_level = np.uint8(min(255.0, np.float32(h * w) / np.float32(256)))
    np.testing.assert_array_equal(_np(A.contrast(img, factor)),
                                  _blend_np(np.full_like(img, grey_level), img, factor))
    # Color: towards TensorFlow's luma (weights 0.2989, 0.587, 0.114 on x / 255, back to
    # uint8 by truncating x * 255.5).
    f = img.astype(np.float32) * np.float32(1 / 255)
    weights = np.array([0.2989, 0.587, 0.114], np.float32)
    luma = (f * weights).sum(-1, dtype=np.float32)
    grey = np.repeat((luma * np.float32(255.5)).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(_np(A.color(img, factor)), _blend_np(grey, img, factor))
    # Sharpness: 3x3 smoothing [[1,1,1],[1,5,1],[1,1,1]]/13 inside, border kept.
    x = img.astype(np.float32)
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13)
    acc = np.zeros((h - 2, w - 2, 3), np.float32)
    for dy in range(3):
        for dx in range(3):
            acc += kernel[dy, dx] * x[dy:dy + h - 2, dx:dx + w - 2]
    smooth = img.copy()
    smooth[1:-1, 1:-1] = np.clip(acc, 0, 255).astype(np.uint8)
    got = _np(A.sharpness(img, factor)).astype(int)
    want = _blend_np(smooth, img, factor).astype(int)
    # The convolution sums in another order: a smoothed value may truncate one lower or
    # higher, which the blend scales by |1 - factor|.
    assert np.abs(got - want).max() <= 1 + int(abs(1 - factor))
    assert (got == want).mean() > 0.98


@pytest.mark.parametrize("img", IMAGES[:2])
def test_geometric_ops_match_a_numpy_affine_map(img):
    h, w, _ = img.shape
    for level in (0.45, -0.6):
        np.testing.assert_array_equal(_np(A.shear_x(img, level)),
                                      _affine_np(img, 1, level, 0, 0, 1, 0))
        np.testing.assert_array_equal(_np(A.shear_y(img, level)),
                                      _affine_np(img, 1, 0, 0, level, 1, 0))
    for pixels in (7.0, -3.0, 150.0):
        np.testing.assert_array_equal(_np(A.translate_x(img, pixels)),
                                      _affine_np(img, 1, 0, pixels, 0, 1, 0))
        np.testing.assert_array_equal(_np(A.translate_y(img, pixels)),
                                      _affine_np(img, 1, 0, 0, 0, 1, pixels))
    assert (_np(A.translate_x(img, 150.0)) == 128).all()
    for degrees in (30.0, -45.0, 90.0):
        t = np.float32(degrees * np.pi / 180)
        c, s = np.cos(t, dtype=np.float32), np.sin(t, dtype=np.float32)
        xo = ((w - 1) - (c * (w - 1) - s * (h - 1))) / np.float32(2)
        yo = ((h - 1) - (s * (w - 1) + c * (h - 1))) / np.float32(2)
        np.testing.assert_array_equal(_np(A.rotate(img, degrees)),
                                      _affine_np(img, c, -s, xo, s, c, yo))
    np.testing.assert_array_equal(_np(A.rotate(img, 0.0)), img)


def test_cutout_paints_a_clipped_grey_square():
    img = _image(20, 30)
    for (cy, cx), pad in [((10, 15), 4), ((0, 29), 6), ((19, 0), 40), ((5, 5), 0)]:
        want = img.copy()
        want[max(0, cy - pad):cy + pad, max(0, cx - pad):cx + pad] = 128
        np.testing.assert_array_equal(_np(A.cutout(img, pad, (cy, cx))), want)


@pytest.mark.parametrize("img, geometry", [(_image(), "pixels"), (_image(224, 224), "relative")])
def test_apply_op_negates_signed_ops_with_the_seed(img, geometry):
    # The authors' pixels by name at any size; at 224 px the default relative geometry.
    signs = set()
    for s in range(12):
        # 5 pixels left or right
        out = _np(A.apply_op(img, "TranslateX", 0.5, seed=s, geometry=geometry))
        if np.array_equal(out, _affine_np(img, 1, 0, 5.0, 0, 1, 0)):
            signs.add(1)
        elif np.array_equal(out, _affine_np(img, 1, 0, -5.0, 0, 1, 0)):
            signs.add(-1)
        else:
            raise AssertionError("TranslateX moved by something else than +-5 pixels")
    assert signs == {1, -1}
    # Unsigned ops ignore the sign.
    for s in range(4):
        np.testing.assert_array_equal(_np(A.apply_op(img, "Brightness", 10, seed=s)),
                                      _blend_np(np.zeros_like(img), img, 1.9))
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        A.apply_op(img, "Blur", 10)


def test_randaugment_is_identical_eagerly_and_in_tf_data():
    img = _image(24, 24)
    seeds = [(0, i) for i in range(6)]
    eager = [_np(A.randaugment(img, 2, 15, seed=s)) for s in seeds]
    ds = tf.data.Dataset.from_tensor_slices(np.array(seeds, np.int32)).map(
        lambda s: A.randaugment(tf.constant(img), 2, 15, seed=s))
    piped = [x.numpy() for x in ds]
    for a, b in zip(eager, piped, strict=True):
        np.testing.assert_array_equal(a, b)
    # Same seed, same image; different seeds differ; zero layers is the identity.
    np.testing.assert_array_equal(eager[0], _np(A.randaugment(img, 2, 15, seed=(0, 0))))
    assert len({a.tobytes() for a in eager}) > 1
    np.testing.assert_array_equal(_np(A.randaugment(img, 0, 15, seed=3)), img)
    with pytest.raises(ValueError, match="uint8"):
        A.randaugment(img.astype(np.float32), 2, 10, seed=0)


def test_one_layer_applies_exactly_one_of_the_sixteen_ops():
    img = _image(16, 16)
    # Candidate results of the ops that need no random draw at magnitude 10.
    fixed = {name: _np(A.apply_op(img, name, 10, seed=0)) for name in A.OPS
             if name not in A.SIGNED_OPS and name != "Cutout"}
    chosen = []
    for s in range(40):
        out = _np(A.randaugment(img, 1, 10, seed=(7, s)))
        hit = [n for n, cand in fixed.items() if np.array_equal(out, cand)]
        chosen.extend(hit[:1] or ["geometric or cutout"])
    assert len(set(chosen)) >= 8  # uniform over 16 ops: 40 draws see many of them


def test_op_choice_is_uniform_over_the_sixteen_ops():
    counts = np.zeros(16, int)
    for s in range(800):
        op, _, _ = A._draws(tf.constant([s, 1], tf.int32), tf.constant([8, 8]))
        counts[int(op)] += 1
    assert counts.min() > 25 and counts.max() < 80  # expected 50 each


def test_paper_settings_read_from_the_names_table():
    paper = {"none": (0, 0, 0.0), "light1": (2, 0, 0.0), "light2": (2, 10, 0.2),
             "medium1": (2, 15, 0.2), "medium2": (2, 15, 0.5), "strong1": (2, 20, 0.5),
             "strong2": (2, 20, 0.8)}
    for name, (layers, magnitude, alpha) in paper.items():
        setting = AUGMENTATIONS[paper_to_index_aug(name)]
        assert (setting.randaug_layers, setting.randaug_magnitude) == (layers, magnitude)
        assert setting.mixup_alpha == alpha
    img = _image(12, 12)
    np.testing.assert_array_equal(_np(A.randaugment_setting(img, "medium2", seed=5)),
                                  _np(A.randaugment(img, 2, 15, seed=5)))
    np.testing.assert_array_equal(_np(A.randaugment_setting(img, "none", seed=5)), img)
    with pytest.raises(ValueError, match="augmentation setting"):
        A.randaugment_setting(img, "medium3", seed=0)


REFERENCE_TABLE = {  # the reference's level-to-argument table at magnitude m (224 px crops)
    "TranslateX": lambda m: m / 10 * 100.0, "TranslateY": lambda m: m / 10 * 100.0,
    "Cutout": lambda m: int(m / 10 * 40),
}


def test_relative_geometry_is_the_authors_pixels_at_224():
    for m in (0, 0.5, 1, 3, 7, 10, 13, 15, 17, 20, 25, 30):
        for name in A.OPS:
            authors = A.op_argument(name, m, geometry="pixels", size=(17, 45))
            relative = A.op_argument(name, m)
            assert relative == authors, (name, m)  # exact, not approximately
            assert type(relative) is type(authors)
        for name, formula in REFERENCE_TABLE.items():
            assert A.op_argument(name, m, size=(224, 224)) == formula(m)
    img = _image(224, 224, seed=3)
    for s in range(6):
        np.testing.assert_array_equal(
            _np(A.randaugment(img, 2, 15, seed=(1, s))),
            _np(A.randaugment(img, 2, 15, seed=(1, s), geometry="pixels")))
        np.testing.assert_array_equal(
            _np(A.randaugment_setting(img, "strong2", seed=(2, s))),
            _np(A.randaugment(img, 2, 20, seed=(2, s), geometry="pixels")))


def test_relative_geometry_scales_with_the_picture():
    # 32 px: at magnitude 10 a translation of 100/224 of the side (14.29 px) ...
    assert A.op_argument("TranslateX", 10, size=(32, 32)) == pytest.approx(100 / 224 * 32)
    # ... along its own axis: x follows the width, y the height; Cutout the shorter side.
    assert A.op_argument("TranslateX", 10, size=(32, 64)) == pytest.approx(100 / 224 * 64)
    assert A.op_argument("TranslateY", 10, size=(32, 64)) == pytest.approx(100 / 224 * 32)
    assert A.op_argument("Cutout", 15, size=(32, 64)) == int(1.5 * 40 / 224 * 32) == 8
    assert A.op_argument("Cutout", 15, size=(448, 448)) == 120
    assert A.op_argument("TranslateX", 15, size=(32, 32), geometry="pixels") == 150.0
    img = _image(32, 32, seed=4)
    shift = np.float32(0.5 * 100 / 224 * 32)  # 7.14 px at magnitude 5
    out = _np(A.apply_op(img, "TranslateX", 5, seed=0))
    assert any(np.array_equal(out, _affine_np(img, 1, 0, sign * shift, 0, 1, 0))
               for sign in (1, -1))
    # medium2's translate keeps most of a 32 px picture; the authors' pixels leave grey.
    assert (_np(A.apply_op(img, "TranslateY", 15, seed=0)) != 128).mean() > 0.2
    assert (_np(A.apply_op(img, "TranslateY", 15, seed=0, geometry="pixels")) == 128).all()
    with pytest.raises(ValueError, match="did you mean 'pixels'"):
        A.randaugment(img, 2, 15, seed=0, geometry="pixel")


def test_relative_geometry_without_a_static_shape_matches_eager():
    img = _image(40, 28, seed=5)
    fn = tf.function(lambda x, s: A.randaugment(x, 2, 15, seed=s),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                      tf.TensorSpec([2], tf.int32)])
    for s in range(8):
        seed = np.array([3, s], np.int32)
        np.testing.assert_array_equal(_np(fn(img, seed)), _np(A.randaugment(img, 2, 15,
                                                                             seed=seed)))
        for name in ("Cutout", "TranslateX", "TranslateY"):
            op = tf.function(lambda x, s, name=name: A.apply_op(x, name, 15, seed=s),
                             input_signature=fn.input_signature)
            np.testing.assert_array_equal(_np(op(img, seed)),
                                          _np(A.apply_op(img, name, 15, seed=seed)))
