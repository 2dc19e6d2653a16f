"""The package's fine-tuning sweeps against the published ones: the paper's Table 4, the
downstream grid of the published index (counts per task, length, learning rate and
resolution) and the real index rows shipped in data/."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from augreg_nb.config import AUGREG_PRESETS, get_config, presets
from augreg_nb.resources import data_path
from augreg_nb.sweep import sweep_configs
from augreg_nb.tasks import get_task, list_tasks

TABLE4_NAMES = {  # Table 4's dataset names -> the package's task names
    "ImageNet-1k": "imagenet2012",
    "Pets37": "oxford_iiit_pet",
    "Kitti-distance": "kitti",
    "CIFAR-100": "cifar100",
    "Resisc45": "resisc45",
}


def _steps(text: str) -> int:
    """'20k' -> 20000, '2.5k' -> 2500, '500' -> 500."""
    text = text.strip()
    return round(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def table4() -> dict[str, tuple[set[float], set[tuple[int, int]]]]:
    """task -> (learning rates, {(total steps, warm-up)}) as printed in Table 4."""
    out = {}
    for _, row in pd.read_csv(data_path("paper", "table4_finetune_sweep.csv")).iterrows():
        lrs = {float(x) for x in row["learning_rates"].strip("{}").split(",")}
        pairs = {(_steps(a), _steps(b)) for a, b in
                 re.findall(r"\(([^,]+),\s*([^)]+)\)", row["total_steps_warmup_steps"])}
        out[TABLE4_NAMES[row["dataset"]]] = (lrs, pairs)
    return out


def published_grid() -> set[tuple[str, int, float, int]]:
    """(task, steps, lr, resolution) of every fine-tuning setting in the published index
    (the vit_jax AugReg notebook's downstream grid counts, 755..759 upstreams each)."""
    grid = pd.read_csv(data_path("index", "tidy_cell18_downstream_counts.csv"))
    assert (grid["count"] >= 755).all()
    return {(r.adapt_ds, int(r.adapt_steps), float(r.adapt_lr), int(r.adapt_resolution))
            for r in grid.itertuples()}


def index_rows() -> pd.DataFrame:
    """Real index rows (all 21 columns) shipped with the package, fine-tunes only."""
    frames = [pd.read_csv(data_path("index", "index_csv_known_rows_union.csv")),
              pd.read_csv(data_path("catalog", "augreg_catalogue.csv"))]
    rows = pd.concat(frames, ignore_index=True).dropna(subset=["adapt_lr", "adapt_steps"])
    assert len(rows) > 40
    return rows


def package_grid() -> set[tuple[str, int, float, int]]:
    """Every (task, steps, lr, resolution) the package offers as a sweep preset."""
    out = set()
    for name in presets():
        if name == "smoke" or name in AUGREG_PRESETS:  # not fine-tuning sweep points
            continue
        c = get_config(name)
        out.add((c.task, c.total_steps, c.base_lr, c.resolution))
    return out


def test_package_sweep_is_exactly_the_published_grid():
    assert package_grid() == published_grid()


@pytest.mark.parametrize("task", sorted(TABLE4_NAMES.values()))
def test_table4_settings_are_in_the_package_sweep(task):
    lrs, pairs = table4()[task]
    t = get_task(task)
    assert lrs <= set(t.learning_rates)
    assert pairs == set(t.sweep)  # lengths and their warm-ups
    for steps, warmup in pairs:
        for lr in lrs:
            c = get_config(f"{task}-{steps}-{lr}-384")
            assert (c.total_steps, c.warmup_steps, c.base_lr) == (steps, warmup, lr)


def test_imagenet_sweep_has_only_published_values():
    t = get_task("imagenet2012")
    lrs, pairs = table4()["imagenet2012"]
    assert set(t.learning_rates) == lrs == {0.01, 0.03}
    assert set(t.sweep) == pairs == {(20000, 500)}
    rows = index_rows()
    rows = rows[rows.adapt_ds == "imagenet2012"]
    assert set(rows.adapt_lr.astype(float)) == {0.01, 0.03}
    base = get_config("imagenet2012-20000-0.01-384")
    configs = sweep_configs(base)
    assert sorted({c.base_lr for c in configs}) == [0.01, 0.03]
    assert {(c.total_steps, c.warmup_steps) for c in configs} == {(20000, 500)}
    assert len(configs) == 2 * 2  # 2 learning rates x 224 / 384 px
    assert "imagenet2012-20000-0.001-384" not in presets()  # never published for ImageNet


def test_every_published_index_row_is_in_the_package_sweep():
    grid = package_grid()
    rows = index_rows()
    assert set(rows.adapt_ds) <= set(list_tasks())
    for r in rows.itertuples():
        key = (r.adapt_ds, int(r.adapt_steps), float(r.adapt_lr), int(r.adapt_resolution))
        assert key in grid, key
