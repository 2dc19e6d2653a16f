"""The 19 VTAB tasks against an independent statement of them, and through the real input
pipeline on TFDS mock data.

The table below was written by hand from google-research/task_adaptation
(``task_adaptation/data/<dataset>.py`` for the TFDS names, versions, splits and label rules,
``<dataset>_test.py`` for the split sizes, ``scripts/run_all_tasks.sh`` for which variant
of each dataset VTAB's 19 tasks use). The label rules are restated as plain Python.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from augreg_nb import input_pipeline as ip  # noqa: E402
from augreg_nb import tasks, vtab  # noqa: E402
from augreg_nb.mock_tfds import mock_tfds  # noqa: E402
from augreg_nb.tasks import ClosestVehicleDistance, get_task, list_tasks  # noqa: E402

# ----------------------------------------------------------------------------- label rules


def tfds_label(key="label"):
    return lambda ex: int(ex[key])


def clevr_count(ex):
    return len(ex["objects"]["size"]) - 3


def clevr_distance(ex):
    depth = min(float(d) for d in ex["objects"]["pixel_coords"][:, 2])
    edges = [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]
    return max(i for i, edge in enumerate(edges) if edge < depth)


def dsprites_location(ex):
    return int(ex["label_x_position"]) // 2  # 32 positions -> 16 bins


def dsprites_orientation(ex):
    return math.floor(int(ex["label_orientation"]) / 2.5)  # 40 orientations -> 16 bins


def kitti_distance(ex):
    objects = ex["objects"]
    depths = [float(z) for t, z in zip(objects["type"], objects["location"][:, 2], strict=True)
              if t in (0, 1, 2)]  # Car, Van, Truck
    d = min(depths, default=1000.0)
    return 0 if d <= 8 else 1 if d <= 20 else 2 if d <= 999 else 3


def with_val(test="test"):
    return ("train", "validation", "train+validation", test, "train[:800]", "validation[:200]",
            "train[:800]+validation[:200]")


# name: (group, TFDS name, version VTAB asks, version read, classes,
#        (train, val, trainval, test, train800, val200, train800val200),
#        (train, val, test) sizes, label rule, image rule)
VTAB = {
    "caltech101": ("natural", "caltech101", "3.*.*", "3.0.2", 102,
                   ("train[:2754]", "train[2754:]", "train", "test", "train[:800]",
                    "train[2754:2954]", "train[:800]+train[2754:2954]"),
                   (2754, 306, 6084), tfds_label(), None),
    "cifar100": ("natural", "cifar100", "3.*.*", "3.0.2", 100,
                 ("train[:45000]", "train[45000:]", "train", "test", "train[:800]",
                  "train[45000:45200]", "train[:800]+train[45000:45200]"),
                 (45000, 5000, 10000), tfds_label(), None),
    "dtd": ("natural", "dtd", "3.*.*", "3.0.1", 47, with_val(), (1880, 1880, 1880),
            tfds_label(), None),
    "flowers102": ("natural", "oxford_flowers102", "2.*.*", "2.1.1", 102, with_val(),
                   (1020, 1020, 6149), tfds_label(), None),
    "pets": ("natural", "oxford_iiit_pet", "3.*.*", "4.0.0", 37,
             ("train[:2944]", "train[2944:]", "train", "test", "train[:800]",
              "train[2944:3144]", "train[:800]+train[2944:3144]"),
             (2944, 736, 3669), tfds_label(), None),
    "sun397": ("natural", "sun397/tfds", "4.*.*", "4.0.0", 397, with_val(),
               (76128, 10875, 21750), tfds_label(), None),
    "svhn": ("natural", "svhn_cropped", "3.*.*", "3.1.0", 10,
             ("train[:65931]", "train[65931:]", "train", "test", "train[:800]",
              "train[65931:66131]", "train[:800]+train[65931:66131]"),
             (65931, 7326, 26032), tfds_label(), None),
    "camelyon": ("specialized", "patch_camelyon", "2.*.*", "2.0.0", 2, with_val(),
                 (262144, 32768, 32768), tfds_label(), None),
    "eurosat": ("specialized", "eurosat/rgb", "2.*.*", "2.0.0", 10,
                ("train[:16200]", "train[16200:21600]", "train[:21600]", "train[21600:]",
                 "train[:800]", "train[16200:16400]", "train[:800]+train[16200:16400]"),
                (16200, 5400, 5400), tfds_label(), None),
    "resisc45": ("specialized", "resisc45", "3.*.*", "3.0.0", 45,
                 ("train[:18900]", "train[18900:25200]", "train[:25200]", "train[25200:]",
                  "train[:800]", "train[18900:19100]", "train[:800]+train[18900:19100]"),
                 (18900, 6300, 6300), tfds_label(), None),
    "retinopathy": ("specialized", "diabetic_retinopathy_detection/btgraham-300", "3.*.*",
                    "3.0.0", 5, with_val(), (35126, 10906, 42670), tfds_label(), None),
    "clevr_count": ("structured", "clevr", "3.*.*", "3.1.0", 8,
                    ("train[:63000]", "train[63000:]", "train", "validation", "train[:800]",
                     "train[63000:63200]", "train[:800]+train[63000:63200]"),
                    (63000, 7000, 15000), clevr_count, None),
    "clevr_distance": ("structured", "clevr", "3.*.*", "3.1.0", 6,
                       ("train[:63000]", "train[63000:]", "train", "validation", "train[:800]",
                        "train[63000:63200]", "train[:800]+train[63000:63200]"),
                       (63000, 7000, 15000), clevr_distance, None),
    "dmlab": ("structured", "dmlab", "2.0.1", "2.0.1", 6, with_val(), (65550, 22628, 22735),
              tfds_label(), None),
    "dsprites_location": ("structured", "dsprites", "2.*.*", "2.0.0", 16,
                          ("train[:589824]", "train[589824:663552]", "train[:663552]",
                           "train[663552:]", "train[:800]", "train[589824:590024]",
                           "train[:800]+train[589824:590024]"),
                          (589824, 73728, 73728), dsprites_location, "grey 0/1 -> RGB 0/255"),
    "dsprites_orientation": ("structured", "dsprites", "2.*.*", "2.0.0", 16,
                             ("train[:589824]", "train[589824:663552]", "train[:663552]",
                              "train[663552:]", "train[:800]", "train[589824:590024]",
                              "train[:800]+train[589824:590024]"),
                             (589824, 73728, 73728), dsprites_orientation,
                             "grey 0/1 -> RGB 0/255"),
    "kitti_distance": ("structured", "kitti", "3.1.0", "3.1.0", 4, with_val(),
                       (6347, 423, 711), kitti_distance, None),
    "smallnorb_azimuth": ("structured", "smallnorb", "2.*.*", "2.0.0", 18,
                          ("train", "test[:50%]", "train+test[:50%]", "test[50%:]",
                           "train[:800]", "test[:200]", "train[:800]+test[:200]"),
                          (24300, 12150, 12150), tfds_label("label_azimuth"), "grey -> RGB"),
    "smallnorb_elevation": ("structured", "smallnorb", "2.*.*", "2.0.0", 9,
                            ("train", "test[:50%]", "train+test[:50%]", "test[50%:]",
                             "train[:800]", "test[:200]", "train[:800]+test[:200]"),
                            (24300, 12150, 12150), tfds_label("label_elevation"),
                            "grey -> RGB"),
}
SPLITS = ("train", "val", "trainval", "test", "train800", "val200", "train800val200")
# Examples per TFDS split (VTAB's *_test.py; TFDS catalog for oxford_iiit_pet 4.0.0).
TFDS_SIZES = {
    "caltech101": {"train": 3060, "test": 6084},
    "cifar100": {"train": 50000, "test": 10000},
    "dtd": {"train": 1880, "validation": 1880, "test": 1880},
    "flowers102": {"train": 1020, "validation": 1020, "test": 6149},
    "pets": {"train": 3680, "test": 3669},
    "sun397": {"train": 76128, "validation": 10875, "test": 21750},
    "svhn": {"train": 73257, "test": 26032},
    "camelyon": {"train": 262144, "validation": 32768, "test": 32768},
    "eurosat": {"train": 27000},
    "resisc45": {"train": 31500},
    "retinopathy": {"train": 35126, "validation": 10906, "test": 42670},
    "clevr_count": {"train": 70000, "validation": 15000, "test": 15000},
    "clevr_distance": {"train": 70000, "validation": 15000, "test": 15000},
    "dmlab": {"train": 65550, "validation": 22628, "test": 22735},
    "dsprites_location": {"train": 737280},
    "dsprites_orientation": {"train": 737280},
    "kitti_distance": {"train": 6347, "validation": 423, "test": 711},
    "smallnorb_azimuth": {"train": 24300, "test": 24300},
    "smallnorb_elevation": {"train": 24300, "test": 24300},
}


def test_nineteen_tasks_in_three_groups_and_two_variants():
    assert set(vtab.names()) == set(VTAB) and len(VTAB) == 19
    for group, count in (("natural", 7), ("specialized", 4), ("structured", 8)):
        assert set(vtab.names(group)) == {n for n, row in VTAB.items() if row[0] == group}
        assert len(vtab.names(group)) == count
    assert list_tasks("vtab") == tuple(f"vtab/{n}" for n in vtab.names())
    assert list_tasks("vtab1k") == tuple(f"vtab1k/{n}" for n in vtab.names())
    # The paper's sweep tasks stay what they were (presets and the fine-tuning panel use them).
    assert list_tasks() == ("cifar100", "oxford_iiit_pet", "resisc45", "kitti", "imagenet2012")
    with pytest.raises(ValueError, match="unknown VTAB group"):
        vtab.names("natura")


@pytest.mark.parametrize("name", list(VTAB))
def test_definition_matches_vtab(name):
    group, tfds_name, asks, version, classes, splits, sizes, _, _ = VTAB[name]
    spec = vtab.SPECS[name]
    assert (spec.group, spec.tfds_name, spec.vtab_version, spec.version, spec.num_classes) == (
        group, tfds_name, asks, version, classes)
    assert dict(spec.splits) == dict(zip(SPLITS, splits, strict=True))

    full, one_k = get_task(f"vtab/{name}"), get_task(f"vtab1k/{name}")
    for task in (full, one_k):
        assert task.tfds_name == f"{tfds_name}:{version}" and task.num_classes == classes
        assert task.sweep == ((500, 100), (2500, 200))
        assert task.learning_rates == (0.001, 0.003, 0.01, 0.03)
        assert len(task.label_names) == classes
    want = dict(zip(SPLITS, splits, strict=True))
    assert [full.split(s) for s in ("train", "val", "trainval", "test")] == [
        want["train"], want["val"], want["trainval"], want["test"]]
    assert [one_k.split(s) for s in ("train", "val", "trainval", "test")] == [
        want["train800"], want["val200"], want["train800val200"], want["test"]]

    # The split strings select exactly the example counts VTAB's own tests state.
    train, val, test = sizes
    assert vtab.expected_sizes(name) == {"train": train, "val": val, "test": test,
                                         "trainval": train + val}
    assert vtab.expected_sizes(name, "vtab1k") == {"train": 800, "val": 200, "test": test,
                                                   "trainval": 1000}


@pytest.mark.parametrize("name", list(VTAB))
def test_tfds_reads_the_split_strings_as_vtab_counts_them(name):
    """TFDS's own split arithmetic on every split string, given the TFDS split sizes."""
    import tensorflow_datasets as tfds

    infos = tfds.core.SplitDict([
        tfds.core.SplitInfo(
            name=k, shard_lengths=[n], num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir="/nowhere", dataset_name=name, split=k, filetype_suffix="tfrecord"),
        )
        for k, n in TFDS_SIZES[name].items()
    ])
    train, val, test = VTAB[name][6]
    want = dict(zip(SPLITS, (train, val, train + val, test, 800, 200, 1000), strict=True))
    spec = vtab.SPECS[name]
    assert dict(spec.tfds_sizes) == TFDS_SIZES[name]
    for key, split in zip(SPLITS, VTAB[name][5], strict=True):
        assert infos[split].num_examples == want[key], (key, split)
        assert vtab.split_size(spec, split) == want[key], (key, split)


