"""Queries on the index and the shipped catalogue's honesty (checked against the sources)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from augreg_nb import catalogue, index, index_queries, names
from augreg_nb.resources import data_path
from augreg_nb.testing.synthetic_index import make_synthetic_index


@pytest.fixture(scope="module")
def full():
    """The synthetic complete table, validated the way load_index does it."""
    df = index.validate_index(make_synthetic_index(seed=1))
    df.attrs["provenance"] = {"source": "synthetic", "complete": True}
    return df


@pytest.fixture(scope="module")
def cat():
    return index.load_index("catalogue")


# --------------------------------------------------------------------------- catalogue


def test_shipped_catalogue_is_up_to_date(tmp_path):
    rebuilt = catalogue.write_catalogue(tmp_path / "augreg_catalogue.csv")
    assert rebuilt.read_text() == catalogue.catalogue_path().read_text(), (
        "data/catalog/augreg_catalogue.csv is stale: run `python -m augreg_nb.catalogue`"
    )


def test_every_catalogue_filename_round_trips(cat):
    for fn in set(cat["filename"]) | set(cat["adapt_filename"]):
        assert str(names.parse_name(fn)) == fn


METRICS = ["best_val", "final_val", "final_test", "adapt_final_val", "adapt_final_test",
           "params", "infer_samples_per_sec"]  # fmt: skip


def test_catalogue_never_invents_a_number(cat):
    union = pd.read_csv(data_path("index", "index_csv_known_rows_union.csv"))
    union = union.set_index("adapt_filename")
    for row in cat.itertuples(index=False):
        if row.adapt_filename in union.index:
            src = union.loc[row.adapt_filename]
            for col in METRICS:
                mine, theirs = getattr(row, col), src[col]
                assert (pd.isna(mine) and pd.isna(theirs)) or mine == theirs, (row, col)
        else:  # known by name only: mirror list or README table
            assert all(pd.isna(getattr(row, c)) for c in METRICS), row.adapt_filename
            assert row.config_from_filename and not row.published_pick
    mirror = pd.read_csv(data_path("mirror", "timm_augreg_checkpoints.csv")).dropna(
        subset=["adapt_suffix"]
    )
    wanted = set(mirror["upstream_filename"] + "--" + mirror["adapt_suffix"])
    assert wanted <= set(cat["adapt_filename"])
    assert set(mirror["upstream_filename"]) <= set(cat["filename"])


def test_catalogue_reproduces_table_3_for_all_paper_models(cat):
    table3 = pd.read_csv(data_path("paper", "table3_imagenet1k_transfer.csv")).set_index("model")
    readme = pd.read_csv(data_path("index", "recommended_checkpoints.csv")).set_index("model")
    rec = index.recommended_checkpoints(cat)
    assert rec.attrs["selected_by"] == index_queries.PUBLISHED
    for model in names.PAPER_MODELS:
        up = rec.loc[model, "filename"]
        assert readme.loc[model, "pretrained_checkpoint"].endswith(f"/{up}.npz")
        ft = index.best_finetune(cat, up, "imagenet2012", 384)
        assert readme.loc[model, "finetuned_checkpoint"].endswith(f"/{ft['adapt_filename']}.npz")
        printed = table3.loc[model, "i21k_300_384"]
        assert f"{ft['adapt_final_test'] * 100:.2f}" == f"{printed:.2f}", model
        assert ft["selected_by"].startswith("published")


def test_the_rule_is_not_applied_to_an_incomplete_table(cat):
    assert not index.is_complete(cat)
    published = index.recommended_checkpoints(cat)
    assert (published["selected_by"] == index_queries.PUBLISHED).all()
    # What the rule would say on the known rows alone: wrong for S/32.
    naive = index.recommended_checkpoints(cat, method="rule")
    assert naive.loc["S/32", "filename"] != published.loc["S/32", "filename"]
    assert naive.loc["S/32", "filename"] == (
        "S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.1-do_0.0-sd_0.0"
    )


def test_best_finetune_on_an_incomplete_table_says_it_saw_only_known_rows(cat):
    up = "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0"
    pets = pd.read_csv(
        data_path("index", "vit_jax_augreg_nb_cell23_R26S32_best_i21k_oxford_iiit_pet.csv")
    )
    at384 = pets[pets["adapt_resolution"] == 384]
    expected = at384.loc[at384["adapt_final_val"].idxmax()]  # first of any tie, as idxmax
    got = index.best_finetune(cat, up, "oxford_iiit_pet", 384)
    assert got["adapt_final_val"] == expected["adapt_final_val"]
    assert got["adapt_filename"] == expected["adapt_filename"]
    assert "known rows only" in got["selected_by"]
    with pytest.raises(LookupError, match="fine-tunes present: imagenet2012@384"):
        index.best_finetune(cat, up, "kitti", 224)


# --------------------------------------------------------------------------- complete table


def _reference_best(df, keep: np.ndarray, key: np.ndarray, score: np.ndarray) -> dict:
    """Plain-Python argmax of ``score`` per ``key`` over rows where ``keep``."""
    best: dict = {}
    for i in np.flatnonzero(keep):
        if key[i] not in best or score[i] > score[best[key[i]]]:
            best[key[i]] = i
    return best


def test_recommended_on_a_complete_table_applies_the_rule(full):
    rec = index.recommended_checkpoints(full)
    assert (rec["selected_by"] == index_queries.RULE).all()
    ds = full["ds"].to_numpy(dtype=object)
    best = _reference_best(
        full, ds == "i21k", full["name"].to_numpy(dtype=object), full["final_val"].to_numpy()
    )
    assert list(rec.index) == list(names.MODELS)
    for model, i in best.items():
        assert rec.loc[model, "filename"] == full["filename"].iat[i]
        assert rec.loc[model, "final_val"] == full["final_val"].iat[i]
        assert rec.loc[model, "aug_paper"] == names.index_to_paper_aug(full["aug"].iat[i])


def test_best_finetune_on_a_complete_table(full):
    up = full["filename"].iat[5000]
    got = index.best_finetune(full, up, "cifar100", 224)
    keep = (
        (full["filename"].to_numpy(dtype=object) == up)
        & (full["adapt_ds"].to_numpy(dtype=object) == "cifar100")
        & (full["adapt_resolution"].to_numpy() == 224)
    )
    assert keep.sum() == 8
    i = _reference_best(full, keep, np.zeros(len(full)), full["adapt_final_val"].to_numpy())[0]
    assert got["adapt_filename"] == full["adapt_filename"].iat[i]
    assert got["selected_by"] == index_queries.FT_RULE
    # A fine-tuned name selects through its upstream.
    again = index.best_finetune(full, full["adapt_filename"].iat[i], "cifar100", 224)
    assert again["adapt_filename"] == got["adapt_filename"]


def test_grids_match_the_authors_notebook_counts(full):
    down = index.grid_summary(full, "downstream", tidy=True)
    ref = pd.read_csv(data_path("index", "tidy_cell18_downstream_counts.csv"))
    keys = ["adapt_resolution", "adapt_ds", "adapt_steps", "adapt_lr"]
    merged = ref.merge(down.astype({"adapt_ds": str}), on=keys, how="outer",
                       suffixes=("_ref", ""), indicator=True)  # fmt: skip
    assert (merged["_merge"] == "both").all()
    np.testing.assert_array_equal(merged["count"], merged["count_ref"])

    up = index.grid_summary(full, "upstream", tidy=True).astype({"ds": str, "name": str,
                                                               "aug": str})
    ref = pd.read_csv(data_path("index", "tidy_cell17_upstream_counts.csv"))
    merged = ref.merge(up, on=["ds", "name", "wd", "aug", "sd", "do"], suffixes=("_ref", ""))
    assert len(merged) == len(ref)
    np.testing.assert_array_equal(merged["count"], merged["count_ref"])
    assert up["count"].sum() == 51_509

    pivot = index.grid_summary(full, "upstream")
    assert pivot.shape == (9 * 3 * 2 + 1, 14)  # (ds, name, wd) x (aug, sd, do); B/8: 1 row
    assert pivot.loc[("i1k", "B/16", 0.03), ("light0", 0.0, 0.0)] == 68
    wide = index.grid_summary(full, "downstream")
    assert wide.loc[(384, "imagenet2012"), (20000, 0.03)] == 755


def test_filter_index_spellings_and_value_forms(full):
    name = full["name"].to_numpy(dtype=object)
    aug = full["aug"].to_numpy(dtype=object)
    res = full["adapt_resolution"].to_numpy()
    expected = (name == "B/16") & (aug == "light1") & (res == 384)
    for model in ("B/16", "B_16", "vit_base_patch16_384"):
        got = index.filter_index(full, model=model, aug_paper="light2", resolution=384)
        np.testing.assert_array_equal(got.index, np.flatnonzero(expected))
    same = index.filter_index(full, name="B/16", aug="light1", adapt_resolution=[384])
    assert same.index.equals(got.index)
    val = full["adapt_final_val"].to_numpy()
    rng = index.filter_index(full, adapt_final_val=slice(0.9, 0.95))
    assert len(rng) == int(((val >= 0.9) & (val <= 0.95)).sum())
    fn = index.filter_index(full, params=lambda s: s.isna())
    assert set(fn["name"]) == {"B/8"}
    several = index.filter_index(full, aug_paper=["light1", "heavy2"], ds="i1k")
    assert set(several["aug"]) == {"light0", "strong2"}


def test_filter_index_errors_name_the_fix(full):
    with pytest.raises(ValueError, match="aug_paper='light2'"):
        index.filter_index(full, aug="light2")
    with pytest.raises(ValueError, match="did you mean 'adapt_lr'"):
        index.filter_index(full, adapt_lrr=0.01)
    with pytest.raises(ValueError, match="did you mean 'oxford_iiit_pet'"):
        index.filter_index(full, task="oxford_iit_pet")
    with pytest.raises(ValueError, match="unknown model"):
        index.filter_index(full, model="B/17")


def test_sort_checkpoints(full):
    top = index.sort_checkpoints(full, "adapt_final_test", top=5)
    ref = np.sort(full["adapt_final_test"].to_numpy())[::-1][:5]
    np.testing.assert_array_equal(top["adapt_final_test"], ref)
    with pytest.raises(ValueError, match="not columns"):
        index.sort_checkpoints(full, "accuracy")


def test_availability(cat, tmp_path, monkeypatch):
    local = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    (tmp_path / f"{local}.npz").write_bytes(b"")
    monkeypatch.setenv("AUGREG_NB_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("AUGREG_NB_BUCKET_URL", "http://127.0.0.1:9/augreg")
    av = index.availability(cat).set_index("filename")
    assert len(av) == cat["filename"].nunique() + len(cat)
    assert av.loc[local, "bucket_url"] == f"http://127.0.0.1:9/augreg/{local}.npz"
    assert av.loc[local, "local_path"] == str(tmp_path / f"{local}.npz")
    mirror = pd.read_csv(data_path("mirror", "timm_augreg_checkpoints.csv"))
    mirror = mirror.dropna(subset=["upstream_filename"])
    full_names = mirror["upstream_filename"].where(
        mirror["adapt_suffix"].isna(), mirror["upstream_filename"] + "--" + mirror["adapt_suffix"]
    )
    for fn, timm_name in zip(full_names, mirror["timm_name"], strict=True):
        assert av.loc[fn, "hf_repo"] == f"timm/{timm_name}"
    assert (av["hf_repo"] != "").sum() == len(set(full_names))
    assert set(av["kind"]) == {"upstream", "fine-tuned"}
