"""RandAugment as the AugReg pre-training used it, as stateless TensorFlow ops on uint8 images.

The paper's augmentation settings combine RandAugment (``l`` layers of magnitude ``m``) with
Mixup (:mod:`augreg_nb.mixup`); the table of the seven settings lives in
:data:`augreg_nb.names.AUGMENTATIONS`. The paper stresses that it used the *original*
TensorFlow RandAugment (the one big_vision keeps in ``pp/archive/autoaugment.py``), which
differs from re-implementations such as timm's. This module follows that definition op by op,
including its surprises, so that a run here sees the same image distribution:

- Each layer picks one of the 16 ops of :data:`OPS` uniformly at random and always applies it
  (the reference draws a probability per op but never uses it for RandAugment).
- Magnitude ``m`` maps to an argument with the maximum level 10 (not 30): see
  :func:`op_argument`. Rotate (``m / 10 * 30`` degrees), ShearX/Y (``m / 10 * 0.3``) and
  TranslateX/Y (``m / 10 * 100`` pixels at 224 px, see below) are negated with probability
  1/2; the other ops are not. Color, Contrast, Brightness and Sharpness use the factor
  ``m / 10 * 1.8 + 0.1`` (0.1 at ``m = 0``: strong, not an identity; 2.8 at ``m = 15``).
- Solarize's threshold is ``int(m / 10 * 256)``, compared with the uint8 image after
  TensorFlow casts it to uint8, which wraps modulo 256: the effective thresholds are 0 for
  ``m`` = 0, 10 and 20 (the whole image is inverted) and 128 for ``m`` = 15.
- Posterize keeps ``int(m / 10 * 4)`` bits; TensorFlow clamps a shift of 8 to 7, so 0 bits
  (``m`` < 2.5) keeps the top bit, like 1 bit.
- Contrast blends towards a grey level of (number of pixels) / 256, clipped to 255, not the
  image's mean: the reference divides the *sum of the histogram* by 256.
- Geometric ops (Rotate, ShearX/Y, TranslateX/Y) use nearest-neighbour sampling, and every
  pixel that comes from outside the image is grey, :data:`FILL_VALUE` = 128; Cutout paints a
  square of side up to ``2 * int(m / 10 * 40)`` centred on a uniformly random pixel, also 128.

Translate (100 px at ``m = 10``) and Cutout (half-size 40 px) are the authors' constants for
224 px crops. Here they are fractions of the picture by default (``geometry="relative"``):
TranslateX moves by ``m / 10 * 100 / 224`` of the width, TranslateY of the height, and
Cutout's half-size is ``int(m / 10 * 40 / 224 * side)`` (side: the shorter one). At 224 px
this is exactly the authors' pixels, bit for bit; at 32 px medium2 moves a digit by up to 21
px instead of 150 (which leaves a grey picture) and cuts out at most 16 px instead of the
whole picture. ``geometry="pixels"`` selects the authors' absolute pixels at every size.
- Blends (Color, Contrast, Brightness, Sharpness) compute in float32 and truncate to uint8
  after clipping to 0..255.

Every random choice is a stateless op driven by an explicit seed (an int, a pair of ints or
an int32 tensor of shape [2]), so the same seed gives identical images eagerly and inside
``tf.data``. ``randaugment`` splits the seed into one seed per layer with
``tf.random.experimental.stateless_split``; each layer's seed splits into the op choice, the
sign and the Cutout centre, in that order.

Usage::

    from augreg_nb.augment import randaugment, randaugment_setting, apply_op
    image = randaugment(image_uint8, num_layers=2, magnitude=15, seed=(0, 7))
    image = randaugment_setting(image_uint8, "medium2", seed=(0, 7))   # index names
    image = apply_op(image_uint8, "ShearX", magnitude=10, seed=3)      # one op by name
    image = randaugment(image_uint8, 2, 15, seed=0, geometry="pixels")  # the authors' pixels
"""