@pytest.mark.parametrize("name", list(VTAB))
def test_pinned_version_is_what_tfds_makes_of_vtabs(name, tmp_path):
    """VTAB's version pattern resolves to the pinned version in the installed TFDS, except
    Pets: TFDS dropped oxford_iiit_pet 3.x; 4.0.0 has the same classes and splits."""
    import tensorflow_datasets as tfds

    _, tfds_name, asks, version, classes, _, _, _, _ = VTAB[name]
    if name == "pets":
        with pytest.raises(AssertionError, match="cannot be loaded at version 3"):
            tfds.builder(f"{tfds_name}:{asks}", data_dir=tmp_path)
        builder = tfds.builder(f"{tfds_name}:{version}", data_dir=tmp_path)
    else:
        builder = tfds.builder(f"{tfds_name}:{asks}", data_dir=tmp_path)
    assert str(builder.version) == version
    assert str(tasks.tfds_builder(get_task(f"vtab1k/{name}")).version) == version
    features = builder.info.features
    spec = vtab.SPECS[name]
    if spec.label_fn is None:  # the label is a TFDS class label: its class count is VTAB's
        assert features[spec.label_key].num_classes == classes


# ----------------------------------------------------------------------------- label rules


def _run_rule(rule, examples):
    """The rule eagerly on each example, and inside tf.data over the same examples."""
    from augreg_nb.preprocess import import_tf

    tf = import_tf()
    eager = [int(rule({k: tf.constant(v) if not isinstance(v, dict) else
                       {kk: tf.constant(vv) for kk, vv in v.items()} for k, v in ex.items()}))
             for ex in examples]
    graph = []
    for ex in examples:  # ragged objects: one single-example dataset each
        ds = tf.data.Dataset.from_tensors(ex).map(rule)
        graph += [int(x) for x in ds.as_numpy_iterator()]
    return eager, graph


