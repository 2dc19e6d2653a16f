"""Each VTAB task's training inputs still carry its label (``augreg_nb.vtab.TRAIN_PREPROCESS``).

For the tasks whose label can be read off the picture, the examples are drawn with a known
label: a shape at a known x position (dSprites location), at a known angle (dSprites
orientation, a stand-in for sNORB's azimuth), a known number of objects (Clevr count), a mark
inside or outside the centre of the patch (Camelyon). They go through the real training
input pipeline (TFDS -> ``make_train_dataset`` with the task's own pre-processing) many
times with different random draws, and the label is read back from every output picture.
The same check run with the paper's generic inception crop and flip fails, which shows the
check can tell.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_datasets")

from scipy import ndimage  # noqa: E402

from augreg_nb import input_pipeline as ip  # noqa: E402
from augreg_nb import vtab  # noqa: E402
from augreg_nb.mock_tfds import mock_tfds  # noqa: E402
from augreg_nb.tasks import get_task  # noqa: E402

#: Examples per mock split and training batches read: every example is drawn
#: BATCHES * BATCH / EXAMPLES times, each time with another random crop / flip seed.
EXAMPLES, BATCH, BATCHES = 16, 16, 6


def _rng(ex) -> np.random.Generator:
    return np.random.default_rng(int(np.asarray(ex["image"], np.int64).sum()))


def _paint_disc(image, cy, cx, r, value):
    """Set the pixels within r of (cy, cx) (only its bounding box is computed)."""
    y0, x0 = max(0, int(cy - r) - 1), max(0, int(cx - r) - 1)
    yy, xx = np.mgrid[y0:min(image.shape[0], int(cy + r) + 2),
                      x0:min(image.shape[1], int(cx + r) + 2)]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[yy[inside], xx[inside]] = value


# ----------------------------------------------------------------------------- pictures


def _dsprites_x(p: int) -> float:
    """Pixel column of dSprites x position p (0..31) in the 64 px picture."""
    return 8 + p * 48 / 31


def draw_dsprites(name, ex):
    """A 6 px square at the x position of label_x_position, and a disc at the angle of
    label_orientation 20 px from the centre (pixels 0/1 as TFDS stores dSprites)."""
    rng = _rng(ex)
    image = np.zeros((64, 64, 1), np.uint8)
    if DRAWING["what"] == "location":
        p = int(rng.integers(0, 32))
        cx, cy = _dsprites_x(p), rng.uniform(10, 54)
        top, left = round(cy - 2.5), round(cx - 2.5)  # centroid within 0.5 px of (cy, cx)
        image[top:top + 6, left:left + 6] = 1
        return {**ex, "image": image, "label_x_position": np.int64(p)}
    v = int(rng.integers(0, 40))
    angle = 2 * math.pi * v / 40
    _paint_disc(image, 32 + 20 * math.sin(angle), 32 + 20 * math.cos(angle), 5, 1)
    return {**ex, "image": image, "label_orientation": np.int64(v)}


DRAWING = {"what": "location"}


def draw_clevr(name, ex):
    """3..10 bright discs far apart on a dark 480x320 picture, anywhere in it."""
    rng = _rng(ex)
    n = int(rng.integers(3, 11))
    centres: list[tuple[float, float]] = []
    while len(centres) < n:
        c = (rng.uniform(22, 298), rng.uniform(22, 458))
        if all(math.dist(c, d) > 70 for d in centres):
            centres.append(c)
    image = np.full((320, 480, 3), 30, np.uint8)
    for cy, cx in centres:
        _paint_disc(image, cy, cx, 18, 220)
    objects = {k: v[:n] for k, v in ex["objects"].items()}
    return {**ex, "image": image, "objects": objects}


def draw_camelyon(name, ex):
    """A grey 96 px patch with a red 6 px mark: inside the centre 32 px (label 1) or well
    outside it (label 0)."""
    rng = _rng(ex)
    label = int(rng.integers(0, 2))
    image = np.full((96, 96, 3), 128, np.uint8)
    if label:
        y, x = rng.integers(36, 55, 2)
    else:
        while True:
            y, x = rng.integers(4, 87, 2)
            if max(abs(y + 3 - 48), abs(x + 3 - 48)) > 30:
                break
    image[y:y + 6, x:x + 6] = (255, 0, 0)
    return {**ex, "image": image, "label": np.int64(label)}


# ----------------------------------------------------------------------------- reading back


def _pixels(image: np.ndarray) -> np.ndarray:
    return (np.asarray(image, np.float64) + 1) * 127.5


def read_location(image) -> int:
    """The bin (floor(p / 2)) of the square's x position, from its centroid."""
    mask = _pixels(image)[..., 0] > 127
    if not mask.any():
        return -1
    x = ndimage.center_of_mass(mask)[1] * 64 / mask.shape[1] + 0.5 * 64 / mask.shape[1] - 0.5
    p = round((x - 8) * 31 / 48)
    return p // 2


