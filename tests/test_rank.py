"""Ranking checkpoints by few-shot probes: features, cache, cost, stop/resume, plot, CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from augreg_nb import features, rank
from augreg_nb.random_checkpoints import write_fake_checkpoint

CLASSES = ("blue", "green", "grey", "red")
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200),
           "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four classes of noisy solid-colour images: any random ViT separates them, so the
    probe's accuracy is far above chance (25%) when features and labels line up."""
    root = tmp_path_factory.mktemp("photos") / "colours"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(20):
            base = np.array(COLOURS[name], float)
            img = np.clip(base + rng.normal(0, 25, (20, 28, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return [str(write_fake_checkpoint(d / "vit.npz", "testing", num_classes=10,
                                      resolution=32, seed=1)),
            str(write_fake_checkpoint(d / "hybrid.npz", "testing-hybrid", num_classes=10,
                                      resolution=32, seed=2))]


def test_pre_logits_are_the_class_token_after_the_final_norm():
    import jax
    import jax.numpy as jnp

    from augreg_nb.models import create_model

    model = create_model("testing", 7)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32, 3))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    _, state = model.apply({"params": params}, x, capture_intermediates=True,
                           mutable=["intermediates"])
    normed = state["intermediates"]["Transformer"]["encoder_norm"]["__call__"][0]
    got = features.pre_logits_fn("testing")(features.without_head(params), x)
    np.testing.assert_allclose(got, normed[:, 0], rtol=1e-5, atol=1e-5)
    # and the head applied to them gives the logits
    head = params["head"]
    np.testing.assert_allclose(got @ head["kernel"] + head["bias"],
                               model.apply({"params": params}, x), rtol=1e-4, atol=1e-4)
    assert jnp.shape(got) == (3, 32)


def test_rank_a_folder_caches_and_reranks_without_forward_passes(folder, ckpts, tmp_path,
                                                                 monkeypatch):
    events = []
    result = rank.rank(str(folder), ckpts, shots=(1, 5), seeds=2, resolution=32,
                       batch_size=8, cache_root=tmp_path, on_progress=events.append)
    t = result.table
    assert sorted(t["candidate"].unique()) == ["hybrid.npz", "vit.npz"]
    assert len(t) == 2 * 2 * 2  # candidates x shots x seeds
    assert (t.groupby("candidate")["accuracy"].max() > 0.6).all()  # chance: 0.25
    assert result.winner in ckpts and result.order[0] == result.summary.columns[0][1]
    assert set(result.summary.index) == {1, 5}
    phases = [e.phase for e in events]
    assert phases[0] == "plan" and phases[-1] == "done" and phases.count("candidate") == 2
    plan = events[0].plan
    sizes = rank.split_sizes(rank.resolve_task(str(folder)))
    assert plan["images"].tolist() == [sizes["train"] + sizes["test"]] * 2
    assert (plan["batch_s"] > 0).all() and not plan["cached"].any()
    assert "per batch of 8" in events[0].text
    assert (result.candidates["measured_img_per_sec"] > 0).all()
    files = sorted(p.name for p in tmp_path.rglob("*.npz"))
    assert len(files) == 4 and all(f.endswith(".npz") for f in files)

    # the same features as a direct extraction, in the split's order
    task = rank.resolve_task(str(folder))
    path = features.cache_path(ckpts[0], task, "test", 32, tmp_path)
    x, y, meta = features.read(path, features.describe(ckpts[0], task, "test", 32))
    assert meta["model"] == "testing" and meta["preprocess"].startswith("resize(37)")
    assert y.tolist() == [c for _, c in task.folder.files["test"]]

    def no_forward(*a, **k):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(features, "extract", no_forward)
    monkeypatch.setattr(rank, "measure_forward", no_forward)
    again = rank.rank(str(folder), ckpts, shots=(1, 5, 10), seeds=2, resolution=32,
                      batch_size=8, cache_root=tmp_path)
    assert again.plan["cached"].all() and (again.plan["seconds"] == 0).all()
    pd.testing.assert_frame_equal(
        again.table[again.table["shots"] < 10].reset_index(drop=True), t.reset_index(drop=True))


def test_stop_keeps_finished_candidates_and_the_rerun_continues(folder, ckpts, tmp_path):
    done = []

    def on_progress(p):
        if p.phase == "candidate":
            done.append(p.label)

    result = rank.rank(str(folder), ckpts, shots=(1,), seeds=1, resolution=32, batch_size=8,
                       cache_root=tmp_path, estimate=False, on_progress=on_progress,
                       should_stop=lambda: bool(done))
    assert result.stopped and done == ["vit.npz"]
    assert list(result.table["candidate"].unique()) == ["vit.npz"]
    task = rank.resolve_task(str(folder))
    plan = rank.estimate_cost(rank.make_candidates(ckpts, resolution=32), task, batch_size=8,
                              cache_root=tmp_path)
    assert plan["cached"].tolist() == [True, False]
    assert plan["seconds"].iloc[0] == 0 and plan["seconds"].iloc[1] > 0


def test_damaged_or_foreign_cache_files_are_computed_again(folder, ckpts, tmp_path, caplog):
    task = rank.resolve_task(str(folder))
    meta = features.describe(ckpts[0], task, "test", 32)
    path = features.cache_path(ckpts[0], task, "test", 32, tmp_path)
    x = np.ones((3, 4), np.float32)
    features.write(path, x, np.zeros(3), meta)
    assert features.read(path, meta)[0].shape == (3, 4)
    assert features.read(path, {**meta, "resolution": 64}) is None  # made for other inputs
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert features.read(path, meta) is None
    assert "unreadable" in caplog.text
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_candidates_from_the_catalogue():
    from augreg_nb.index import load_index, recommended_checkpoints

    df = load_index("catalogue")
    default = rank.make_candidates(index=df)
    assert len(default) == 9 and "B/8" not in {c.model for c in default}
    assert all(c.resolution == 224 and c.img_per_sec > 0 for c in default)
    rec = recommended_checkpoints(df)
    ti = rank.make_candidates(["Ti/16"], index=df)[0]
    assert ti.checkpoint == rec.loc["Ti/16", "filename"] and ti.img_per_sec == 3097
    ft = rank.make_candidates([rec.loc["S/16", "filename"] + "--imagenet2012-steps_20k-lr_0.03"
                               "-res_384"], index=df)[0]
    assert ft.resolution == 384 and ft.img_per_sec == 300
    assert rank.make_candidates(["fake:testing"], resolution=32)[0].model == "testing"
    with pytest.raises(ValueError, match="no candidate"):
        rank.make_candidates([], index=df)


def test_paper_pick_rule():
    a = rank.Candidate("a", "a", "B/16", 224, upstream_val=0.5, imagenet_top1=83.96)
    b = rank.Candidate("b", "b", "L/16", 224, upstream_val=0.4, imagenet_top1=83.98)
    assert rank.paper_pick([a, b]) == ("a", rank.RULE_FINAL_VAL)
    b.upstream_val = math.nan
    assert rank.paper_pick([a, b]) == ("b", rank.RULE_TABLE3)
    c = rank.Candidate("c", "c", "testing", 32)
    assert rank.paper_pick([c])[0] is None


def _result(speeds):
    rows = [{"candidate": n, "shots": 10, "seed": s, "accuracy": acc + 0.01 * s,
             "train_examples": 40} for n, acc in (("x", 0.5), ("y", 0.8)) for s in range(3)]
    cands = pd.DataFrame({"label": ["x", "y"], "checkpoint": ["cx", "cy"],
                          "img_per_sec": speeds, "measured_img_per_sec": [math.nan] * 2})
    return rank.RankResult("t", pd.DataFrame(rows), cands, (10,), paper_pick="x")


def test_plot_marks_the_best_and_the_paper_pick():
    result = _result([659.0, 3097.0])
    assert result.winner == "cy" and result.order == ["y", "x"]
    fig = rank.plot_rank(result)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "Table 3" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["best here: y", "paper's pick: x"]
    assert "y" in result.text() and "(paper's pick)" in result.text()
    fig = rank.plot_rank(_result([math.nan, 3097.0]))  # no speed for x: side by side
    assert "no speed" in fig.axes[0].get_xlabel()


@pytest.mark.slow
def test_cli_rank_smoke(tmp_path):
    """The command in a fresh interpreter (nothing imported beforehand registers the
    fake checkpoints for it): a table, the paper's pick and the winner for notebook 2."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AUGREG_NB_CACHE": str(tmp_path / "cache"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "augreg_nb", "rank", "--smoke", "--shots",
                           "1", "5", "--seeds", "1", "--csv", str(tmp_path / "r.csv")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "cost of ranking 3 candidate(s)" in out and "5-shot" in out
    assert "could not" not in out and "paper's pick: fake:Ti/16" in out
    assert "winner: fake:" in out and "CHECKPOINT = 'fake:" in out
    table = pd.read_csv(tmp_path / "r.csv")
    assert len(table) == 3 * 2 and set(table["shots"]) == {1, 5}


def test_rank_a_tfds_dataset_and_a_paper_task(ckpts, tmp_path):
    """The other kinds of task: ``tfds:<name>`` (a prepared dataset) and a paper task (Pets,
    read as TFDS mock data with its real features: 37 classes)."""
    from augreg_nb.mock_tfds import mock_tfds
    from augreg_nb.testing.datasets import write_tfds_dataset

    write_tfds_dataset(tmp_path / "tfds", sizes={"train": 12, "test": 6})
    result = rank.rank("tfds:augreg_tiny", ckpts[:1], shots=(2,), seeds=1, resolution=32,
                       batch_size=4, data_dir=str(tmp_path / "tfds"),
                       cache_root=tmp_path / "c1", estimate=False)
    assert result.task == "augreg_tiny" and len(result.table) == 1
    assert result.table["train_examples"].iat[0] == 6  # 2 shots x 3 classes
    with mock_tfds(num_examples=6):
        pets = rank.rank("oxford_iiit_pet", ckpts[:1], shots=(1,), seeds=1, resolution=32,
                         batch_size=4, cache_root=tmp_path / "c2", estimate=False)
    assert pets.task == "oxford_iiit_pet" and 0.0 <= pets.table["accuracy"].iat[0] <= 1.0
    assert len(list((tmp_path / "c2").rglob("*.npz"))) == 2


def test_rank_with_bfloat16_matmuls_keeps_its_own_features(folder, ckpts, tmp_path):
    """bfloat16 features are extracted and cached apart: a float32 rank after them computes
    its own, and both probe the colours far above chance."""
    low = rank.rank(str(folder), ckpts[:1], shots=(5,), seeds=2, resolution=32,
                    batch_size=8, cache_root=tmp_path, matmul_dtype="bfloat16")
    assert (low.table["accuracy"] > 0.6).all()
    task = rank.resolve_task(str(folder))
    p16 = features.cache_path(ckpts[0], task, "test", 32, tmp_path, "bfloat16")
    x16, _, meta = features.read(p16, features.describe(ckpts[0], task, "test", 32,
                                                        "bfloat16"))
    assert meta["matmul_dtype"] == "bfloat16"
    full = rank.rank(str(folder), ckpts[:1], shots=(5,), seeds=2, resolution=32,
                     batch_size=8, cache_root=tmp_path)
    assert not full.plan["cached"].any()
    x32, _, _ = features.read(features.cache_path(ckpts[0], task, "test", 32, tmp_path),
                              features.describe(ckpts[0], task, "test", 32))
    assert not np.array_equal(x16, x32)
    np.testing.assert_allclose(x16, x32, atol=3e-2 * np.max(np.abs(x32)))
    assert (full.table["accuracy"] > 0.6).all()