from __future__ import annotations

import math

from augreg_nb.names import AUG_NAMES, unknown_value_error
from augreg_nb.preprocess import _check_image, as_seed, import_tf
from augreg_nb.protocol import AUGMENTATIONS

#: The 16 RandAugment ops, in the reference's order (the order matters for the random choice).
OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
    "Cutout", "SolarizeAdd",
)
#: Ops whose argument is negated with probability 1/2.
SIGNED_OPS: tuple[str, ...] = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
#: Grey value of pixels that geometric ops bring in from outside the image, and of Cutout.
FILL_VALUE = 128
#: Magnitude at which the mapping below reaches its nominal maximum.
MAX_LEVEL = 10.0
#: RandAugment's constants: Cutout half-size and translation at the maximum level.
CUTOUT_CONST = 40
TRANSLATE_CONST = 100
#: Side (pixels) of the crops those two constants were made for.
REFERENCE_SIDE = 224
#: How Translate and Cutout sizes follow the picture: "relative" (fractions of its side,
#: ``TRANSLATE_CONST / REFERENCE_SIDE`` and ``CUTOUT_CONST / REFERENCE_SIDE``: the authors'
#: pixels at 224 px, the same geometry at any size) or "pixels" (the authors' absolute
#: pixels whatever the size).
GEOMETRIES: tuple[str, ...] = ("relative", "pixels")


def _check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise unknown_value_error("RandAugment geometry", geometry, GEOMETRIES)
    return geometry


def _scales(size, geometry: str):
    """(x, y, cutout) factors applied to the authors' pixel constants for an image of
    ``size`` (height, width; ints or scalar tensors). Exactly 1.0 at 224 x 224 (so the
    arguments are the authors' to the last bit) and for ``geometry="pixels"``."""
    if _check_geometry(geometry) == "pixels":
        return 1.0, 1.0, 1.0
    height, width = size
    if isinstance(height, int) and isinstance(width, int):
        return width / REFERENCE_SIDE, height / REFERENCE_SIDE, min(height, width) / REFERENCE_SIDE
    tf = import_tf()
    h = tf.cast(height, tf.float32) / REFERENCE_SIDE
    w = tf.cast(width, tf.float32) / REFERENCE_SIDE
    return w, h, tf.minimum(h, w)


def _truncate(value):
    """``int(value)`` of a non-negative Python float or float tensor."""
    if isinstance(value, float):
        return int(value)
    tf = import_tf()
    return tf.cast(value, tf.int32)


def op_argument(name: str, magnitude: float, *, size=(REFERENCE_SIDE, REFERENCE_SIDE),
                geometry: str = "relative"):
    """The argument op ``name`` gets at ``magnitude`` on an image of ``size`` (height,
    width), before any random negation.

    ``None`` for AutoContrast, Equalize and Invert (no argument). The values are those of
    the reference's level-to-argument table: degrees for Rotate, bits for Posterize, the
    threshold (before TensorFlow's uint8 wrap, see :func:`solarize`) for Solarize, the
    addition for SolarizeAdd, the blend factor for the enhance ops, the shear coefficient,
    the translation in pixels and Cutout's half-size. Translation and Cutout follow
    ``geometry`` (see :data:`GEOMETRIES`): at the default size, 224 x 224, both geometries
    give the reference's pixels.
    """
    level = float(magnitude) / MAX_LEVEL
    scale_x, scale_y, scale_cut = _scales(size, geometry)
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    table = {
        "Rotate": lambda: level * 30.0,
        "Posterize": lambda: int(level * 4),
        "Solarize": lambda: int(level * 256),
        "SolarizeAdd": lambda: int(level * 110),
        "Color": lambda: level * 1.8 + 0.1,
        "Contrast": lambda: level * 1.8 + 0.1,
        "Brightness": lambda: level * 1.8 + 0.1,
        "Sharpness": lambda: level * 1.8 + 0.1,
        "ShearX": lambda: level * 0.3,
        "ShearY": lambda: level * 0.3,
        "TranslateX": lambda: level * float(TRANSLATE_CONST) * scale_x,
        "TranslateY": lambda: level * float(TRANSLATE_CONST) * scale_y,
        "Cutout": lambda: _truncate(level * CUTOUT_CONST * scale_cut),
    }
    if name not in table:
        raise unknown_value_error("RandAugment op", name, OPS)
    return table[name]()


