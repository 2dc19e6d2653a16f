"""The 19 VTAB tasks, as the VTAB task definitions (google-research/task_adaptation) give them.

    from augreg_nb.tasks import get_task
    from augreg_nb import vtab
    task = get_task("vtab1k/clevr_count")     # VTAB-1k: train800 / val200 / test
    task.split("train"), task.split("val")    # 'train[:800]', 'train[63000:63200]'
    task.split("trainval")                    # 'train[:800]+train[63000:63200]'
    full = get_task("vtab/clevr_count")       # full splits: train / val / test
    vtab.names("structured")                  # ('clevr_count', 'clevr_distance', ...)
    vtab.SPECS["dsprites_location"].label_rule

Every task is registered twice: ``vtab/<name>`` with VTAB's full train / val / test splits
and ``vtab1k/<name>`` with VTAB-1k's 800 training and 200 validation examples (the test
split is the same). Both also carry a ``trainval`` split: train+val for the full variant and
VTAB's ``train800val200`` for the 1k variant. The paper's Table 5 reports the full
variant (its numbers need the full training sets); VTAB-1k is the standard cheap benchmark.
The paper's VTAB sweep of a checkpoint over these tasks is ``augreg_nb.vtab_run``
(``augreg-nb vtab``).

The paper's own fine-tuning tasks ``cifar100``, ``oxford_iiit_pet``, ``resisc45`` and
``kitti`` (``augreg_nb.tasks``) keep the splits of the paper's sweep (protocol.md) and stay
separate entries. CIFAR-100 (val = last 2% of train, VTAB: 10%) and Pets (last 10%, VTAB:
20%) differ from VTAB; Resisc45 (60/20/20 of train at TFDS's default 3.0.0) and KITTI
(kitti:3.1.0, TFDS splits, the same label) select the same examples as ``vtab/resisc45``
and ``vtab/kitti_distance``.

Splits. VTAB cuts splits in four ways, recorded in ``VtabSpec.splits`` as TFDS split strings:

- TFDS has a validation split (DTD, Flowers102, Sun397, Camelyon, Retinopathy, DMLab, KITTI):
  train / validation / test as TFDS has them; 1k: ``train[:800]``, ``validation[:200]``.
- Validation carved from the end of TFDS train (Caltech101, CIFAR-100, Pets, SVHN, Clevr):
  the first ``p%`` of train (rounded down) trains, the rest validates; 1k: ``train[:800]``
  and the first 200 validation examples. Clevr's test split is TFDS ``validation`` (TFDS's
  Clevr test split has no objects).
- Everything from TFDS train (EuroSAT, Resisc45: 60/20/20; dSprites: 80/10/10).
- sNORB: train is TFDS train; val and test are the two halves of TFDS test.

The boundaries depend on the TFDS split sizes, so the split strings hold absolute indices
computed from the sizes VTAB's own tests state (``VtabSpec.tfds_sizes``); ``expected_sizes``
gives the resulting train / val / test counts to check a prepared dataset against.

Versions. VTAB asks TFDS for a version pattern (``VtabSpec.vtab_version``, e.g. ``3.*.*``)
which TFDS resolves to its default version of that major; the task pins the version the
installed TFDS resolves it to (``VtabSpec.version``). One pattern no longer resolves: VTAB
reads ``oxford_iiit_pet:3.*.*``, and TFDS only has ``4.0.0`` (head boxes added, corrupt
images fixed; 37 classes and 3680 / 3669 examples as before), so Pets reads 4.0.0.

Labels. Most tasks read a TFDS class label; the structured ones compute it (``label_fn``,
called on the TFDS example inside tf.data): see ``ObjectCount``, ``ClosestObjectBin``,
``CoarseBins`` and ``ClosestVehicleDistance``. Grey images (dSprites, sNORB) become RGB by
repeating the channel, as VTAB does (the package decodes every image to 3 channels);
dSprites pixels are 0/1 in TFDS and are scaled to 0/255 (``binary_to_uint8``) as in VTAB.

Pre-processing. Each task trains with a pre-processing chosen by name so that its label
survives (``TRAIN_PREPROCESS``: task -> train mode, eval mode, why): the structured group is
resized whole, as VTAB's own input code does, since a crop can cut out or move what its
label counts or locates and a mirror changes a position or an angle; SVHN is resized too
(its label is the digit in the centre), Camelyon and Retinopathy are resized and mirrored
(the label is in the patch's centre / anywhere in the retina, left and right mean nothing);
the other natural and specialized tasks keep the paper's inception crop and flip, which
keep a category. ``Task.train_preprocess`` / ``eval_preprocess`` carry the choice and the
input pipeline refuses another one (``augreg_nb.input_pipeline.task_preprocess``).
``preprocess_table()`` is the README's table of it.

The table of the 19 tasks (name, group, TFDS name:version, splits, classes, label rule) is
``markdown_table()``; README.md shows it ("The 19 VTAB tasks").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from augreg_nb.preprocess import import_tf
from augreg_nb.protocol import VTAB_SWEEP
from augreg_nb.task_types import (
    KITTI_DISTANCE_NAMES,
    KITTI_TFDS_VERSION,
    RESISC45_MANUAL,
    ClosestVehicleDistance,
    ManualDownload,
    Task,
)

GROUPS = ("natural", "specialized", "structured")
#: The VTAB split names: full (train, val, trainval, test) and VTAB-1k's.
SPLIT_NAMES = ("train", "val", "trainval", "test", "train800", "val200", "train800val200")
#: Run lengths of the paper's VTAB sweep (with LEARNING_RATES; best run chosen on val).
SWEEP_STEPS = VTAB_SWEEP.steps
#: Registry prefixes: full splits and VTAB-1k.
FULL, ONE_K = "vtab", "vtab1k"


# ----------------------------------------------------------------------------- labels


def _tf():
    return import_tf()


@dataclasses.dataclass(frozen=True)
class ObjectCount:
    """Label = number of objects - ``offset`` (Clevr count: 3..10 objects -> 0..7).

    The objects are counted by the length of ``objects[field]``.
    """

    field: str = "size"
    offset: int = 3

    def __call__(self, example: Mapping[str, Any]):
        tf = _tf()
        return tf.cast(tf.size(example["objects"][self.field]) - self.offset, tf.int64)


@dataclasses.dataclass(frozen=True)
class ClosestObjectBin:
    """Bin of the nearest object's depth (Clevr distance).

    ``d`` = the smallest ``objects[field][:, axis]`` (Clevr: pixel_coords[:, 2], the depth);
    the label is the index of the last threshold below ``d``, i.e. the number of
    thresholds strictly below ``d`` minus one: d in (0, 8] -> 0, (8, 8.5] -> 1, ...,
    (10, 100] -> 5.
    """

    thresholds: tuple[float, ...] = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
    field: str = "pixel_coords"
    axis: int = 2

    def __call__(self, example: Mapping[str, Any]):
        tf = _tf()
        coords = tf.cast(example["objects"][self.field], tf.float32)
        dist = tf.reduce_min(coords[:, self.axis])
        below = tf.cast(tf.constant(self.thresholds, tf.float32) < dist, tf.int64)
        return tf.reduce_sum(below) - 1


@dataclasses.dataclass(frozen=True)
class CoarseBins:
    """Merge neighbouring values of a class label: floor(value / (num_values / num_classes)).

    dSprites: x position (32 values) -> 16 bins of 2; orientation (40 values) -> 16 bins
    of 2.5 values each (computed in float32, as VTAB does).
    """

    key: str
    num_values: int
    num_classes: int

    def __call__(self, example: Mapping[str, Any]):
        # The bin width is computed here rather than in a property: tf.data's autograph may
        # convert a property getter it meets inside a traced call and then call it wrongly.
        tf = _tf()
        width = float(self.num_values) / self.num_classes
        value = tf.cast(example[self.key], tf.float32)
        return tf.cast(tf.math.floordiv(value, tf.constant(width, tf.float32)), tf.int64)


def binary_to_uint8(image):
    """dSprites pixels are 0 or 1 in TFDS; VTAB multiplies them by 255 (in uint8)."""
    tf = _tf()
    return image * tf.constant(255, image.dtype)


# ----------------------------------------------------------------------------- splits


def _with_validation(test: str = "test") -> dict[str, str]:
    """TFDS has train / validation / test."""
    return {
        "train": "train", "val": "validation", "trainval": "train+validation", "test": test,
        "train800": "train[:800]", "val200": "validation[:200]",
        "train800val200": "train[:800]+validation[:200]",
    }


def _val_from_train(n_train: int, train_percent: int, test: str = "test") -> dict[str, str]:
    """Validation = the end of TFDS train after its first train_percent% (rounded down)."""
    k = train_percent * n_train // 100
    return {
        "train": f"train[:{k}]", "val": f"train[{k}:]", "trainval": "train", "test": test,
        "train800": "train[:800]", "val200": f"train[{k}:{k + 200}]",
        "train800val200": f"train[:800]+train[{k}:{k + 200}]",
    }


def _all_from_train(n_train: int, train_percent: int, val_percent: int) -> dict[str, str]:
    """Train, val and test cut in this order from TFDS train (percentages rounded down)."""
    a = train_percent * n_train // 100
    b = a + val_percent * n_train // 100
    return {
        "train": f"train[:{a}]", "val": f"train[{a}:{b}]", "trainval": f"train[:{b}]",
        "test": f"train[{b}:]",
        "train800": "train[:800]", "val200": f"train[{a}:{a + 200}]",
        "train800val200": f"train[:800]+train[{a}:{a + 200}]",
    }


def _halves_of_test() -> dict[str, str]:
    """sNORB: train is TFDS train; val and test are the first and second half of TFDS test."""
    return {
        "train": "train", "val": "test[:50%]", "trainval": "train+test[:50%]",
        "test": "test[50%:]",
        "train800": "train[:800]", "val200": "test[:200]",
        "train800val200": "train[:800]+test[:200]",
    }


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class VtabSpec:
    """One VTAB task as task_adaptation defines it."""

    name: str  # registry name after "vtab/" or "vtab1k/"
    group: str  # natural / specialized / structured
    column: str  # the paper's Table 5 column
    tfds_name: str  # TFDS dataset (with config)
    version: str  # the TFDS version read (what the installed TFDS resolves VTAB's to)
    vtab_version: str  # the version (pattern) VTAB's definition asks for
    num_classes: int
    splits: Mapping[str, str]  # SPLIT_NAMES -> TFDS split string
    tfds_sizes: Mapping[str, int]  # TFDS split -> examples (as VTAB's own tests state)
    label_rule: str  # in words
    label_key: str = "label"
    label_fn: Callable[[Mapping[str, Any]], Any] | None = None
    image_fn: Callable[[Any], Any] | None = None
    class_names: tuple[str, ...] | None = None
    manual: ManualDownload | None = None

    @property
    def tfds_spec(self) -> str:
        return f"{self.tfds_name}:{self.version}"

    def task(self, variant: str = ONE_K) -> Task:
        """The Task of this spec: ``"vtab1k"`` (VTAB-1k splits) or ``"vtab"`` (full)."""
        if variant == FULL:
            keys = {"train": "train", "val": "val", "test": "test", "trainval": "trainval"}
        elif variant == ONE_K:
            keys = {"train": "train800", "val": "val200", "test": "test",
                    "trainval": "train800val200"}
        else:
            raise ValueError(f"variant must be {FULL!r} or {ONE_K!r}, got {variant!r}")
        size = "full" if variant == FULL else "1k"
        train_pp, eval_pp, _ = TRAIN_PREPROCESS[self.name]
        return Task(
            name=f"{variant}/{self.name}",
            tfds_name=self.tfds_spec,
            splits={k: self.splits[v] for k, v in keys.items()},
            num_classes=self.num_classes,
            class_names=self.class_names,
            sweep_steps=SWEEP_STEPS,
            learning_rates=VTAB_SWEEP.learning_rates,
            label_key=self.label_key,
            label_fn=self.label_fn,
            image_fn=self.image_fn,
            manual=self.manual,
            train_preprocess=None if train_pp == GENERIC else train_pp,
            eval_preprocess=eval_pp,
            description=f"VTAB {self.column} ({self.group}, {size} splits): {self.label_rule}",
        )


def _bins(edges: tuple[float, ...], unit: str = "") -> tuple[str, ...]:
    return tuple(f"{lo:g}-{hi:g}{unit}" for lo, hi in zip(edges, edges[1:], strict=False))


_CLEVR_SIZES = {"train": 70_000, "validation": 15_000, "test": 15_000}
_DSPRITES_SIZES = {"train": 737_280}
_SMALLNORB_SIZES = {"train": 24_300, "test": 24_300}
_RETINOPATHY_MANUAL = ManualDownload(
    files=("train", "test", "sample", "trainLabels.csv"),
    url="https://www.kaggle.com/c/diabetic-retinopathy-detection/data (Kaggle account)",
    note="unpack train.zip into train/, test.zip into test/ and sample.zip into sample/, and "
    "put trainLabels.csv next to them in the manual dir; TFDS builds the btgraham-300 "
    "config from these",
)

_SPECS = (
    VtabSpec(
        "caltech101", "natural", "Caltech101", "caltech101", "3.0.2", "3.*.*", 102,
        _val_from_train(3060, 90), {"train": 3060, "test": 6084},
        "TFDS label (101 categories + background)",
    ),
    VtabSpec(
        "cifar100", "natural", "CIFAR-100", "cifar100", "3.0.2", "3.*.*", 100,
        _val_from_train(50_000, 90), {"train": 50_000, "test": 10_000}, "TFDS label",
    ),
    VtabSpec(
        "dtd", "natural", "DTD", "dtd", "3.0.1", "3.*.*", 47, _with_validation(),
        {"train": 1880, "validation": 1880, "test": 1880}, "TFDS label",
    ),
    VtabSpec(
        "flowers102", "natural", "Flowers102", "oxford_flowers102", "2.1.1", "2.*.*", 102,
        _with_validation(), {"train": 1020, "validation": 1020, "test": 6149}, "TFDS label",
    ),
    VtabSpec(
        "pets", "natural", "Pets", "oxford_iiit_pet", "4.0.0", "3.*.*", 37,
        _val_from_train(3680, 80), {"train": 3680, "test": 3669}, "TFDS label",
    ),
    VtabSpec(
        "sun397", "natural", "Sun397", "sun397/tfds", "4.0.0", "4.*.*", 397,
        _with_validation(), {"train": 76_128, "validation": 10_875, "test": 21_750},
        "TFDS label",
    ),
    VtabSpec(
        "svhn", "natural", "SVHN", "svhn_cropped", "3.1.0", "3.*.*", 10,
        _val_from_train(73_257, 90), {"train": 73_257, "test": 26_032}, "TFDS label",
    ),
    VtabSpec(
        "camelyon", "specialized", "Camelyon", "patch_camelyon", "2.0.0", "2.*.*", 2,
        _with_validation(), {"train": 262_144, "validation": 32_768, "test": 32_768},
        "TFDS label",
    ),
    VtabSpec(
        "eurosat", "specialized", "EuroSAT", "eurosat/rgb", "2.0.0", "2.*.*", 10,
        _all_from_train(27_000, 60, 20), {"train": 27_000}, "TFDS label",
    ),
    VtabSpec(
        "resisc45", "specialized", "Resisc45", "resisc45", "3.0.0", "3.*.*", 45,
        _all_from_train(31_500, 60, 20), {"train": 31_500}, "TFDS label",
        manual=RESISC45_MANUAL,
    ),
    VtabSpec(
        "retinopathy", "specialized", "Retinopathy",
        "diabetic_retinopathy_detection/btgraham-300", "3.0.0", "3.*.*", 5,
        _with_validation(), {"train": 35_126, "validation": 10_906, "test": 42_670},
        "TFDS label (severity 0-4)", manual=_RETINOPATHY_MANUAL,
    ),
    VtabSpec(
        "clevr_count", "structured", "Clevr-Count", "clevr", "3.1.0", "3.*.*", 8,
        _val_from_train(70_000, 90, test="validation"), _CLEVR_SIZES,
        "number of objects - 3", label_fn=ObjectCount(),
        class_names=tuple(f"{n} objects" for n in range(3, 11)),
    ),
    VtabSpec(
        "clevr_distance", "structured", "Clevr-Dist", "clevr", "3.1.0", "3.*.*", 6,
        _val_from_train(70_000, 90, test="validation"), _CLEVR_SIZES,
        "nearest object depth d = min pixel_coords[:, 2]: label = "
        "#{t in (0, 8, 8.5, 9, 9.5, 10, 100) : t < d} - 1",
        label_fn=ClosestObjectBin(), class_names=_bins(ClosestObjectBin().thresholds),
    ),
    VtabSpec(
        "dmlab", "structured", "DMLab", "dmlab", "2.0.1", "2.0.1", 6, _with_validation(),
        {"train": 65_550, "validation": 22_628, "test": 22_735}, "TFDS label",
    ),
    VtabSpec(
        "dsprites_location", "structured", "dSpr-Loc", "dsprites", "2.0.0", "2.*.*", 16,
        _all_from_train(737_280, 80, 10), _DSPRITES_SIZES,
        "floor(label_x_position / 2.0)", label_fn=CoarseBins("label_x_position", 32, 16),
        image_fn=binary_to_uint8, class_names=tuple(f"x {2 * i}-{2 * i + 1}" for i in range(16)),
    ),
    VtabSpec(
        "dsprites_orientation", "structured", "dSpr-Ori", "dsprites", "2.0.0", "2.*.*", 16,
        _all_from_train(737_280, 80, 10), _DSPRITES_SIZES,
        "floor(label_orientation / 2.5)", label_fn=CoarseBins("label_orientation", 40, 16),
        image_fn=binary_to_uint8, class_names=tuple(f"orientation bin {i}" for i in range(16)),
    ),
    VtabSpec(
        "kitti_distance", "structured", "KITTI-Dist", "kitti", KITTI_TFDS_VERSION,
        KITTI_TFDS_VERSION, 4, _with_validation(),
        {"train": 6347, "validation": 423, "test": 711},
        "nearest Car/Van/Truck depth d (1000 if none): d <= 8, <= 20, <= 999, else",
        label_fn=ClosestVehicleDistance(), class_names=KITTI_DISTANCE_NAMES,
    ),
    VtabSpec(
        "smallnorb_azimuth", "structured", "sNORB-Azim", "smallnorb", "2.0.0", "2.*.*", 18,
        _halves_of_test(), _SMALLNORB_SIZES, "TFDS label_azimuth", label_key="label_azimuth",
        class_names=tuple(f"{20 * i} deg" for i in range(18)),
    ),
    VtabSpec(
        "smallnorb_elevation", "structured", "sNORB-Elev", "smallnorb", "2.0.0", "2.*.*", 9,
        _halves_of_test(), _SMALLNORB_SIZES, "TFDS label_elevation",
        label_key="label_elevation", class_names=tuple(f"{30 + 5 * i} deg" for i in range(9)),
    ),
)
#: name -> VtabSpec, in the paper's Table 5 order.
SPECS: dict[str, VtabSpec] = {s.name: s for s in _SPECS}

# ----------------------------------------------------------------------------- pre-processing

#: The paper's training crop and flip (the config's default), kept where it keeps the label.
GENERIC = "inception_crop"
_CATEGORY = ("the label is a category: a part of the object or scene, or its mirror "
             "image, is still that category (the paper's crop and flip)")
_STRUCTURED = "resized whole as VTAB does: "
#: task -> (training mode, evaluation mode (None: the config's centre crop), why).
#: GENERIC means the config's train_preprocess (the paper's inception crop and flip).
TRAIN_PREPROCESS: dict[str, tuple[str, str | None, str]] = {
    "caltech101": (GENERIC, None, _CATEGORY),
    "cifar100": (GENERIC, None, _CATEGORY),
    "dtd": (GENERIC, None, "a texture: any patch of it, or its mirror, is the same texture"),
    "flowers102": (GENERIC, None, _CATEGORY),
    "pets": (GENERIC, None, _CATEGORY),
    "sun397": (GENERIC, None, _CATEGORY),
    "svhn": ("resize", None, "the label is the digit in the centre of a picture that also "
             "shows its neighbours: a crop can centre a neighbour or cut the digit, and a "
             "mirrored digit is no digit"),
    "camelyon": ("resize_flip", None, "the label says whether the centre 32x32 px of the "
                 "96 px patch holds tumour tissue: a crop moves or drops that centre; tissue "
                 "has no left and right, so the mirror stays"),
    "eurosat": (GENERIC, None, "the land cover of a small tile: any part of it, or its "
                "mirror, has the same cover"),
    "resisc45": (GENERIC, None, _CATEGORY),
    "retinopathy": ("resize_flip", None, "the grade comes from lesions anywhere in the "
                    "retina: a crop can cut them all out; left and right eyes are mirror "
                    "images, so the mirror stays"),
    "clevr_count": ("resize", "resize", _STRUCTURED + "a crop cuts objects out and changes "
                    "the count (so would the eval centre crop of the 480x320 picture)"),
    "clevr_distance": ("resize", "resize", _STRUCTURED + "a crop zooms (objects look "
                       "nearer) and can cut the nearest object out"),
    "dmlab": ("resize", "resize", _STRUCTURED + "the label says what is near and how far: "
              "a crop zooms and can cut it out"),
    "dsprites_location": ("resize", "resize", _STRUCTURED + "the label is the x position: "
                          "a crop moves it, a mirror reverses it"),
    "dsprites_orientation": ("resize", "resize", _STRUCTURED + "the label is the angle: a "
                             "mirror reverses it, a crop can cut the shape"),
    "kitti_distance": ("resize", "resize", _STRUCTURED + "the label is the nearest "
                       "vehicle's depth: a crop can cut it out or zoom (the eval centre "
                       "crop of the 1242x375 picture would drop two thirds of it)"),
    "smallnorb_azimuth": ("resize", "resize", _STRUCTURED + "the label is the viewing "
                          "angle: a mirror turns azimuth a into -a"),
    "smallnorb_elevation": ("resize", "resize", _STRUCTURED + "the label is the camera "
                            "height, read from the toy's apparent shape, which a crop's "
                            "zoom and aspect change"),
}


def preprocess_table() -> str:
    """Markdown: task -> training and evaluation pre-processing -> why (README.md)."""
    lines = ["| task | group | training | evaluation | why |", "|---|---|---|---|---|"]
    for name, spec in SPECS.items():
        train, evaluation, why = TRAIN_PREPROCESS[name]
        train = "inception_crop + flip" if train == GENERIC else train
        lines.append(f"| {name} | {spec.group} | {train} | {evaluation or 'resize_crop'} "
                     f"| {why} |")
    return "\n".join(lines)


def names(group: str | None = None) -> tuple[str, ...]:
    """The VTAB task names (all 19, or those of one group), in Table 5 order."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown VTAB group {group!r}; use one of {', '.join(GROUPS)}")
    return tuple(n for n, s in SPECS.items() if group is None or s.group == group)