def _clevr(depths):
    depths = np.asarray(depths, np.float32)
    coords = np.stack([np.full_like(depths, 100.0), np.full_like(depths, 50.0), depths], -1)
    return {"objects": {"pixel_coords": coords, "size": np.zeros(len(depths), np.int64)}}


def test_clevr_rules_on_chosen_examples():
    depths = [[7.9], [8.0], [8.01, 12.0], [8.5], [8.6], [9.2], [9.7], [10.0], [10.5, 11.0],
              [12.0, 9.3, 11.0], [99.0]]
    examples = [_clevr(d) for d in depths]
    want = [clevr_distance(ex) for ex in examples]
    assert want == [0, 0, 1, 1, 2, 3, 4, 4, 5, 3, 5]
    assert _run_rule(vtab.SPECS["clevr_distance"].label_fn, examples) == (want, want)

    examples = [_clevr([9.0] * n) for n in range(3, 11)]
    want = [clevr_count(ex) for ex in examples]
    assert want == list(range(8))
    assert _run_rule(vtab.SPECS["clevr_count"].label_fn, examples) == (want, want)


def test_dsprites_rules_on_every_value():
    loc = [{"label_x_position": np.int64(v)} for v in range(32)]
    want = [dsprites_location(ex) for ex in loc]
    assert sorted(set(want)) == list(range(16)) and want.count(0) == 2
    assert _run_rule(vtab.SPECS["dsprites_location"].label_fn, loc) == (want, want)
    ori = [{"label_orientation": np.int64(v)} for v in range(40)]
    want = [dsprites_orientation(ex) for ex in ori]
    assert sorted(set(want)) == list(range(16))
    assert [want.count(b) for b in range(4)] == [3, 2, 3, 2]  # 2.5 values per bin
    assert _run_rule(vtab.SPECS["dsprites_orientation"].label_fn, ori) == (want, want)


