"""Fine-tuning tasks: the paper's transfer tasks, any TFDS dataset, or a folder of images.

A ``Task`` says where the images come from, how the train/val/test splits are cut, how
many classes there are and what they are called, and the paper's sweep for it (run lengths
with their warm-ups, learning rates). Reading and batching live in ``input_pipeline``.

    from augreg_nb.tasks import get_task, tfds_task, folder_task
    task = get_task("oxford_iiit_pet")        # cifar100, oxford_iiit_pet, resisc45, kitti,
    task.split("val"), task.num_classes       # imagenet2012 ->  'train[90%:]', 37
    task.sweep                                # ((500, 100), (2500, 200))
    flowers = tfds_task("oxford_flowers102", train="train", val="validation", test="test")
    get_task("tfds:tf_flowers")               # any TFDS dataset by name, default splits
    get_task("tfds:tf_flowers?train=train[:70%]&val=train[70%:85%]&test=train[85%:]")
    mine = folder_task("~/photos")            # photos/<class>/*.jpg, seeded 80/10/10 split
    prepare(get_task("cifar100"))             # download + prepare once (network)

The 19 VTAB tasks are registered too, as ``vtab1k/<name>`` and ``vtab/<name>`` (VTAB-1k
and full splits, see ``augreg_nb.vtab``); ``list_tasks()`` lists the paper's sweep tasks,
``list_tasks("vtab1k")`` the VTAB ones.

A task name ``tfds:<dataset>[:<version>][?train=...&val=...&test=...]`` (what a config's
``task`` holds, e.g. ``augreg-nb finetune --set task=tfds:tf_flowers``) is any TFDS image
classification dataset. Splits not given follow the dataset's own (``tfds_default_splits``):
train/validation/test where it has them; a missing test split is validation, else cut from
train; a missing val split is cut from train: with only "train" that is train[:80%] /
train[80%:90%] / train[90%:].

Nothing downloads implicitly: reading a dataset that is not prepared fails at once with the
command that prepares it. Resisc45 and ImageNet need a manual download first; ``prepare``
then says which file to fetch and where to put it.

KITTI-distance (VTAB ``closest_vehicle_distance``): the label comes from the TFDS ``kitti``
objects, see ``kitti_distance_label``. The task reads TFDS ``kitti:3.1.0``, the version that
VTAB's task definition loads, with TFDS's own train / validation / test splits.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from pathlib import Path

import numpy as np

from augreg_nb import digits, vtab
from augreg_nb.names import shorten
from augreg_nb.protocol import (  # noqa: F401 - re-exported: the sweep's facts
    IMAGENET_LEARNING_RATES,
    LEARNING_RATES,
    TRANSFER_SWEEP,
    WARMUP_STEPS,
    warmup_steps,
)
from augreg_nb.resources import ENV_OFFLINE, env_flag
from augreg_nb.task_types import (  # noqa: F401 - re-exported: what a task is
    KITTI_DISTANCE_NAMES,
    KITTI_TFDS_VERSION,
    RESISC45_MANUAL,
    SPLIT_ALIASES,
    ClosestVehicleDistance,
    DatasetNotReadyError,
    FolderSplits,
    ManualDownload,
    Task,
    kitti_distance_label,
    tfds_builder,
    tfds_home,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: CIFAR-100 fine labels in label order (TFDS only knows them once the data is downloaded).
CIFAR100_NAMES = tuple(
    """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
    """.split()
)


def default_manual_dir(task: Task) -> Path:
    """The TFDS manual-download folder for ``task``: <data_dir>/downloads/manual."""
    return Path(tfds_home(task.data_dir)).expanduser() / "downloads" / "manual"


_REGISTRY: dict[str, Task] = {
    "cifar100": Task(
        name="cifar100",
        tfds_name="cifar100",
        splits={"train": "train[:98%]", "val": "train[98%:]", "test": "test"},
        num_classes=100,
        class_names=CIFAR100_NAMES,
        sweep_steps=TRANSFER_SWEEP["cifar100"].steps,
        description="CIFAR-100: 32x32 natural images, 100 classes",
    ),
    "oxford_iiit_pet": Task(
        name="oxford_iiit_pet",
        tfds_name="oxford_iiit_pet",
        splits={"train": "train[:90%]", "val": "train[90%:]", "test": "test"},
        num_classes=37,
        sweep_steps=TRANSFER_SWEEP["oxford_iiit_pet"].steps,
        description="Oxford-IIIT Pets: 37 cat and dog breeds",
    ),
    "resisc45": Task(
        name="resisc45",
        tfds_name="resisc45",
        splits={"train": "train[:60%]", "val": "train[60%:80%]", "test": "train[80%:]"},
        num_classes=45,
        sweep_steps=TRANSFER_SWEEP["resisc45"].steps,
        manual=RESISC45_MANUAL,
        description="Resisc45: remote-sensing scenes, 45 classes (manual download)",
    ),
    "kitti": Task(
        name="kitti",
        tfds_name=f"kitti:{KITTI_TFDS_VERSION}",
        splits={"train": "train", "val": "validation", "test": "test"},
        num_classes=4,
        class_names=KITTI_DISTANCE_NAMES,
        sweep_steps=TRANSFER_SWEEP["kitti"].steps,
        label_fn=ClosestVehicleDistance(),
        description="KITTI-distance (VTAB): distance to the closest vehicle, 4 bins",
    ),
    "imagenet2012": Task(
        name="imagenet2012",
        tfds_name="imagenet2012",
        splits={"train": "train[:99%]", "val": "train[99%:]", "test": "validation"},
        num_classes=1000,
        sweep_steps=TRANSFER_SWEEP["imagenet2012"].steps,
        learning_rates=TRANSFER_SWEEP["imagenet2012"].learning_rates,
        manual=ManualDownload(
            files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
            url="https://image-net.org/download-images (registration required)",
            note="put both .tar files, unextracted, into the manual dir",
        ),
        description="ImageNet-1k (ILSVRC 2012), 1000 classes (manual download)",
    ),
}
_ALIASES = {
    "pets": "oxford_iiit_pet",
    "oxford_pets": "oxford_iiit_pet",
    "kitti_distance": "kitti",
    "imagenet": "imagenet2012",
    "imagenet1k": "imagenet2012",
    "cifar-100": "cifar100",
}


#: registry name -> suite: "paper" (the paper's sweep), "vtab" / "vtab1k" (augreg_nb.vtab).
_SUITES: dict[str, str] = dict.fromkeys(_REGISTRY, "paper")


def register_task(task: Task, *, suite: str) -> None:
    """Add ``task`` to the registry under ``task.name`` (lower case), in ``suite``."""
    key = task.name.lower()
    if key in _SUITES and _SUITES[key] != suite:
        raise ValueError(f"{key!r} is already registered in the {_SUITES[key]!r} tasks")
    _REGISTRY[key] = task
    _SUITES[key] = suite


def list_tasks(suite: str | None = "paper") -> tuple[str, ...]:
    """Names of the registered tasks of ``suite`` (None: all).

    "paper": the paper's four transfer tasks and ImageNet-1k; "vtab" / "vtab1k": the 19
    VTAB tasks with full / VTAB-1k splits (``augreg_nb.vtab``).
    """
    return tuple(n for n in _REGISTRY if suite is None or _SUITES[n] == suite)


def get_task(name: str, *, data_dir: str | os.PathLike | None = None) -> Task:
    """A registered task by name (``list_tasks()``), any TFDS dataset as
    ``tfds:<name>[?train=...&val=...&test=...]`` (see :func:`parse_tfds_name`), or an image
    folder given by its path.

    ``data_dir`` is the TFDS data dir (default: TFDS_DATA_DIR or ~/tensorflow_datasets).
    """
    if name.strip().lower().startswith(TFDS_PREFIX):
        dataset, splits = parse_tfds_name(name)
        task = tfds_task_with_defaults(dataset, data_dir=data_dir, **splits)
        check_splits(task, _split_sizes(task))
        return task
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _REGISTRY:
        task = _REGISTRY[key]
        return dataclasses.replace(task, data_dir=str(data_dir)) if data_dir else task
    if is_folder_task(name):
        return folder_task(name)
    close = difflib.get_close_matches(key[:200], [*_REGISTRY, *_ALIASES], n=2)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown task {shorten(name)}.{hint} Registered: {', '.join(list_tasks())} and the VTAB "
        "tasks (vtab/<name>, vtab1k/<name>, see augreg_nb.vtab). Any TFDS dataset "
        "works as 'tfds:<name>' (e.g. 'tfds:tf_flowers') or tfds_task(name, train=..., "
        "val=..., test=...), a folder of images as its path or folder_task(path)."
    )


def is_folder_task(name: str) -> bool:
    """Whether :func:`get_task` reads ``name`` as a folder of images (a path to a folder
    that is neither a TFDS name nor a registered task)."""
    text = str(name)
    if text.strip().lower().startswith(TFDS_PREFIX):
        return False
    if _ALIASES.get(text.lower(), text.lower()) in _REGISTRY:
        return False
    try:
        return Path(text).expanduser().is_dir()
    except OSError:  # a name too long for a path, say
        return False


def tfds_task(
    name: str,
    *,
    train: str,
    val: str,
    test: str,
    num_classes: int | None = None,
    data_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    label_key: str = "label",
    sweep_steps: tuple[int, ...] = (500, 2500),
) -> Task:
    """Any TFDS image classification dataset with explicit split strings.

    ``num_classes`` defaults to the class count of the ``label_key`` feature; reading it
    needs the dataset's code (registered TFDS datasets) or its prepared files in data_dir.
    """
    task = Task(
        name=name.split(":")[0],
        tfds_name=name,
        splits={"train": train, "val": val, "test": test},
        num_classes=num_classes or 0,
        data_dir=str(data_dir) if data_dir else None,
        image_key=image_key,
        label_key=label_key,
        sweep_steps=tuple(sweep_steps),
        description=f"TFDS dataset {name}",
    )
    if num_classes is None:
        features = tfds_builder(task).info.features
        if label_key not in features or not getattr(features[label_key], "num_classes", None):
            raise ValueError(
                f"TFDS dataset {name!r} has no class-label feature {label_key!r} (features: "
                f"{', '.join(features)}); pass label_key=... or num_classes=..."
            )
        task = dataclasses.replace(task, num_classes=int(features[label_key].num_classes))
    return task


#: Prefix of a task name that is a TFDS dataset: ``tfds:<dataset>[?<split>=<string>&...]``.
TFDS_PREFIX = "tfds:"
_SPLIT_KEYS = ("train", "val", "test")
#: What a TFDS dataset name (with its optional config and version) may look like.
_TFDS_DATASET = re.compile(
    r"([A-Za-z0-9_-]{1,40}:)?[A-Za-z0-9_]{1,120}(/[A-Za-z0-9_.+=,-]{1,60})?(:[0-9.*]{1,20})?")


def parse_tfds_name(name: str) -> tuple[str, dict[str, str]]:
    """Split ``tfds:<dataset>[:<version>][?train=...&val=...&test=...]`` into the dataset
    and the splits given (keys train/val/test; "validation" means val).

    ``parse_tfds_name("tfds:tf_flowers?test=train[90%:]")`` ->
    ``("tf_flowers", {"test": "train[90%:]"})``. Split strings are TFDS's own
    (``train[:80%]``, ``train[:500]+validation``), written as they are, without quoting.
    """
    text = name.strip()
    if not text.lower().startswith(TFDS_PREFIX):
        raise ValueError(f"{shorten(name)} is not a TFDS task name: write 'tfds:<dataset>', "
                         "e.g. "
                         "'tfds:tf_flowers'")
    dataset, _, query = text[len(TFDS_PREFIX):].partition("?")
    dataset = dataset.strip()
    if not dataset:
        raise ValueError(f"{shorten(name)} names no dataset: write 'tfds:<dataset>', e.g. "
                         "'tfds:tf_flowers' (see `tfds.list_builders()`)")
    if not _TFDS_DATASET.fullmatch(dataset) or ".." in dataset:
        raise ValueError(
            f"{shorten(name)}: {shorten(dataset)} is not a TFDS dataset name (letters, digits "
            "and _, then optionally /<config> and :<version>, at most 200 characters), e.g. "
            "'tfds:tf_flowers' or 'tfds:cifar10:3.0.2'")
    splits: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = SPLIT_ALIASES.get(key.strip(), key.strip())
        if not eq or key not in _SPLIT_KEYS or not value.strip():
            raise ValueError(
                f"{shorten(name)}: cannot read {shorten(part)}; give splits as "
                "train=...&val=...&test=... with TFDS split strings, e.g. "
                "'tfds:tf_flowers?train=train[:80%]&val=train[80%:90%]&test=train[90%:]'")
        if key in splits:
            raise ValueError(f"{shorten(name)} gives the {key} split twice")
        splits[key] = value.strip()
    return dataset, splits


#: The size each split is taken to have for the overlap check when the dataset's own sizes
#: are unknown (not prepared): overlaps of percentages and of indices show all the same.
NOMINAL_SPLIT_SIZE = 1_000_000


def _split_sizes(task: Task) -> dict[str, int]:
    """Examples per split of ``task``'s prepared dataset; {} when it is not prepared."""
    try:
        builder = tfds_builder(task)
        if not builder.is_prepared():
            return {}
        return {name: int(info.num_examples) for name, info in builder.info.splits.items()}
    except Exception as err:  # noqa: BLE001 - the check then uses nominal sizes
        log.debug("split sizes of %s unknown: %s", task.tfds_name, err)
        return {}