def task_name(name: str, variant: str = ONE_K) -> str:
    """Registry name of a VTAB task: ``task_name("dmlab")`` -> "vtab1k/dmlab"."""
    if name not in SPECS:
        raise ValueError(f"unknown VTAB task {name!r}; use one of {', '.join(SPECS)}")
    return f"{variant}/{name}"


def expected_sizes(name: str, variant: str = FULL) -> dict[str, int]:
    """Examples in train / val / test (and trainval) of a task, from the TFDS split sizes."""
    task_name(name, variant)  # checks the name
    return {k: split_size(SPECS[name], s) for k, s in SPECS[name].task(variant).splits.items()}


def split_size(spec: VtabSpec, split: str) -> int:
    """Examples a split string of the table selects, given the spec's TFDS split sizes.

    Understands what the table uses: ``name``, ``name[a:b]`` with example indices or
    percentages (rounded to the closest example, as TFDS does), joined by ``+``.
    """
    total = 0
    for part in split.split("+"):
        match = re.fullmatch(r"(\w+)(?:\[(-?[\d.]*)(%?):(-?[\d.]*)(%?)\])?", part.strip())
        if match is None or match[1] not in spec.tfds_sizes:
            raise ValueError(f"cannot read split {part!r} of {spec.name} ({split!r})")
        n = spec.tfds_sizes[match[1]]

        def bound(text: str, pct: str, default: int, n: int = n) -> int:
            if not text:
                return default
            value = round(float(text) * n / 100) if pct else int(text)
            return value + n if value < 0 else value

        lo, hi = bound(match[2], match[3], 0), bound(match[4], match[5], n)
        total += max(0, min(hi, n) - min(lo, n))
    return total


def markdown_table() -> str:
    """The table of the 19 tasks (as in this module's docstring and README.md)."""

    def esc(text: str) -> str:
        return text.replace("*", "\\*")

    lines = [
        "| task | group | TFDS name:version (VTAB asks) | train / val / test | 1k train / val "
        "| classes | label |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SPECS.values():
        sp = s.splits
        lines.append(
            f"| {s.name} | {s.group} | {s.tfds_spec} ({esc(s.vtab_version)}) | {sp['train']} / "
            f"{sp['val']} / {sp['test']} | {sp['train800']} / {sp['val200']} | "
            f"{s.num_classes} | {s.label_rule} |"
        )
    return "\n".join(lines)