# ---------------------------------------------------------------------------------------
# the ops (image: uint8 (H, W, 3) tensor)


def _blend(image1, image2, factor):
    """``image1 + factor * (image2 - image1)`` in float32, clipped to 0..255, truncated."""
    tf = import_tf()
    a = tf.cast(image1, tf.float32)
    b = tf.cast(image2, tf.float32)
    mixed = a + tf.cast(factor, tf.float32) * (b - a)
    return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)


def _grey(image):
    """TensorFlow's luma (``tf.image.rgb_to_grayscale``), shape (H, W, 1), uint8."""
    return import_tf().image.rgb_to_grayscale(image)


def autocontrast(image):
    """Stretch each channel so its minimum becomes 0 and its maximum 255 (float32, truncated);
    a constant channel is left as it is."""
    tf = import_tf()
    image = _check_image(image)

    def channel(c):
        lo = tf.cast(tf.reduce_min(c), tf.float32)
        hi = tf.cast(tf.reduce_max(c), tf.float32)
        scale = 255.0 / tf.maximum(hi - lo, 1.0)
        stretched = tf.cast(c, tf.float32) * scale + (-lo * scale)
        stretched = tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)
        return tf.where(hi > lo, stretched, c)

    return tf.stack([channel(image[:, :, i]) for i in range(3)], axis=2)


def equalize(image):
    """Histogram equalisation per channel, with PIL's ``ImageOps.equalize`` lookup table."""
    tf = import_tf()
    image = _check_image(image)

    def channel(c):
        c = tf.cast(c, tf.int32)
        hist = tf.math.bincount(tf.reshape(c, [-1]), minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        safe = tf.maximum(step, 1)
        lut = (tf.cumsum(hist) + safe // 2) // safe
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        return tf.cast(tf.where(step == 0, c, tf.gather(lut, c)), tf.uint8)

    return tf.stack([channel(image[:, :, i]) for i in range(3)], axis=2)


def invert(image):
    """``255 - x``."""
    return 255 - _check_image(image)


def posterize(image, bits: int):
    """Keep the top ``bits`` bits of every value (shifts clamped to 7, as TensorFlow does)."""
    tf = import_tf()
    shift = min(max(8 - int(bits), 0), 7)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(_check_image(image), shift), shift)


def solarize(image, threshold: int):
    """Invert every value >= ``threshold``. The threshold is taken modulo 256, which is what
    comparing a uint8 tensor with a larger Python int does in TensorFlow."""
    tf = import_tf()
    image = _check_image(image)
    return tf.where(image < tf.constant(int(threshold) % 256, tf.uint8), image, 255 - image)


def solarize_add(image, addition: int, threshold: int = 128):
    """Add ``addition`` (clipped to 0..255) to every value below ``threshold``."""
    tf = import_tf()
    image = _check_image(image)
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + int(addition), 0, 255),
                    tf.uint8)
    return tf.where(image < tf.constant(int(threshold) % 256, tf.uint8), added, image)


def color(image, factor: float):
    """Blend from the grey image (``factor`` 0) to the image (1) and beyond (saturation)."""
    tf = import_tf()
    image = _check_image(image)
    return _blend(tf.image.grayscale_to_rgb(_grey(image)), image, factor)


def contrast(image, factor: float):
    """Blend from a constant grey to the image. The grey level is the reference's:
    the pixel count divided by 256, clipped to 255 and truncated (not the mean luma)."""
    tf = import_tf()
    image = _check_image(image)
    shape = tf.shape(image)
    pixels = tf.cast(shape[0] * shape[1], tf.float32)
    level = tf.cast(tf.clip_by_value(pixels / 256.0, 0.0, 255.0), tf.uint8)
    return _blend(tf.fill(shape, level), image, factor)