def split_ranges(spec: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """The ``(split, start, end)`` example ranges a TFDS split string reads, by TFDS's own
    split arithmetic (``ReadInstruction``; percentages rounded as TFDS rounds them).
    Splits whose size is not in ``sizes`` count :data:`NOMINAL_SPLIT_SIZE` examples.
    Raises ValueError for a string TFDS cannot read and for an empty or reversed slice."""
    import tensorflow_datasets as tfds

    try:
        instruction = tfds.core.ReadInstruction.from_spec(spec)
    except (ValueError, TypeError, AssertionError) as err:
        why = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"the split {shorten(spec)} is not a TFDS split string ({why}); "
                         "write e.g. train[:80%] or train[:500]+validation") from None
    names = {part.split("[")[0].strip() for part in spec.split("+")}
    known = {n: sizes.get(n, NOMINAL_SPLIT_SIZE) for n in names}
    infos = {n: tfds.core.SplitInfo(name=n, shard_lengths=[size], num_bytes=0)
             for n, size in known.items()}
    try:
        absolute = instruction.to_absolute(infos)
    except (ValueError, KeyError, AssertionError) as err:
        raise ValueError(f"the split {shorten(spec)} cannot be read ({err})") from None
    out = []
    for part in absolute:
        size = known[part.splitname]
        start = 0 if part.from_ is None else part.from_
        end = size if part.to is None else part.to
        start, end = (max(0, min(size, v + size if v < 0 else v)) for v in (start, end))
        if end <= start:
            raise ValueError(
                f"the split {shorten(spec)} is empty: it reads {part.splitname} from example "
                f"{start} to {end}" + (" (a reversed slice: write [from:to] with from < to)"
                                       if end < start else ""))
        out.append((part.splitname, start, end))
    return out