def test_kitti_rule_on_chosen_examples():
    cases = [([0], [5.0]), ([0, 3], [8.0, 2.0]), ([1], [8.5]), ([2, 0], [30.0, 20.0]),
             ([1], [25.0]), ([4, 5], [3.0, 4.0]), ([2], [999.5])]
    examples = [{"objects": {"type": np.asarray(t, np.int64),
                             "location": np.asarray([[1.0, 1.0, z] for z in zs], np.float32)}}
                for t, zs in cases]
    want = [kitti_distance(ex) for ex in examples]
    assert want == [0, 0, 1, 1, 2, 3, 3]
    assert _run_rule(vtab.SPECS["kitti_distance"].label_fn, examples) == (want, want)


# ----------------------------------------------------------------------------- mock data


def realistic(name: str, ex: dict) -> dict:
    """Make random fakes look like the real data where the label rule depends on it."""
    rng = np.random.default_rng(int(np.asarray(ex["image"], np.int64).sum()))
    if name == "clevr":  # 3..10 objects, the nearest at 7.5..11.5
        n = int(rng.integers(3, 11))
        objects = {k: v[:n] for k, v in ex["objects"].items()}
        objects["pixel_coords"] = objects["pixel_coords"].copy()
        nearest = rng.uniform(7.5, 11.5)
        depths = nearest + rng.uniform(0.0, 3.0, n)
        depths[rng.integers(n)] = nearest
        objects["pixel_coords"][:, 2] = depths.astype(np.float32)
        ex = {**ex, "objects": objects}
    elif name == "kitti":  # 0..3 objects up to 40 m away
        n = int(rng.integers(0, 4))
        objects = {k: v[:n] for k, v in ex["objects"].items()}
        objects["location"] = objects["location"] * np.float32(40.0)
        objects["type"] = rng.integers(0, 4, n).astype(objects["type"].dtype)
        ex = {**ex, "objects": objects}
    elif name == "dsprites":  # TFDS stores dSprites pixels as 0 or 1
        ex = {**ex, "image": ex["image"] % 2}
    return ex


NUM_MOCK = 5