def brightness(image, factor: float):
    """Blend from black to the image: ``factor * x``, clipped and truncated."""
    tf = import_tf()
    image = _check_image(image)
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor: float):
    """Blend from a smoothed image to the image. The smoothing is the 3x3 kernel
    [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 on the interior (truncated to uint8); the
    one-pixel border keeps the original values."""
    tf = import_tf()
    image = _check_image(image)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                    "VALID")[0]
    smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
    inside = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.where(inside, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return _blend(smooth, image, factor)


def _transform(image, matrix):
    """Resample with the projective transform ``matrix`` (8 floats mapping each *output*
    pixel (x, y) to the input point ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
    k = c0 x + c1 y + 1), nearest neighbour, grey outside the image."""
    tf = import_tf()
    image = _check_image(image)
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=shape[:2], fill_value=float(FILL_VALUE), interpolation="NEAREST",
        fill_mode="CONSTANT")
    return out[0]


def rotate(image, degrees):
    """Rotate about the image centre by ``degrees`` (counter-clockwise as displayed for
    positive angles)."""
    tf = import_tf()
    image = _check_image(image)
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(radians), tf.sin(radians)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    return _transform(image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]))


def shear_x(image, level):
    """Output pixel (x, y) takes the input at (x + level * y, y)."""
    tf = import_tf()
    level = tf.cast(level, tf.float32)
    return _transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level):
    """Output pixel (x, y) takes the input at (x, level * x + y)."""
    tf = import_tf()
    level = tf.cast(level, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]))


def translate_x(image, pixels):
    """Output pixel (x, y) takes the input at (x + pixels, y): content moves left."""
    tf = import_tf()
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
    """Output pixel (x, y) takes the input at (x, y + pixels): content moves up."""
    tf = import_tf()
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]))


def cutout(image, pad_size: int, center):
    """Paint rows ``[cy - pad, cy + pad)`` and columns ``[cx - pad, cx + pad)`` (cut at the
    border) grey; ``center`` is (cy, cx)."""
    tf = import_tf()
    image = _check_image(image)
    shape = tf.shape(image)
    center = tf.cast(center, tf.int32)
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    inside = ((rows >= center[0] - pad_size) & (rows < center[0] + pad_size)
              & (cols >= center[1] - pad_size) & (cols < center[1] + pad_size))
    return tf.where(inside, tf.constant(FILL_VALUE, tf.uint8), image)


# ---------------------------------------------------------------------------------------
# random application


def _draws(seed, shape):
    """(op index, sign, Cutout centre seed) of one layer from its seed."""
    tf = import_tf()
    op_seed, sign_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    op = tf.random.stateless_uniform([], op_seed, minval=0, maxval=len(OPS), dtype=tf.int32)
    # The reference keeps the sign when floor(u + 0.5) is 1, i.e. u >= 0.5.
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) >= 0.5, 1.0, -1.0)
    cy_seed, cx_seed = tf.unstack(tf.random.experimental.stateless_split(cutout_seed, 2))
    cy = tf.random.stateless_uniform([], cy_seed, minval=0, maxval=shape[0], dtype=tf.int32)
    cx = tf.random.stateless_uniform([], cx_seed, minval=0, maxval=shape[1], dtype=tf.int32)
    return op, sign, tf.stack([cy, cx])


def _size(image):
    """(height, width) of ``image``: Python ints when known statically, else tensors."""
    tf = import_tf()
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None:
        shape = tf.shape(image)
        return shape[0], shape[1]
    return int(height), int(width)