def check_splits(task: Task, sizes: dict[str, int] | None = None) -> None:
    """Refuse a task whose train, val and test splits share examples, or whose splits are
    empty or reversed: a test split inside train would report accuracy on images the model
    was trained on, a val split inside train or test would choose runs by them.

    Uses TFDS's split arithmetic with the prepared dataset's ``sizes`` (else nominal
    sizes, which show the same overlaps). Raises ValueError naming the splits."""
    sizes = sizes or {}
    ranges = {}
    for key in _SPLIT_KEYS:
        spec = task.splits.get(key)
        if spec:
            try:
                ranges[key] = split_ranges(spec, sizes)
            except ValueError as err:
                raise ValueError(f"task {shorten(task.tfds_name or task.name)}: the {key} "
                                 f"split: {err}") from None
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        shared = [(name, max(s1, s2), min(e1, e2))
                  for name, s1, e1 in ranges.get(a, []) for other, s2, e2 in ranges.get(b, [])
                  if name == other and max(s1, s2) < min(e1, e2)]
        if shared:
            name, start, end = shared[0]
            count = sum(e - s for _, s, e in shared)
            exact = " (examples counted with the dataset's own sizes)" if name in sizes else ""
            role = ("the test accuracy would be measured on training images" if b == "test"
                    and a == "train" else "the choice by val would see the test images"
                    if b == "test" else "the choice by val would see the training images")
            raise ValueError(
                f"task {shorten(task.tfds_name or task.name)}: the {a} split "
                f"{shorten(task.splits[a])} and the {b} split {shorten(task.splits[b])} share "
                f"{count:,} examples of {name!r} (from {start} to {end}){exact}, so {role}. "
                f"Give {a} and {b} disjoint slices, e.g. train=train[:80%]&val=train[80%:90%]"
                f"&test=train[90%:]")


