"""Task registry, KITTI-distance labels, manual-download errors and image-folder splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from augreg_nb import tasks
from augreg_nb.tasks import (
    DatasetNotReadyError,
    folder_task,
    get_task,
    kitti_distance_label,
    warmup_steps,
)
from augreg_nb.testing.datasets import write_image_folder

PROTOCOL = {  # protocol.md task table
    "cifar100": ("train[:98%]", "train[98%:]", "test", 100, (2500, 10000)),
    "oxford_iiit_pet": ("train[:90%]", "train[90%:]", "test", 37, (500, 2500)),
    "resisc45": ("train[:60%]", "train[60%:80%]", "train[80%:]", 45, (2500, 10000)),
    "kitti": ("train", "validation", "test", 4, (500, 2500)),
    "imagenet2012": ("train[:99%]", "train[99%:]", "validation", 1000, (20000,)),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL))
def test_registry_matches_the_protocol(name):
    train, val, test, classes, lengths = PROTOCOL[name]
    task = get_task(name)
    assert task.tfds_name == ("kitti:3.1.0" if name == "kitti" else name)
    assert (task.split("train"), task.split("val"), task.split("test")) == (train, val, test)
    assert task.split("validation") == val
    assert task.num_classes == classes
    assert task.sweep_steps == lengths
    lrs = (0.01, 0.03) if name == "imagenet2012" else (0.001, 0.003, 0.01, 0.03)
    assert task.learning_rates == lrs  # tests/test_sweeps.py ties them to the index
    assert (task.manual is not None) == (name in ("resisc45", "imagenet2012"))


def test_sweep_warmups_follow_table_4():
    assert [warmup_steps(n) for n in (500, 2500, 10000, 20000)] == [100, 200, 500, 500]
    assert get_task("pets").sweep == ((500, 100), (2500, 200))
    assert get_task("cifar100").sweep == ((2500, 200), (10000, 500))
    assert warmup_steps(50) == 10 and warmup_steps(3) == 1
    assert warmup_steps(5000) == 200
    with pytest.raises(ValueError):
        warmup_steps(0)


def test_label_names():
    assert get_task("kitti").label_names == ("0-8 m", "8-20 m", "20-999 m", "no vehicle")
    cifar = get_task("cifar100").label_names
    assert len(set(cifar)) == 100 and cifar[:2] == ("apple", "aquarium_fish")
    assert list(cifar) == sorted(cifar)  # CIFAR-100 labels are numbered alphabetically
    pets = get_task("oxford_iiit_pet").label_names  # from TFDS, no download
    assert len(pets) == 37 and "Abyssinian" in pets


def test_unknown_task_suggests_and_explains():
    with pytest.raises(ValueError, match="Did you mean 'cifar100'.*tfds_task"):
        get_task("cifar1000")


def _label(types, depths):
    depths = np.asarray(depths, np.float32)
    location = np.stack([np.zeros_like(depths), np.ones_like(depths), depths], axis=-1)
    objects = {"type": np.asarray(types, np.int64), "location": location.reshape(-1, 3)}
    return int(kitti_distance_label(objects))


CAR, VAN, TRUCK, PEDESTRIAN, PERSON_SITTING, CYCLIST, TRAM, MISC = range(8)


@pytest.mark.parametrize(
    "types, depths, expected",
    [
        ([CAR], [8.0], 0),  # 8 m is still "near"
        ([CAR], [8.001], 1),
        ([VAN], [20.0], 1),  # 20 m is still the middle bin
        ([TRUCK], [20.001], 2),
        ([CAR], [999.0], 2),
        ([CAR], [999.5], 3),
        ([], [], 3),  # no objects at all
        ([PEDESTRIAN, CYCLIST, PERSON_SITTING, TRAM, MISC], [2, 3, 4, 5, 6], 3),
        ([PEDESTRIAN, CAR], [3.0, 30.0], 2),  # pedestrians do not count
        ([CYCLIST, VAN, TRUCK], [1.0, 15.0, 7.5], 0),  # nearest vehicle wins
        ([CAR, CAR], [50.0, 19.0], 1),
    ],
)
def test_kitti_distance_label_boundaries(types, depths, expected):
    assert _label(types, depths) == expected


def test_kitti_distance_label_inside_tf_data():
    tf = pytest.importorskip("tensorflow")
    examples = [([CAR, PEDESTRIAN], [25.0, 1.0]), ([CYCLIST], [4.0]), ([TRUCK], [6.0])]
    ds = tf.data.Dataset.from_generator(
        lambda: (
            {"type": np.int64(t), "location": np.stack([np.zeros(len(d)), np.zeros(len(d)),
                                                        d], -1).astype(np.float32)}
            for t, d in ((np.array(t), np.array(d)) for t, d in examples)
        ),
        output_signature={
            "type": tf.TensorSpec([None], tf.int64),
            "location": tf.TensorSpec([None, 3], tf.float32),
        },
    ).map(kitti_distance_label)
    assert list(ds.as_numpy_iterator()) == [2, 3, 0]


def test_manual_download_datasets_fail_fast_with_the_fix(tmp_path):
    start = time.monotonic()
    resisc = get_task("resisc45", data_dir=tmp_path)
    with pytest.raises(DatasetNotReadyError) as err:
        tasks.prepare(resisc)
    msg = str(err.value)
    assert "NWPU-RESISC45" in msg
    assert str(tmp_path / "downloads" / "manual") in msg
    assert "tfds build resisc45" in msg

    imagenet = get_task("imagenet", data_dir=tmp_path)
    with pytest.raises(DatasetNotReadyError) as err:
        tasks.prepare(imagenet, manual_dir=tmp_path / "elsewhere")
    msg = str(err.value)
    assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
    assert "image-net.org" in msg
    assert time.monotonic() - start < 30


def test_offline_mode_refuses_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with pytest.raises(DatasetNotReadyError, match="AUGREG_NB_OFFLINE"):
        tasks.prepare(get_task("cifar100", data_dir=tmp_path))


def test_unknown_tfds_dataset_is_explained(tmp_path):
    with pytest.raises(DatasetNotReadyError, match="neither a registered TFDS dataset"):
        tasks.tfds_task("no_such_dataset_xyz", train="train", val="val", test="test",
                        data_dir=tmp_path)


def test_folder_task_seeded_stratified_split(tmp_path):
    info = write_image_folder(tmp_path / "imgs", per_class=10, corrupt=False)
    task = folder_task(tmp_path / "imgs", val_fraction=0.2, test_fraction=0.1, seed=3)
    assert task.class_names == ("cat", "dog", "fox") and task.num_classes == 3
    files = task.folder.files
    assert [len(files[s]) for s in ("train", "val", "test")] == [21, 6, 3]
    all_paths = [p for s in files.values() for p, _ in s]
    assert sorted(all_paths) == sorted(info["files"])  # every image in exactly one split
    for split in files.values():
        for path, label in split:
            assert task.class_names[label] == info["files"][path]
        assert sorted(label for _, label in split) == sorted(
            [0, 1, 2] * (len(split) // 3)
        )  # stratified: the same count per class
    same = folder_task(tmp_path / "imgs", val_fraction=0.2, test_fraction=0.1, seed=3)
    assert same.folder.files == files
    other = folder_task(tmp_path / "imgs", val_fraction=0.2, test_fraction=0.1, seed=4)
    assert other.folder.files["val"] != files["val"]
    assert get_task(str(tmp_path / "imgs")).num_classes == 3  # a path works as a task name


def test_folder_task_uses_existing_split_folders(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=4, split_folders=True, corrupt=False)
    task = folder_task(tmp_path / "imgs")
    assert task.folder.layout == "split-folders"
    assert [len(task.folder.files[s]) for s in ("train", "val", "test")] == [12, 6, 6]
    assert all("/val/" in p for p, _ in task.folder.files["val"])


def test_folder_task_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_task(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        folder_task(tmp_path / "empty")
    with pytest.raises(ValueError, match="on_error"):
        folder_task(tmp_path / "empty", on_error="ignore")


def _vtab_distance_label(types, depths):
    """VTAB's closest_vehicle_distance, written out: nearest Car/Van/Truck, four bins."""
    vehicle = [d for t, d in zip(types, depths, strict=True) if t in (CAR, VAN, TRUCK)]
    dist = min(vehicle) if vehicle else 1000.0
    return 0 if dist <= 8 else 1 if dist <= 20 else 2 if dist <= 999 else 3