def _apply(image, name: str, magnitude: float, sign, center, geometry: str = "relative"):
    arg = op_argument(name, magnitude, size=_size(image), geometry=geometry)
    if name in SIGNED_OPS:
        arg = sign * arg
    ops = {
        "AutoContrast": lambda: autocontrast(image),
        "Equalize": lambda: equalize(image),
        "Invert": lambda: invert(image),
        "Rotate": lambda: rotate(image, arg),
        "Posterize": lambda: posterize(image, arg),
        "Solarize": lambda: solarize(image, arg),
        "SolarizeAdd": lambda: solarize_add(image, arg),
        "Color": lambda: color(image, arg),
        "Contrast": lambda: contrast(image, arg),
        "Brightness": lambda: brightness(image, arg),
        "Sharpness": lambda: sharpness(image, arg),
        "ShearX": lambda: shear_x(image, arg),
        "ShearY": lambda: shear_y(image, arg),
        "TranslateX": lambda: translate_x(image, arg),
        "TranslateY": lambda: translate_y(image, arg),
        "Cutout": lambda: cutout(image, arg, center),
    }
    return ops[name]()


def apply_op(image_uint8, name: str, magnitude: float, seed=0, *,
             geometry: str = "relative"):
    """Apply RandAugment op ``name`` at ``magnitude`` as one RandAugment layer would.

    The seed decides the sign of signed ops and Cutout's centre (the op is fixed);
    ``geometry`` how Translate and Cutout sizes follow the image (:data:`GEOMETRIES`).
    Returns a uint8 (H, W, 3) tensor.
    """
    tf = import_tf()
    if name not in OPS:
        raise unknown_value_error("RandAugment op", name, OPS)
    _check_geometry(geometry)
    image = _check_image(image_uint8)
    _, sign, center = _draws(as_seed(seed), tf.shape(image))
    return _apply(image, name, magnitude, sign, center, geometry)


def randaugment(image_uint8, num_layers: int, magnitude: float, *, seed,
                geometry: str = "relative"):
    """RandAugment: ``num_layers`` times, one of :data:`OPS` chosen uniformly, at
    ``magnitude``. uint8 (H, W, 3) in, uint8 (H, W, 3) out; ``num_layers = 0`` returns the
    image unchanged. The same seed gives the same result eagerly and in ``tf.data``.
    ``geometry``: Translate and Cutout as fractions of the picture ("relative", the
    authors' pixels at 224 px) or the authors' absolute pixels ("pixels")."""
    tf = import_tf()
    _check_geometry(geometry)
    if int(num_layers) < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    if float(magnitude) < 0:
        raise ValueError(f"magnitude must be >= 0, got {magnitude}")
    image = _check_image(image_uint8)
    if int(num_layers) == 0:
        return image
    static_shape = image.shape
    seeds = tf.random.experimental.stateless_split(as_seed(seed), int(num_layers))
    for layer in range(int(num_layers)):
        op, sign, center = _draws(seeds[layer], tf.shape(image))
        branches = [
            (lambda name=name, img=image, sign=sign, center=center:
             _apply(img, name, magnitude, sign, center, geometry))
            for name in OPS
        ]
        image = tf.switch_case(op, branches)
        image.set_shape(static_shape)
    return image


def randaugment_setting(image_uint8, aug: str, *, seed, geometry: str = "relative"):
    """RandAugment with the layers and magnitude of an augmentation setting, named as in the
    index and checkpoint names (``none``, ``light0``, ``light1``, ``medium1``, ``medium2``,
    ``strong1``, ``strong2``; index ``light0``/``light1`` are the paper's light1/light2).
    The setting's Mixup alpha is applied to batches by :func:`augreg_nb.mixup.mixup`;
    ``geometry`` as for :func:`randaugment`."""
    if aug not in AUGMENTATIONS:
        raise unknown_value_error("augmentation setting (index name)", aug, AUG_NAMES)
    setting = AUGMENTATIONS[aug]
    return randaugment(image_uint8, setting.randaug_layers, setting.randaug_magnitude,
                       seed=seed, geometry=geometry)