def tfds_default_splits(split_names) -> dict[str, str]:
    """train/val/test split strings from the split names a TFDS dataset has.

    train is "train" (it must exist). test is "test", else "validation" (then val is cut
    from train, as for ImageNet). val is "validation" when test exists too, else the last
    10% of train. With only "train": train[:80%] / train[80%:90%] / train[90%:].
    """
    have = set(split_names)
    if "train" not in have:
        raise ValueError(f"the dataset has no 'train' split (it has: {', '.join(sorted(have))}"
                         "); give the splits, e.g. 'tfds:<name>?train=...&val=...&test=...'")
    if "test" in have and "validation" in have:
        return {"train": "train", "val": "validation", "test": "test"}
    if "test" in have or "validation" in have:
        test = "test" if "test" in have else "validation"
        return {"train": "train[:90%]", "val": "train[90%:]", "test": test}
    return {"train": "train[:80%]", "val": "train[80%:90%]", "test": "train[90%:]"}


def tfds_task_with_defaults(name: str, *, train: str | None = None, val: str | None = None,
                            test: str | None = None,
                            data_dir: str | os.PathLike | None = None) -> Task:
    """:func:`tfds_task` with the splits not given taken from :func:`tfds_default_splits`.

    The default splits depend on the split names of the prepared dataset, read from its
    stored info (offline): a dataset that is not prepared raises DatasetNotReadyError with
    the ``tfds build`` command, unless all three splits are given.
    """
    given = {"train": train, "val": val, "test": test}
    if all(given.values()):
        return tfds_task(name, data_dir=data_dir, **given)  # type: ignore[arg-type]
    probe = Task(name=name.split(":")[0], splits={}, num_classes=0, tfds_name=name,
                 data_dir=str(data_dir) if data_dir else None)
    builder = tfds_builder(probe)
    if not builder.is_prepared():
        home = tfds_home(probe.data_dir)
        raise DatasetNotReadyError(
            f"dataset {name!r} is not prepared in {home}; its split names decide the default "
            f"train/val/test splits. Download and prepare it once (needs the network) with: "
            f"tfds build {name} --data_dir={home}   (or in Python: augreg_nb.tasks.prepare("
            f"'{TFDS_PREFIX}{name}')); or point data_dir= at a folder where it is prepared; "
            f"or give all three splits: '{TFDS_PREFIX}{name}?train=...&val=...&test=...'")
    defaults = tfds_default_splits(builder.info.splits.keys())
    return tfds_task(name, data_dir=data_dir,
                     **{k: v or defaults[k] for k, v in given.items()})