def test_kitti_reads_the_tfds_version_vtab_uses(tmp_path):
    """task_adaptation's data/kitti.py builds TFDS "kitti:3.1.0"; so does the task, not TFDS's
    newer default."""
    from augreg_nb import input_pipeline as ip
    from augreg_nb.mock_tfds import mock_tfds

    task = get_task("kitti", data_dir=tmp_path)
    builder = tasks.tfds_builder(task)
    assert str(builder.version) == "3.1.0" == tasks.KITTI_TFDS_VERSION
    assert builder.data_dir.endswith("3.1.0")
    with pytest.raises(DatasetNotReadyError, match=r"tfds build kitti:3\.1\.0"):
        ip.num_examples(task, "test")

    import tensorflow_datasets as tfds

    with mock_tfds(num_examples=7, seed=3):
        raw = tfds.as_numpy(tfds.builder("kitti:3.1.0", data_dir=tmp_path).as_dataset(
            split="test"))
        want = [_vtab_distance_label(ex["objects"]["type"], ex["objects"]["location"][:, 2])
                for ex in raw]
        got = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"])] for b in
                              ip.make_eval_iterator(task, "test", resolution=8, batch_size=4)])
        assert tasks.tfds_builder(task).version == "3.1.0"
    assert got.tolist() == want and len(want) == 7