@pytest.mark.parametrize("name", list(VTAB))
def test_task_reads_mock_data_through_the_pipeline(name, tmp_path):
    import tensorflow_datasets as tfds

    rule, image_rule = VTAB[name][7], VTAB[name][8]
    task = get_task(f"vtab1k/{name}", data_dir=tmp_path)
    with mock_tfds(num_examples=NUM_MOCK, seed=7, edit=realistic):
        builder = tfds.builder(task.tfds_name, data_dir=tmp_path)
        raw = list(tfds.as_numpy(builder.as_dataset(split=task.split("test"))))
        want = [rule(ex) for ex in raw]
        assert all(0 <= y < task.num_classes for y in want), want

        size = raw[0]["image"].shape[0]  # eval at the stored size: pixels come out as decoded
        evaluation = ip.make_eval_iterator(task, "test", resolution=size, batch_size=4,
                                           preprocess_mode="resize")
        assert evaluation.num_examples == NUM_MOCK and len(evaluation) == 2
        images, labels = [], []
        for batch in evaluation:
            mask = np.asarray(batch["mask"])
            assert batch["image"].shape == (4, size, size, 3)
            images += list(np.asarray(batch["image"])[mask])
            labels += np.asarray(batch["label"])[mask].tolist()
        assert labels == want

        for ex, image in zip(raw, images, strict=True):
            pixels = ex["image"].astype(np.float32)
            if image_rule == "grey 0/1 -> RGB 0/255":
                assert set(np.unique(pixels)) <= {0.0, 1.0}
                pixels = pixels * 255
            if image_rule is not None:
                assert pixels.shape[-1] == 1
                pixels = np.repeat(pixels, 3, axis=-1)
            if pixels.shape[0] == size and pixels.shape[1] == size:
                np.testing.assert_allclose(image, pixels / 127.5 - 1, atol=1e-5)

        batch = next(ip.make_train_iterator(task, resolution=16, global_batch=4, seed=1))
        assert batch["image"].shape == (4, 16, 16, 3)
        label = np.asarray(batch["label"])
        assert ((0 <= label) & (label < task.num_classes)).all()
        assert set(label.tolist()) <= set(want)  # every split mocks the same examples


def test_vtab_names_cannot_replace_the_papers_tasks():
    with pytest.raises(ValueError, match="already registered in the 'paper' tasks"):
        tasks.register_task(tasks.Task(
            name="cifar100", splits={"train": "train", "val": "train", "test": "test"},
            num_classes=100, tfds_name="cifar100"), suite="vtab")
    assert get_task("cifar100").split("val") == "train[98%:]"


def test_markdown_table_is_in_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert vtab.markdown_table() in readme
    for name, row in VTAB.items():
        assert f"| {name} | {row[0]} | {row[1]}:{row[3]} " in vtab.markdown_table()


def test_paper_tasks_keep_their_own_splits():
    """The paper's sweep tasks are not the VTAB definitions: different val cuts."""
    assert get_task("cifar100").split("val") == "train[98%:]"
    assert get_task("vtab/cifar100").split("val") == "train[45000:]"
    assert get_task("oxford_iiit_pet").split("val") == "train[90%:]"
    assert get_task("vtab/pets").split("val") == "train[2944:]"
    # Resisc45's percentages of 31500 examples fall on VTAB's indices: the same examples.
    paper, spec = get_task("resisc45"), vtab.SPECS["resisc45"]
    assert [paper.split(s) for s in ("train", "val", "test")] == [
        "train[:60%]", "train[60%:80%]", "train[80%:]"]
    for split in ("train", "val", "test"):
        assert vtab.split_size(spec, paper.split(split)) == vtab.expected_sizes("resisc45")[split]
    assert get_task("kitti").label_fn == ClosestVehicleDistance()
    assert get_task("vtab/kitti_distance").splits == {
        "train": "train", "val": "validation", "test": "test", "trainval": "train+validation"}


def test_manual_downloads_fail_fast_with_the_fix(tmp_path):
    from augreg_nb.tasks import DatasetNotReadyError

    for name, needs in (("retinopathy", ("trainLabels.csv", "kaggle.com")),
                        ("resisc45", ("NWPU-RESISC45", "1drv.ms"))):
        task = get_task(f"vtab1k/{name}", data_dir=tmp_path)
        with pytest.raises(DatasetNotReadyError) as err:
            tasks.prepare(task)
        msg = str(err.value)
        assert all(n in msg for n in needs), msg
        assert f"tfds build {task.tfds_name}" in msg
    manual = {n for n in vtab.names() if vtab.SPECS[n].manual is not None}
    assert manual == {"retinopathy", "resisc45"}