def _prepare_command(task: Task) -> str:
    manual = f" --manual_dir={default_manual_dir(task)}" if task.manual is not None else ""
    return (
        f"tfds build {task.tfds_name} --data_dir={tfds_home(task.data_dir)}{manual}   (or in "
        "Python: augreg_nb.tasks.prepare(task))"
    )


def _missing_manual_files(task: Task, folder: Path) -> list[str]:
    assert task.manual is not None
    return [f for f in task.manual.files if not (folder / f).exists()]


def not_ready_message(task: Task, reason: str = "") -> str:
    """Explain how to make ``task``'s data readable (used when reading fails)."""
    head = f"dataset {task.tfds_name!r} is not prepared in {tfds_home(task.data_dir)}"
    if reason:
        head += f" ({reason})"
    if task.manual is not None:
        mdir = default_manual_dir(task)
        missing = _missing_manual_files(task, mdir)
        if missing:
            return (
                f"{head}. It needs a manual download: get {', '.join(missing)} from "
                f"{task.manual.url}; {task.manual.note}. Manual dir: {mdir}. Then prepare it "
                f"with: {_prepare_command(task)}"
            )
        return f"{head}. The manual files are in {mdir}; prepare it with: {_prepare_command(task)}"
    return (
        f"{head}. Download and prepare it once (needs the network) with: "
        f"{_prepare_command(task)}; or point data_dir= at a folder where it is prepared."
    )