# ----------------------------------------------------------------------- tfds:<name> tasks
# Sizes of the splits TFDS records when it prepares these datasets (their catalogue pages).
TF_FLOWERS_TRAIN = 3670
PETS_SIZES = {"train": 3680, "test": 3669}


def test_tfds_names_parse_into_dataset_and_splits():
    assert tasks.parse_tfds_name("tfds:tf_flowers") == ("tf_flowers", {})
    assert tasks.parse_tfds_name(
        "TFDS:tf_flowers:3.0.1?train=train[:70%]&validation=train[70%:85%]&test=train[85%:]"
    ) == ("tf_flowers:3.0.1", {"train": "train[:70%]", "val": "train[70%:85%]",
                               "test": "train[85%:]"})
    assert tasks.parse_tfds_name("tfds:beans?test=test+validation") == (
        "beans", {"test": "test+validation"})
    for bad, why in [("tfds:", "names no dataset"), ("tfds:x?trian=train", "cannot read"),
                     ("tfds:x?test=", "cannot read"), ("tfds:x?test=a&test=b", "twice"),
                     ("tf_flowers", "not a TFDS task name")]:
        with pytest.raises(ValueError, match=why):
            tasks.parse_tfds_name(bad)


def test_tfds_default_splits_follow_the_datasets_own():
    assert tasks.tfds_default_splits(["train", "validation", "test"]) == {
        "train": "train", "val": "validation", "test": "test"}
    assert tasks.tfds_default_splits(["test", "train"]) == {
        "train": "train[:90%]", "val": "train[90%:]", "test": "test"}
    assert tasks.tfds_default_splits(["train", "validation"]) == {
        "train": "train[:90%]", "val": "train[90%:]", "test": "validation"}
    assert tasks.tfds_default_splits(["train"]) == {
        "train": "train[:80%]", "val": "train[80%:90%]", "test": "train[90%:]"}
    with pytest.raises(ValueError, match="no 'train' split"):
        tasks.tfds_default_splits(["test"])


def _mock_prepared(data_dir, sizes: dict[str, dict[str, int]], num_examples: int = 6):
    """``tfds.testing.mock_data`` over the metadata of prepared datasets (name -> sizes)."""
    import tensorflow_datasets as tfds

    from augreg_nb.testing.datasets import write_tfds_metadata

    for name, split_sizes in sizes.items():
        write_tfds_metadata(name, data_dir, split_sizes)
    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES,
                                  data_dir=str(data_dir), num_examples=num_examples)


def test_tfds_task_names_resolve_with_default_splits(tmp_path):
    from augreg_nb import config as config_lib
    from augreg_nb import input_pipeline as ip
    from augreg_nb.train import load_task

    with _mock_prepared(tmp_path, {"tf_flowers": {"train": TF_FLOWERS_TRAIN},
                                   "oxford_iiit_pet": PETS_SIZES}):
        flowers = get_task("tfds:tf_flowers")
        assert flowers.tfds_name == "tf_flowers" and flowers.num_classes == 5
        assert dict(flowers.splits) == {"train": "train[:80%]", "val": "train[80%:90%]",
                                        "test": "train[90%:]"}
        assert set(flowers.label_names) == {"dandelion", "daisy", "tulips", "sunflowers",
                                            "roses"}
        # Percent slices of 3,670 examples, counted here: 80% = 2,936, 90% = 3,303.
        n80, n90 = TF_FLOWERS_TRAIN * 8 // 10, TF_FLOWERS_TRAIN * 9 // 10
        assert [ip.num_examples(flowers, s) for s in ("train", "val", "test")] == [
            n80, n90 - n80, TF_FLOWERS_TRAIN - n90]
        # A dataset with a test split keeps it and cuts val from train: as the paper's Pets.
        pets = get_task("tfds:oxford_iiit_pet")
        assert dict(pets.splits) == dict(get_task("oxford_iiit_pet").splits)
        assert pets.num_classes == 37
        # Splits given in the name replace the defaults; the others stay.
        mine = get_task("tfds:tf_flowers?train=train[:70%]")
        assert dict(mine.splits) == {"train": "train[:70%]", "val": "train[80%:90%]",
                                     "test": "train[90%:]"}
        # What `augreg-nb finetune --set task=tfds:tf_flowers` runs: the config's task.
        config = config_lib.preset_for("cifar100", 500, 0.003, 224)
        config_lib.apply_overrides(config, ["task=tfds:tf_flowers"])
        config_lib.validate(config)
        assert load_task(config).splits == flowers.splits
        config_lib.apply_overrides(config, ["task=tfds:tf_flowers?train=train[:70%]"])
        assert load_task(config).splits == mine.splits


