"""Image pre-processing of the AugReg transfer protocol, as TensorFlow ops.

The same functions run eagerly (one image in a notebook) and inside ``tf.data`` pipelines,
and give identical results for the same seed because every random choice is a *stateless*
op driven by an explicit seed: ``tf.random.experimental.stateless_split(seed, 2)`` gives
the crop seed and the flip seed, in that order.

Training, ``mode=`` (``train_preprocess``):

- ``"inception_crop"`` (default; big_vision ``configs/transfer.py``, ``crop="inception_crop"``:
  ``inception_crop(r)|flip_lr``): a random box of 5%..100% of the image area with aspect
  ratio 0.75..1.33 (``tf.image.sample_distorted_bounding_box``), bilinear resize of the box
  to r x r (no antialias), cast back to uint8 by truncation, random horizontal flip.
- ``"resize_random_crop"`` (big_vision's ``crop="resize_crop"``: ``resize(R)|random_crop(r)|
  flip_lr``): bilinear resize of the whole image to R x R with R = ``eval_resize_size(r)``
  (448 for 384, 256 for 224), truncated to uint8, a random r x r crop, random flip. Gentler
  than the inception crop on tiny images (the smoke preset uses it).
- ``"random_crop"`` (vit_jax ``input_pipeline.py``): the same random 5%..100% box as the
  inception crop, bilinear resize to r x r *kept in float* (vit_jax never returns to uint8),
  random flip.
- ``"resize"`` (VTAB's own input code, task_adaptation): bilinear resize of the whole image
  to r x r kept in float, nothing random: the same pixels as the evaluation mode
  ``"resize"``. For tasks whose label is a position, an angle, a count or a depth in the
  picture, which a crop can cut out or move and a mirror can change
  (``augreg_nb.vtab.TRAIN_PREPROCESS`` says which task uses which mode and why).
- ``"resize_flip"``: ``"resize"`` then the random horizontal flip, for tasks where what the
  label depends on may sit anywhere in the picture but left and right mean nothing.

Evaluation, ``mode=`` (``eval_preprocess``):

- ``"resize_crop"`` (default; big_vision ``resize_small(R)|central_crop(r)``): resize the short
  side to R = ``eval_resize_size(r)`` keeping the aspect ratio (area interpolation, no
  antialias), truncate to uint8, centre crop r x r.
- ``"resize"`` (vit_jax): bilinear resize of the whole image to r x r, kept in float.

Every mode ends with ``x / 127.5 - 1`` (value range [-1, 1]; big_vision's
``value_range(-1, 1)`` gives the same float32 numbers, vit_jax's ``(x - 127.5) / 127.5``
differs by at most one float32 ulp). The big_vision modes return to uint8 after each resize
exactly as big_vision does, ``tf.cast`` of the clipped float, which truncates: outputs are
then k / 127.5 - 1 for k in 0..255, and a resized pixel is never brighter than its float
value (an area resize of a constant image of value v gives v or v - 1, since the float
result can land just below v).

Usage::

    from augreg_nb.preprocess import prepare_images, train_preprocess, eval_preprocess
    batch = prepare_images(["cat.jpg", pil_image, uint8_array], 224)  # (3, 224, 224, 3)
    x = train_preprocess(image_uint8, 224, seed=(0, 17))               # tf.Tensor
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TRAIN_MODES = ("inception_crop", "resize_random_crop", "random_crop", "resize", "resize_flip")
EVAL_MODES = ("resize_crop", "resize")
#: Random box of the inception crop and of vit_jax's crop: fraction of the image area, and
#: aspect ratio (width / height). Both reference implementations leave the aspect ratio at
#: tf.image.sample_distorted_bounding_box's default, 0.75..1.33 (not exactly 4/3).
AREA_RANGE = (0.05, 1.0)
ASPECT_RATIO_RANGE = (0.75, 1.33)
#: Short side before the centre crop, for the resolutions the paper uses.
_EVAL_RESIZE = {224: 256, 384: 448}


def import_tf():
    """Import TensorFlow with every accelerator hidden from it (JAX owns GPUs and TPUs).

    Safe to call many times; if TensorFlow had already initialised its devices, the hiding
    is skipped with a debug message (it then already runs wherever it was placed).
    """
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            "TensorFlow is needed for the input pipeline and image pre-processing but is not "
            "installed. Install the CPU build with: pip install 'augreg_nb[tf]' "
            "(on Colab and most accelerator images TensorFlow is already there)."
        ) from err

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError) as err:  # devices already initialised / no such kind
            log.debug("could not hide %s devices from TensorFlow: %s", kind, err)
    return tf


_warm_up_lock = threading.Lock()
_warm_up_thread: threading.Thread | None = None


def warm_up() -> threading.Thread:
    """Import TensorFlow and run the evaluation pre-processing once, in a background thread.

    The first pre-processing call of a kernel pays for importing TensorFlow (2-3 s on an idle
    2-core machine, much more under load). The inference panel calls this when it is built,
    so the import overlaps with the user loading a checkpoint and choosing images. A real
    call made before the warm-up ends simply waits for the import (Python's import lock)
    and raises any error itself, so a failure here is only logged. Idempotent; returns the
    thread (``join()`` it to wait).
    """
    global _warm_up_thread
    with _warm_up_lock:
        if _warm_up_thread is None:
            _warm_up_thread = threading.Thread(target=_warm_up, name="augreg_nb-tf-warm-up",
                                               daemon=True)
            _warm_up_thread.start()
        return _warm_up_thread


def _warm_up() -> None:
    try:
        eval_preprocess(np.zeros((8, 8, 3), np.uint8), 4)
    except Exception as err:  # the real call reports it (e.g. TensorFlow is missing)
        log.debug("pre-processing warm-up failed: %s", err)


def eval_resize_size(resolution: int) -> int:
    """Short side before the centre crop: 448 for 384, 256 for 224, else resolution * 8/7."""
    if resolution <= 0:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    return _EVAL_RESIZE.get(int(resolution), int(round(resolution * 8 / 7)))


def as_seed(seed: Any):
    """A stateless-op seed (int32 tensor of shape [2]) from an int, a pair or a tensor."""
    tf = import_tf()
    if isinstance(seed, int | np.integer):
        return tf.constant([int(seed), 0], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"seed must be an int or a pair of ints, got shape {seed.shape}")
    return tf.cast(seed, tf.int32)


def _check_image(image):
    tf = import_tf()
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(
            f"expected a uint8 image with values 0..255, got dtype {image.dtype.name}; decode "
            "with tf.io.decode_image(..., channels=3) or convert with np.asarray(img, np.uint8)"
        )
    if image.shape.rank != 3 or image.shape[-1] not in (3, None):
        raise ValueError(f"expected an image of shape (height, width, 3), got {image.shape}")
    return image


def _resize_uint8(image, size, method: str):
    """Resize like big_vision's ``resize`` and ``resize_small``: float resize without
    antialias, clipped to 0..255, then ``tf.cast`` back to uint8, which truncates."""
    tf = import_tf()
    resized = tf.image.resize(image, size, method=method, antialias=False)
    return tf.cast(tf.clip_by_value(resized, 0.0, 255.0), tf.uint8)


def _random_area_crop(image, seed):
    """The random box of 5%..100% of the area (aspect 0.75..1.33) cut out of ``image``."""
    tf = import_tf()
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    crop.set_shape([None, None, 3])
    return crop


def value_range(image):
    """uint8 0..255 -> float32 in [-1, 1] (x / 127.5 - 1), the AugReg input range."""
    tf = import_tf()
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def train_preprocess(image_uint8, resolution: int, *, seed, mode: str = "inception_crop"):
    """Training augmentation for one uint8 image (H, W, 3) -> float32 (r, r, 3) in [-1, 1]:
    :func:`train_crop_flip`, then the value range."""
    return value_range(train_crop_flip(image_uint8, resolution, seed=seed, mode=mode))


def train_crop_flip(image_uint8, resolution: int, *, seed, mode: str = "inception_crop"):
    """The random crop and flip of training, before the value range: (r, r, 3) pixels in
    [0, 255] (uint8; float for ``"random_crop"``, ``"resize"`` and ``"resize_flip"``).
    Pixel-level augmentation such as RandAugment goes between this and :func:`value_range`.

    ``seed`` is an int or a pair of ints (a tensor inside tf.data); the same seed gives the
    same crop and flip eagerly and in a pipeline. ``mode`` is ``"inception_crop"`` (paper,
    big_vision), ``"resize_random_crop"`` (big_vision's resize then random crop),
    ``"random_crop"`` (vit_jax's crop), ``"resize"`` (VTAB: the whole image, no flip) or
    ``"resize_flip"``; the module docstring says exactly what each does.
    """
    tf = import_tf()
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown train pre-processing mode {mode!r}; use one of {TRAIN_MODES}")
    image = _check_image(image_uint8)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(as_seed(seed), 2))
    size = (resolution, resolution)
    if mode in ("resize", "resize_flip"):  # the whole picture: nothing cut out or moved
        image = tf.image.resize(image, size, method="bilinear", antialias=False)
        if mode == "resize":
            return image
    elif mode == "inception_crop":
        image = _resize_uint8(_random_area_crop(image, crop_seed), size, "bilinear")
    elif mode == "resize_random_crop":
        big = eval_resize_size(resolution)
        image = _resize_uint8(image, (big, big), "bilinear")
        image = tf.image.stateless_random_crop(image, (resolution, resolution, 3), crop_seed)
    else:  # vit_jax: float resize, no return to uint8
        crop = _random_area_crop(image, crop_seed)
        image = tf.image.resize(crop, size, method="bilinear", antialias=False)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def eval_preprocess(image_uint8, resolution: int, mode: str = "resize_crop"):
    """Deterministic evaluation pre-processing: uint8 (H, W, 3) -> float32 (r, r, 3).

    ``"resize_crop"`` (paper, big_vision): resize the short side to
    ``eval_resize_size(resolution)`` with area interpolation, keeping the aspect ratio,
    truncate to uint8, then crop the centre. ``"resize"`` (vit_jax): bilinear resize of the
    whole image to resolution x resolution, kept in float.
    """
    tf = import_tf()
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval pre-processing mode {mode!r}; use one of {EVAL_MODES}")
    image = _check_image(image_uint8)
    if mode == "resize":
        resized = tf.image.resize(image, (resolution, resolution), "bilinear", antialias=False)
        return value_range(resized)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    factor = tf.cast(eval_resize_size(resolution), tf.float32) / tf.cast(
        tf.minimum(h, w), tf.float32
    )
    new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * factor), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * factor), tf.int32)
    image = _resize_uint8(image, tf.stack([new_h, new_w]), "area")
    top = (new_h - resolution) // 2
    left = (new_w - resolution) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, resolution, resolution)
    return value_range(image)


def decode_image(encoded):
    """Decode JPEG/PNG/GIF/BMP bytes to a uint8 (H, W, 3) tensor (grey becomes RGB)."""
    tf = import_tf()
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _to_uint8_array(item: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(item, str | Path):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except OSError as err:
            raise ValueError(f"cannot read image {str(path)!r}: {err}") from err
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"), dtype=np.uint8)
    array = np.asarray(item)
    if array.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 pixels 0..255, got an array of dtype {array.dtype}; if the values "
            "are in [0, 1], pass (array * 255).round().astype(np.uint8)"
        )
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W, 3), got {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[..., :3]


def prepare_images(images: Any, resolution: int, mode: str = "resize_crop") -> np.ndarray:
    """Images ready for a model: float32 array (N, resolution, resolution, 3) in [-1, 1].

    ``images`` is one image or a sequence of them; each may be a file path, a PIL image or
    a uint8 array (H, W, 3). A uint8 array of shape (N, H, W, 3) is a batch. The evaluation
    pre-processing (``mode``, see ``eval_preprocess``) is applied to each image.
    """
    from PIL import Image

    if isinstance(images, str | Path | Image.Image):
        items: Sequence[Any] = [images]
    elif isinstance(images, np.ndarray):
        items = list(images) if images.ndim == 4 else [images]
    else:
        items = list(images)
    if not items:
        raise ValueError("prepare_images got no images")
    out = [np.asarray(eval_preprocess(_to_uint8_array(x), resolution, mode)) for x in items]
    return np.stack(out).astype(np.float32)