def prepare(task: Task | str, *, manual_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None) -> None:
    """Download (or take from the manual dir) and prepare ``task``'s TFDS dataset.

    ``task``: a Task, or a task name (``get_task``; a ``tfds:<name>`` needs no prepared
    info here, ``data_dir`` is where it goes). Fails fast, before any network access, when
    a manual download is missing or when AUGREG_NB_OFFLINE=1 forbids downloading.
    """
    if isinstance(task, str):
        if task.strip().lower().startswith(TFDS_PREFIX):
            dataset = parse_tfds_name(task)[0]
            task = Task(name=dataset.split(":")[0], splits={}, num_classes=0,
                        tfds_name=dataset, data_dir=str(data_dir) if data_dir else None)
        else:
            task = get_task(task, data_dir=data_dir)
    if task.folder is not None:
        return
    import tensorflow_datasets as tfds

    builder = tfds_builder(task)
    if builder.is_prepared():
        log.info("%s is already prepared in %s", task.tfds_name, builder.data_dir)
        return
    mdir = Path(manual_dir).expanduser() if manual_dir else default_manual_dir(task)
    if task.manual is not None and _missing_manual_files(task, mdir):
        raise DatasetNotReadyError(not_ready_message(task, f"manual files missing in {mdir}"))
    if task.manual is None and env_flag(ENV_OFFLINE):
        raise DatasetNotReadyError(
            f"{task.tfds_name} needs a download but {ENV_OFFLINE}=1 forbids network access; "
            f"unset it or prepare the dataset elsewhere and pass data_dir="
        )
    log.info("preparing %s in %s", task.tfds_name, tfds_home(task.data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=mdir))


# ----------------------------------------------------------------------------- folders


def _images_in(folder: Path, skip: set[Path]) -> list[str]:
    """Image files under ``folder``, following links but never into ``skip`` (the dataset
    root, its ancestors, the other class folders) and never twice into the same folder."""
    images, others, seen = [], 0, set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = Path(top).resolve()
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _links_into(Path(top) / d, skip))
        for name in sorted(names):
            path = Path(top) / name
            if not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(str(path))
            else:
                others += 1
    if others:
        log.info("%s: ignoring %d non-image files", folder, others)
    return sorted(images)


def _links_into(path: Path, skip: set[Path]) -> bool:
    """True when folder ``path`` resolves to one of ``skip`` or to an ancestor of one."""
    real = path.resolve()
    return any(real == s or real in s.parents for s in skip)


def _class_folders(folder: Path) -> dict[str, list[str]]:
    """{class name: image paths}; class folders may be links, but a link to the dataset
    root (or above it) is ignored, and an image reachable from two classes (through links)
    belongs to neither: its label would be a guess."""
    root = folder.resolve()
    dirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    reals = {d.name: d.resolve() for d in dirs}
    out: dict[str, list[str]] = {}
    for d in dirs:
        if reals[d.name] == root or reals[d.name] in root.parents:
            log.warning("%s: ignoring class folder %r: it links to the dataset folder itself "
                        "(or above it), so every image would get its label", folder, d.name)
            continue
        skip = {root} | {r for n, r in reals.items() if n != d.name and r != reals[d.name]}
        out[d.name] = _images_in(d, skip)
    owners: dict[Path, set[str]] = {}
    for name, files in out.items():
        for f in files:
            owners.setdefault(Path(f).resolve(), set()).add(name)
    shared = {real for real, names in owners.items() if len(names) > 1}
    for name, files in out.items():
        unique, taken = [], set()
        for f in files:
            real = Path(f).resolve()
            if real in shared or real in taken:
                continue
            taken.add(real)
            unique.append(f)
        out[name] = unique
    if shared:
        log.warning("%s: ignoring %d image(s) that links make part of more than one class, "
                    "e.g. %s", folder, len(shared), sorted(map(str, shared))[0])
    return out