@pytest.mark.parametrize("query, message", [
    ("test=train[:10]", r"train split 'train\[:80%\]' and the test split 'train\[:10\]' share "
     r"10 examples .* measured on training images"),
    ("train=train&test=train[90%:]", r"share 367 examples of 'train' \(from 3303 to 3670\)"),
    ("train=train&val=train&test=train", "train split 'train' and the test split 'train'"),
    ("train=train[:50%]&val=train[40%:60%]&test=train[90%:]",
     "the choice by val would see the training images"),
    ("train=train[:50%]&val=train[85%:95%]&test=train[90%:]",
     "the choice by val would see the test images"),
    ("train=train[80%:20%]", r"train split: .*is empty.* reversed slice"),
    ("train=train[abc]", "is not a TFDS split string"),
])
def test_tfds_task_splits_that_overlap_or_are_reversed_are_refused(tmp_path, query, message):
    with _mock_prepared(tmp_path, {"tf_flowers": {"train": TF_FLOWERS_TRAIN}}):
        with pytest.raises(ValueError, match=message) as err:
            get_task(f"tfds:tf_flowers?{query}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["tfds:../../../../x", "tfds:a/../../b", "tfds:" + "a" * 5000,
                                  "tfds:x y", "b" * 5000])
def test_hostile_task_names_are_refused_in_a_short_line(name):
    with pytest.raises(ValueError) as err:
        get_task(name)
    text = str(err.value)
    assert len(text) < 600 and "\n" not in text
    assert "5,00" in text if len(name) > 1000 else name in text


def test_tfds_names_with_config_version_and_namespace_pass_the_name_check():
    for ok in ["tf_flowers", "cifar10:3.0.2", "imagenet2012_subset/1pct:5.*.*",
               "huggingface:mnist", "i_naturalist2021/config-1.2"]:
        assert tasks._TFDS_DATASET.fullmatch(ok), ok


def test_split_overlaps_show_without_the_datasets_sizes():
    task = tasks.Task(name="x", splits={"train": "train[:60%]", "val": "validation",
                                        "test": "train[59%:]"}, num_classes=2, tfds_name="x")
    with pytest.raises(ValueError, match="train split 'train\\[:60%\\]' and the test split"):
        tasks.check_splits(task)
    ok = tasks.Task(name="x", splits={"train": "train[:500]", "val": "train[500:600]",
                                      "test": "test"}, num_classes=2, tfds_name="x")
    tasks.check_splits(ok)
    assert tasks.split_ranges("train[10%:20%]", {"train": 1000}) == [("train", 100, 200)]
    assert tasks.split_ranges("train[-10:]+test", {"train": 50, "test": 7}) == [
        ("train", 40, 50), ("test", 0, 7)]


def test_unprepared_tfds_task_says_how_to_build_it(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotReadyError, match=r"tfds build tf_flowers --data_dir=") as err:
        get_task("tfds:tf_flowers", data_dir=tmp_path)
    assert "train=...&val=...&test=..." in str(err.value)
    assert "prepare('tfds:tf_flowers')" in str(err.value)
    # That call is what it says: offline it fails fast, before any network access.
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with pytest.raises(DatasetNotReadyError, match="tf_flowers needs a download"):
        tasks.prepare("tfds:tf_flowers", data_dir=tmp_path)
    monkeypatch.delenv("AUGREG_NB_OFFLINE")
    # With every split given nothing needs the prepared info: reading says what is missing.
    task = get_task("tfds:tf_flowers?train=train[:80%]&val=train[80%:90%]&test=train[90%:]",
                    data_dir=tmp_path)
    assert task.num_classes == 5 and task.split("test") == "train[90%:]"
    with pytest.raises(DatasetNotReadyError, match="unknown_dataset_xyz"):
        get_task("tfds:unknown_dataset_xyz", data_dir=tmp_path)