def read_orientation(image) -> int:
    """The bin (floor(v / 2.5)) of the disc's angle around the picture's centre."""
    mask = _pixels(image)[..., 0] > 127
    if not mask.any():
        return -1
    r = mask.shape[0]
    cy, cx = ndimage.center_of_mass(mask)
    angle = math.atan2(cy - (r - 1) / 2, cx - (r - 1) / 2) % (2 * math.pi)
    v = round(angle / (2 * math.pi / 40)) % 40
    return int(math.floor(v / 2.5))


def read_count(image) -> int:
    """Objects in the picture minus 3 (Clevr count's label)."""
    _, n = ndimage.label(_pixels(image)[..., 0] > 125)
    return n - 3


def read_camelyon(image) -> int:
    """1 when a red pixel lies in the centre third of the patch (its 32 of 96 px)."""
    px = _pixels(image)
    red = (px[..., 0] - px[..., 1]) > 60
    r = red.shape[0]
    return int(red[r // 3:r - r // 3, r // 3:r - r // 3].any())


CASES = {
    # task: (draw, read, resolution, what)
    "dsprites_location": (draw_dsprites, read_location, 64, "location"),
    "dsprites_orientation": (draw_dsprites, read_orientation, 64, "orientation"),
    "clevr_count": (draw_clevr, read_count, 96, None),
    "camelyon": (draw_camelyon, read_camelyon, 48, None),
}


def carried(name: str, *, generic: bool = False, seed: int = 0, split: str = "train") -> float:
    """The fraction of training outputs (or of ``split``'s evaluation outputs) whose picture
    still shows their label."""
    draw, read, resolution, what = CASES[name]
    DRAWING["what"] = what
    task = get_task(f"vtab1k/{name}")
    mode = None
    if generic:  # the paper's generic crop and flip, which the task refuses by name
        task = dataclasses.replace(task, train_preprocess=None)
        mode = "inception_crop"
    kept = total = 0
    with mock_tfds(num_examples=EXAMPLES, seed=3, edit=draw):
        if split == "train":
            ds = ip.make_train_dataset(task, resolution=resolution, batch_size=BATCH,
                                       seed=seed, preprocess_mode=mode,
                                       shuffle_buffer=EXAMPLES).take(BATCHES)
        else:
            ds = ip.make_eval_dataset(task, split, resolution=resolution, batch_size=BATCH)
        for batch in ds.as_numpy_iterator():
            for image, label in zip(batch["image"], batch["label"], strict=True):
                kept += read(image) == int(label)
                total += 1
    assert total == (BATCH * BATCHES if split == "train" else EXAMPLES)
    return kept / total


@pytest.mark.parametrize("name", list(CASES))
def test_the_training_pipeline_keeps_the_label(name):
    assert carried(name) == 1.0


@pytest.mark.parametrize("name", list(CASES))
def test_the_generic_crop_and_flip_would_lose_it(name):
    # The check can fail: with the paper's generic inception crop and flip, many outputs no
    # longer show their label (about 10% kept for dSprites location in the measure).
    assert carried(name, generic=True) < 0.8


@pytest.mark.parametrize("name", ["clevr_count", "dsprites_location"])
def test_evaluation_keeps_the_label_too(name):
    # The generic evaluation's centre crop of Clevr's 480x320 picture would cut its sides.
    assert carried(name, split="test") == 1.0


def test_reading_back_the_drawn_labels_is_exact():
    # The readers are right on the drawings themselves (before any pre-processing).
    from augreg_nb.preprocess import value_range

    for name, (draw, read, _, what) in CASES.items():
        DRAWING["what"] = what
        task = vtab.SPECS[name].task()
        for i in range(20):
            seed_image = np.random.default_rng(i).integers(0, 255, (10, 10, 3), np.uint8)
            ex = {"image": seed_image, "objects": {"size": np.zeros(10, np.int64)},
                  "label_x_position": 0, "label_orientation": 0, "label": 0}
            ex = draw(name, ex)
            pixels = ex["image"] * (255 if name.startswith("dsprites") else 1)
            pixels = np.repeat(pixels, 3, -1) if pixels.shape[-1] == 1 else pixels
            want = int(task.label_fn(ex)) if task.label_fn is not None else int(ex["label"])
            assert read(np.asarray(value_range(pixels.astype(np.uint8)))) == want, (name, i)


def test_structured_tasks_are_resized_whole_and_others_say_why():
    for name, spec in vtab.SPECS.items():
        train, evaluation, why = vtab.TRAIN_PREPROCESS[name]
        task = spec.task(vtab.FULL)
        assert why and task.description
        if spec.group == "structured":
            assert (train, evaluation) == ("resize", "resize"), name
            assert task.train_preprocess == "resize" and task.eval_preprocess == "resize"
        elif train == vtab.GENERIC:
            assert task.train_preprocess is None  # the config's inception crop and flip
    assert vtab.TRAIN_PREPROCESS["svhn"][0] == "resize"
    assert vtab.TRAIN_PREPROCESS["camelyon"][0] == "resize_flip"


def test_another_mode_for_a_task_with_its_own_is_refused_with_the_fix():
    task = get_task("vtab/dsprites_location")
    assert ip.task_preprocess(task, None) == "resize"
    assert ip.task_preprocess(task, "resize") == "resize"
    with pytest.raises(ValueError, match="train_preprocess='resize'.*--set train_preprocess"):
        ip.task_preprocess(task, "inception_crop")
    with pytest.raises(ValueError, match="eval_preprocess='resize'"):
        ip.task_preprocess(task, "resize_crop", "eval")
    plain = get_task("vtab/dtd")
    assert ip.task_preprocess(plain, None) == "inception_crop"
    assert ip.task_preprocess(plain, "resize_random_crop") == "resize_random_crop"
    assert ip.task_preprocess(plain, None, "eval") == "resize_crop"


def test_presets_of_a_vtab_task_use_its_own_preprocessing():
    from augreg_nb import config as config_lib

    c = config_lib.preset_for("vtab1k/clevr_count", 500, 0.01, 224)
    assert (c.train_preprocess, c.eval_preprocess) == ("resize", "resize")
    config_lib.validate(c)
    c = config_lib.preset_for("vtab1k/camelyon", 500, 0.01, 224)
    assert (c.train_preprocess, c.eval_preprocess) == ("resize_flip", "resize_crop")
    c = config_lib.preset_for("cifar100", 500, 0.01, 224)
    assert c.train_preprocess == "inception_crop"


def test_a_task_set_by_override_brings_its_own_preprocessing():
    """``--set task=vtab/...`` (finetune) and ``sweep --task`` train the task as it must be
    trained, not with the preset's crop; a mode named in the same overrides stays, for the
    input pipeline to refuse with its fix."""
    from augreg_nb import config as config_lib

    c = config_lib.apply_overrides(config_lib.get_config("smoke"),
                                   ["task=vtab/dsprites_location"])
    assert (c.train_preprocess, c.eval_preprocess) == ("resize", "resize")
    c = config_lib.apply_overrides(config_lib.get_config("smoke"), ["task=vtab/dtd"])
    assert (c.train_preprocess, c.eval_preprocess) == ("resize_random_crop", "resize_crop")
    c = config_lib.apply_overrides(
        config_lib.get_config("smoke"),
        ["task=vtab/clevr_count", "train_preprocess=inception_crop"])
    assert (c.train_preprocess, c.eval_preprocess) == ("inception_crop", "resize")


def test_preprocess_table_is_in_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert vtab.preprocess_table() in readme


def test_resize_modes_keep_the_whole_picture():
    from augreg_nb.preprocess import eval_preprocess, train_preprocess

    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), np.uint8)
    want = eval_preprocess(image, 16, "resize").numpy()
    for s in range(5):  # no randomness: every seed gives the evaluation's pixels
        np.testing.assert_array_equal(train_preprocess(image, 16, seed=s, mode="resize"), want)
    flips = {train_preprocess(image, 16, seed=s, mode="resize_flip").numpy().tobytes()
             for s in range(12)}
    assert flips == {want.tobytes(), want[:, ::-1].tobytes()}
