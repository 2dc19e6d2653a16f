"""Checkpoint names: round trips on every published name, conversions, clear errors."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from augreg_nb import names
from augreg_nb.resources import data_path


def _published_filenames() -> set[str]:
    """Every complete filename printed in the shipped source files (truncated ones skipped)."""
    found: set[str] = set()
    for path in sorted(data_path("index").glob("*.csv")):
        df = pd.read_csv(path)
        for col in ("filename", "adapt_filename"):
            if col in df:
                found |= {f for f in df[col].dropna() if not f.endswith("...")}
    rec = pd.read_csv(data_path("index", "recommended_checkpoints.csv"))
    for col in ("pretrained_checkpoint", "finetuned_checkpoint"):
        found |= {u.rsplit("/", 1)[-1].removesuffix(".npz") for u in rec[col]}
    mirror = pd.read_csv(data_path("mirror", "timm_augreg_checkpoints.csv"))
    for r in mirror.dropna(subset=["upstream_filename"]).itertuples():
        found.add(r.upstream_filename)
        if isinstance(r.adapt_suffix, str):
            found.add(f"{r.upstream_filename}--{r.adapt_suffix}")
    return found


PUBLISHED = sorted(_published_filenames())


def test_enough_published_names_to_matter():
    assert len(PUBLISHED) > 60
    assert any("steps_0k" in f for f in PUBLISHED) and any("steps_2k" in f for f in PUBLISHED)


@pytest.mark.parametrize("filename", PUBLISHED)
def test_every_published_name_round_trips(filename):
    n = names.parse_name(filename)
    assert str(n) == filename == n.filename
    assert names.parse_name(str(n)) == n
    if n.is_finetuned:
        assert filename.startswith(n.upstream.filename + "--")
        assert filename == f"{n.upstream_filename}--{n.adapt_suffix}"
    else:
        assert n.upstream is n and n.adapt_suffix is None


def test_parsed_fields_match_the_rows_printed_next_to_them():
    rows = pd.read_csv(data_path("index", "index_csv_known_rows_union.csv"))
    rows = rows[rows["filenames_reconstructed"] == "no"].dropna(subset=["adapt_steps"])
    assert len(rows) >= 16
    for r in rows.itertuples():
        n = names.parse_name(r.adapt_filename)
        assert (n.model, n.pretraining, n.adapt_ds) == (r.name, r.ds, r.adapt_ds)
        assert (n.adapt_steps, n.adapt_lr, n.adapt_resolution) == (
            r.adapt_steps, r.adapt_lr, r.adapt_resolution)  # fmt: skip


@pytest.mark.parametrize(
    "token,steps", [("0k", 500), ("2k", 2500), ("10k", 10000), ("20k", 20000)]
)
def test_steps_tokens(token, steps):
    up = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    fn = f"{up}--kitti-steps_{token}-lr_0.003-res_384"
    n = names.parse_name(fn)
    assert n.adapt_steps == steps and n.adapt_lr == 0.003 and n.adapt_resolution == 384
    assert n.upstream.finetuned("kitti", steps, 0.003, 384).filename == fn


def test_fields_of_a_finetuned_name():
    n = names.parse_name(
        "gs://vit_models/augreg/R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1"
        "--oxford_iiit_pet-steps_0k-lr_0.03-res_224.npz"
    )
    assert dataclasses.astuple(n) == (
        "R26+S/32", "i21k", 300, 0.001, "light0", 0.03, 0.1, 0.1,
        "oxford_iiit_pet", 500, 0.03, 224,
    )  # fmt: skip
    assert n.is_finetuned and n.aug_paper == "light1" and n.prefix == "R26_S_32"
    assert n.augmentation == names.Augmentation("light0", "light1", 2, 0, 0.0)
    assert n.timm_arch == "vit_small_r26_s32_224"
    assert not n.upstream.is_finetuned and n.upstream.resolution == 224
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.model = "B/16"


def test_i21k_30_is_understood_in_both_spellings():
    a = names.CheckpointName("S/16", "i21k_30", 30, 0.001, "none", 0.1, 0.0, 0.0)
    assert a.filename == "S_16-i21k_30-30ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0"
    assert names.parse_name(a.filename) == a
    b = names.parse_name("S_16-i21k-30ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0")
    assert b.ds == "i21k" and b.pretraining == "i21k_30"


def test_model_name_conversions():
    assert names.MODELS == ("Ti/16", "S/16", "S/32", "B/16", "B/32", "B/8", "L/16",
                            "R+Ti/16", "R26+S/32", "R50+L/32")  # fmt: skip
    assert names.model_to_prefix("R26+S/32") == "R26_S_32"
    assert names.model_to_prefix("R+Ti/16") == "R_Ti_16"
    assert names.prefix_to_model("R50_L_32") == "R50+L/32"
    for m in names.MODELS:
        assert names.prefix_to_model(names.model_to_prefix(m)) == m
        assert names.normalize_model(names.model_to_prefix(m)) == m
        assert names.timm_arch_to_model(names.model_to_timm_arch(m)) == (m, 224)
    assert names.normalize_model("vit_large_r50_s32_384") == "R50+L/32"
    assert len(names.PAPER_MODELS) == 9 and "B/8" not in names.PAPER_MODELS


def test_timm_architectures_agree_with_timms_own_list():
    mirror = pd.read_csv(data_path("mirror", "timm_augreg_checkpoints.csv"))
    checked = set()
    for r in mirror.dropna(subset=["upstream_filename"]).itertuples():
        model = names.parse_name(r.upstream_filename).model
        arch = r.timm_name.split(".")[0]
        assert names.model_to_timm_arch(model, r.input_size) == arch
        assert names.timm_arch_to_model(r.timm_name) == (model, r.input_size)
        checked.add(model)
    assert checked == set(names.MODELS)
    for arch in ("vit_small_r26_s32_224", "vit_tiny_r_s16_p8_224", "vit_large_r50_s32_384",
                 "vit_base_patch8_224"):  # fmt: skip
        assert names.model_to_timm_arch(*names.timm_arch_to_model(arch)) == arch


def test_b8_has_no_384_timm_architecture():
    with pytest.raises(ValueError, match="only at 224"):
        names.model_to_timm_arch("B/8", 384)


def test_augmentation_names_match_figure_4_and_the_paper_settings():
    fig4 = pd.read_csv(data_path("paper", "fig4_upstream_val_acc_heatmap.csv"))
    pairs = set(zip(fig4["aug_paper"], fig4["aug_index_csv_inferred"], strict=True))
    assert len(pairs) == 7
    for paper, idx in pairs:
        assert names.paper_to_index_aug(paper) == idx
        expected_paper = {"heavy1": "strong1", "heavy2": "strong2"}.get(paper, paper)
        assert names.index_to_paper_aug(idx) == expected_paper
    # Section 3.3 of the paper: (RandAugment layers, magnitude, Mixup alpha).
    paper_settings = {
        "none": (0, 0, 0.0), "light1": (2, 0, 0.0), "light2": (2, 10, 0.2),
        "medium1": (2, 15, 0.2), "medium2": (2, 15, 0.5), "strong1": (2, 20, 0.5),
        "strong2": (2, 20, 0.8),
    }  # fmt: skip
    for paper, setting in paper_settings.items():
        a = names.AUGMENTATIONS[names.paper_to_index_aug(paper)]
        assert (a.randaug_layers, a.randaug_magnitude, a.mixup_alpha) == setting
    assert names.paper_to_index_aug("light1") == "light0"
    assert names.paper_to_index_aug("light2") == "light1"


UP = "B_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"


@pytest.mark.parametrize(
    "bad,message",
    [
        ("", "non-empty"),
        ("X_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "model prefix 'X_16'"),
        ("B_16-i22k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "pre-training dataset"),
        ("B_16-i21k-300-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "epochs"),
        ("B_16-i21k-300ep-lr0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "learning rate"),
        ("B_16-i21k-300ep-lr_0.001-aug_light2-wd_0.03-do_0.0-sd_0.0", "paper name"),
        ("B_16-i21k-300ep-lr_0.001-aug_none-wd_0.030-do_0.0-sd_0.0", "'wd_0.030'"),
        ("B_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0", "7 '-'-separated fields"),
        (UP + "--pets-steps_2k-lr_0.01-res_384", "fine-tuning dataset 'pets'"),
        (UP + "--kitti-steps_3k-lr_0.01-res_384", "steps_3k"),
        (UP + "--kitti-steps_2k-lr_0.01-res384", "fine-tuning resolution"),
        (UP + "--kitti-steps_2k-lr_0.01", "3 '-'-separated fields"),
        (UP + "--kitti-steps_2k-lr_0.01-res_384--x", "more than one '--'"),
    ],
)
def test_malformed_names_say_which_part_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        names.parse_name(bad)
    assert not names.is_valid_name(bad)


def test_own_tasks_need_any_task():
    fn = UP + "--my_flowers-steps_2k-lr_0.01-res_224"
    assert names.parse_name(fn, any_task=True).adapt_ds == "my_flowers"


def test_dataclass_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="needs all of adapt_ds"):
        names.CheckpointName("B/16", "i21k", 300, 0.001, "none", 0.1, 0.0, 0.0, adapt_ds="kitti")
    with pytest.raises(ValueError, match="no published filename form"):
        names.CheckpointName("B/16", "i21k", 300, 0.001, "none", 0.1, 0.0, 0.0,
                             "kitti", 2000, 0.01, 224)  # fmt: skip
    with pytest.raises(ValueError, match="did you mean 'B/16'"):
        names.CheckpointName("B/17", "i21k", 300, 0.001, "none", 0.1, 0.0, 0.0)