def _carve(
    per_class: dict[str, list[str]], fractions: tuple[float, float], seed: int
) -> tuple[dict[str, list[str]], ...]:
    """Seeded, per-class split of file lists into (rest, first, second) by fractions."""
    rng = np.random.default_rng(seed)
    rest, first, second = {}, {}, {}
    for cls, files in per_class.items():
        order = [files[i] for i in rng.permutation(len(files))]
        n1, n2 = (int(round(len(files) * f)) for f in fractions)
        first[cls], second[cls] = order[:n1], order[n1 : n1 + n2]
        rest[cls] = sorted(order[n1 + n2 :])
        first[cls].sort()
        second[cls].sort()
    return rest, first, second


def folder_task(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "skip",
    sweep_steps: tuple[int, ...] = (500, 2500),
) -> Task:
    """A task from a folder of images: ``root/<class>/*.jpg|png``.

    If ``root`` holds ``train/`` (and optionally ``val/`` or ``validation/`` and ``test/``)
    with class folders inside, those splits are used; a missing val or test split is cut
    from train. Otherwise each class is split at random with ``seed`` into
    train/val/test by the fractions. Class indices follow the sorted class-folder names.
    Unreadable images are reported by path and skipped (``on_error="skip"``) or stop the
    run (``on_error="raise"``) when the data is read.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {str(base)!r} does not exist")
    found = {d.name for d in base.iterdir() if d.is_dir()}
    if "train" in found:
        layout = "split-folders"
        val_name = "val" if "val" in found else ("validation" if "validation" in found else None)
        per_split = {"train": _class_folders(base / "train")}
        carve = (0.0 if "test" in found else test_fraction, 0.0 if val_name else val_fraction)
        rest, test_cut, val_cut = _carve(per_split["train"], carve, seed)
        per_split["train"] = rest
        per_split["val"] = _class_folders(base / val_name) if val_name else val_cut
        per_split["test"] = _class_folders(base / "test") if "test" in found else test_cut
    else:
        layout = "flat"
        rest, test_cut, val_cut = _carve(_class_folders(base), (test_fraction, val_fraction), seed)
        per_split = {"train": rest, "val": val_cut, "test": test_cut}
    names = sorted({c for split in per_split.values() for c, f in split.items() if f})
    if not names:
        raise ValueError(
            f"no images found in {str(base)!r}; expected {base}/<class>/*.jpg|*.png "
            f"(or {base}/train/<class>/...)"
        )
    index = {c: i for i, c in enumerate(names)}
    files = {
        split: tuple((f, index[c]) for c in names for f in per.get(c, []))
        for split, per in per_split.items()
    }
    if not files["train"]:
        raise ValueError(f"the train split of {str(base)!r} is empty; add images or lower "
                         "val_fraction/test_fraction")
    return Task(
        name=base.name,
        splits={"train": "train", "val": "val", "test": "test"},
        num_classes=len(names),
        class_names=tuple(names),
        sweep_steps=tuple(sweep_steps),
        folder=FolderSplits(str(base), tuple(names), files, on_error, layout),
        description=f"image folder {base} ({layout})",
    )


# The offline smoke task: digits shipped with the package (augreg_nb.digits).
register_task(digits.digits_task(name="digits"), suite="smoke")
# The 19 VTAB tasks (augreg_nb.vtab), with VTAB-1k and full splits.
for _spec in vtab.SPECS.values():
    for _variant in (vtab.FULL, vtab.ONE_K):
        register_task(_spec.task(_variant), suite=_variant)
