"""Top-k prediction, label sets and the ``augreg-nb predict`` command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from augreg_nb import checkpoint as ck
from augreg_nb import inference
from augreg_nb.cli import main
from augreg_nb.preprocess import prepare_images
from augreg_nb.testing.checkpoints import fake_params, write_fake_checkpoint
from tests.conftest import run_python
from tests.test_models import np_forward, np_softmax, random_images


def test_imagenet_names_ship_with_tfds_and_need_no_tensorflow():
    names = inference.imagenet_label_names()
    assert len(names) == 1000 and len(set(names)) >= 998
    assert names[0] == "tench, Tinca tinca"
    assert names[1] == "goldfish, Carassius auratus"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"
    out = run_python(
        "import sys\n"
        "from augreg_nb.inference import imagenet_label_names\n"
        "print(len(imagenet_label_names()), 'tensorflow' in sys.modules, 'jax' in sys.modules)"
    )
    assert out.split() == ["1000", "False", "False"]


def test_imagenet_head_gets_names_and_softmax_probabilities():
    flat = fake_params("testing", num_classes=1000, resolution=32)
    flat["head/kernel"][:] = 0  # logits = head bias, whatever the image
    flat["head/bias"][:] = 0
    flat["head/bias"][[1, 7]] = [5.0, 4.0]
    params = ck.unflatten(flat)
    preds = inference.predict_arrays("testing", params, random_images(2, 32), top_k=3)
    probs = np_softmax(flat["head/bias"].astype(np.float64))
    names = inference.imagenet_label_names()
    for image_preds in preds:
        assert [p.index for p in image_preds] == [1, 7, 0]  # ties: lower index first
        assert [p.name for p in image_preds] == [names[1], names[7], names[0]]
        np.testing.assert_allclose([p.prob for p in image_preds], probs[[1, 7, 0]], rtol=1e-5)
        index, name, prob = image_preds[0]  # a plain (index, name, prob) tuple
        assert (index, name) == (1, "goldfish, Carassius auratus") and 0 < prob < 1


def test_top_k_matches_an_independent_forward_pass():
    params = ck.unflatten(fake_params("testing-hybrid", num_classes=5, resolution=32, seed=9))
    images = random_images(3, 32, seed=4)
    labels = ["ant", "bee", "cat", "dog", "eel"]
    preds = inference.predict_arrays("testing-hybrid", params, images, top_k=3,
                                     label_names=labels, batch_size=2)
    probs = np_softmax(np_forward(params, images))
    for row, image_preds in zip(probs, preds, strict=True):
        order = np.argsort(-row)[:3]
        assert [p.index for p in image_preds] == list(order)
        assert [p.name for p in image_preds] == [labels[i] for i in order]
        np.testing.assert_allclose([p.prob for p in image_preds], row[order], atol=1e-5)
    # top_k larger than the head: every class once; non-ImageNet heads have no default names.
    all_preds = inference.predict_arrays("testing-hybrid", params, images[:1], top_k=50)
    assert sorted(p.index for p in all_preds[0]) == list(range(5))
    assert {p.name for p in all_preds[0]} == {None}
    np.testing.assert_allclose(sum(p.prob for p in all_preds[0]), 1.0, rtol=1e-5)


def test_label_names_from_tfds_objects_and_tasks(tmp_path):
    import tensorflow_datasets as tfds

    label = tfds.features.ClassLabel(names=["x", "y", "z"])
    assert inference.resolve_label_names(label, 3) == ("x", "y", "z")
    info = tfds.testing.DummyMnist(data_dir=str(tmp_path)).info
    assert inference.resolve_label_names(info, 10) == tuple(str(i) for i in range(10))
    pets = inference.resolve_label_names("oxford_iiit_pet", 37)
    assert pets[0] == "Abyssinian" and len(pets) == 37
    assert inference.resolve_label_names("imagenet2012", 1000)[0] == "tench, Tinca tinca"
    assert inference.resolve_label_names(None, 21843) is None
    with pytest.raises(ValueError, match="3 label names were given for a 4-class head"):
        inference.resolve_label_names(["a", "b", "c"], 4)


def test_predict_goes_through_the_one_preprocessing(tmp_path):
    params = ck.unflatten(fake_params("testing", num_classes=4, resolution=32, seed=1))
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8) for i in range(3)]
    path = tmp_path / "img.png"
    Image.fromarray(arrays[2]).save(path)
    inputs = [arrays[0], Image.fromarray(arrays[1]), str(path)]
    got = inference.predict("testing", params, inputs, top_k=4)  # resolution from params
    want = inference.predict_arrays("testing", params, prepare_images(arrays, 32), top_k=4)
    assert [[p.index for p in g] for g in got] == [[p.index for p in w] for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose([p.prob for p in g], [p.prob for p in w], rtol=1e-6)
    with pytest.raises(ValueError, match="pre-processed images"):
        inference.predict_arrays("testing", params, np.zeros((32, 32, 3)))


def test_predict_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    ckpt = write_fake_checkpoint(tmp_path / "t.npz", "testing", num_classes=3, resolution=32)
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(image)
    assert main(["predict", str(ckpt), str(image), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(image)
    assert len(lines) == 3 and all("%" in line and "class " in line for line in lines[1:])
    assert main(["predict", str(tmp_path / "missing.npz"), str(image)]) == 1
    err = capsys.readouterr().err
    assert "augreg-nb predict: error:" in err
    assert main(["predict", str(ckpt), str(image), "--labels", "oxford_iiit_pet"]) == 1
    assert "37 label names were given for a 3-class head" in capsys.readouterr().err
