"""Every registry of the package agrees with the paper's facts in augreg_nb.protocol.

The facts are written out here a second time only where the paper prints them (so a typo in
protocol.py fails too); everything else is compared with protocol itself.
"""

from __future__ import annotations

import itertools

import pytest

from augreg_nb import config, index, models, names, protocol, tasks, vtab
from augreg_nb.figures import derive, paper
from augreg_nb.testing import synthetic_index


def test_the_paper_facts_as_printed():
    # Section 3.3: RandAugment (l, m) and Mixup alpha of the seven settings.
    assert [(a.randaug_layers, a.randaug_magnitude, a.mixup_alpha)
            for a in protocol.AUGMENTATIONS.values()] == [
        (0, 0, 0.0), (2, 0, 0.0), (2, 10, 0.2), (2, 15, 0.2), (2, 15, 0.5), (2, 20, 0.5),
        (2, 20, 0.8)]
    # Table 4: warm-ups; the published ImageNet fine-tunes: two learning rates.
    assert {n: protocol.warmup_steps(n) for n in (500, 2500, 10_000, 20_000)} == {
        500: 100, 2500: 200, 10_000: 500, 20_000: 500}
    assert protocol.TRANSFER_SWEEP["imagenet2012"].learning_rates == (0.01, 0.03)
    assert len(protocol.MODELS) == 10 and len(protocol.COLUMNS) == 21
    assert sorted(protocol.MODELS_BY_COMPUTE) == sorted(protocol.PAPER_MODELS)


def test_the_model_registry_is_the_protocols():
    assert models.AUGREG_MODELS == protocol.MODELS
    assert models.list_models()[: len(protocol.MODELS)] == protocol.MODELS
    for name in protocol.MODELS:
        assert models.get_model_config(name).name == name
    assert paper.PAPER_MODELS == protocol.MODELS_BY_COMPUTE


def test_the_names_tables_are_the_protocols():
    assert names.MODELS == protocol.MODELS and names.PAPER_MODELS == protocol.PAPER_MODELS
    assert names.PRETRAIN_DATASETS == protocol.PRETRAIN_DATASETS
    assert names.ADAPT_DATASETS == protocol.ADAPT_DATASETS
    assert names.AUGMENTATIONS is protocol.AUGMENTATIONS
    assert names.AUG_NAMES == tuple(protocol.AUGMENTATIONS)
    assert names.PAPER_AUG_NAMES == tuple(a.paper_name for a in protocol.AUGMENTATIONS.values())
    # Every run length of the sweep can be written in a published name.
    lengths = {n for s in protocol.TRANSFER_SWEEP.values() for n in s.steps}
    assert lengths <= set(names.STEPS_TOKENS) == set(protocol.WARMUP_STEPS)


def test_the_index_columns_are_the_protocols():
    assert index.COLUMNS == protocol.COLUMNS
    assert tuple(index.COLUMN_DOCS) == protocol.COLUMNS
    assert derive.INDEX_COLUMNS == protocol.COLUMNS
    df = synthetic_index.make_synthetic_index()
    assert tuple(df.columns) == protocol.COLUMNS
    assert len(df) == protocol.EXPECTED_ROWS
    assert df["filename"].nunique() == protocol.EXPECTED_UPSTREAM


def test_the_task_registry_is_the_protocols():
    assert set(tasks.list_tasks()) == set(protocol.TRANSFER_SWEEP)
    for name, sweep in protocol.TRANSFER_SWEEP.items():
        task = tasks.get_task(name)
        assert (task.sweep_steps, task.learning_rates) == (sweep.steps, sweep.learning_rates)
        assert task.sweep == tuple((n, protocol.warmup_steps(n)) for n in sweep.steps)
    for name in tasks.list_tasks("vtab1k") + tasks.list_tasks("vtab"):
        task = tasks.get_task(name)
        assert task.sweep_steps == protocol.VTAB_SWEEP.steps
        assert task.learning_rates == protocol.VTAB_SWEEP.learning_rates
    assert vtab.SWEEP_STEPS == protocol.VTAB_SWEEP.steps


def test_the_synthetic_index_holds_exactly_the_published_sweep():
    df = synthetic_index.make_synthetic_index()
    for name, sweep in protocol.TRANSFER_SWEEP.items():
        runs = df[df["adapt_ds"] == name]
        got = set(zip(runs["adapt_steps"], runs["adapt_lr"], runs["adapt_resolution"],
                      strict=True))
        assert got == set(itertools.product(sweep.steps, sweep.learning_rates,
                                            protocol.SWEEP_RESOLUTIONS)), name


def test_the_config_presets_are_the_protocols_sweep():
    want = ["smoke"] + [
        f"{t}-{n}-{lr}-{res}" for t, s in protocol.TRANSFER_SWEEP.items()
        for n in s.steps for lr in s.learning_rates for res in protocol.SWEEP_RESOLUTIONS]
    # Besides the published sweep: the AugReg training presets, all named "augreg-*".
    augreg = [name for name in config.presets() if name.startswith("augreg-")]
    assert augreg == list(config.AUGREG_PRESETS)
    assert sorted(config.presets()) == sorted(want + augreg)
    c = config.get_config("imagenet2012-20000-0.03-384")
    assert (c.global_batch, c.momentum, c.momentum_dtype, c.grad_clip) == (
        protocol.GLOBAL_BATCH, protocol.MOMENTUM, protocol.MOMENTUM_DTYPE, protocol.GRAD_CLIP)
    assert c.warmup_steps == protocol.warmup_steps(20_000)


@pytest.mark.parametrize("preset", ["cifar100-2500-0.01-384", "smoke"])
def test_one_rule_names_run_folders(preset):
    c = config.get_config(preset)
    name = config.run_name(c)
    assert name.endswith(f"-steps_{c.total_steps}-lr_{c.base_lr:g}-res_{c.resolution}"
                         f"-seed_{c.seed}")
    assert "/" not in name and ":" not in name
    assert config.default_workdir(c).name == name


def test_the_pretraining_recipe_is_the_protocols():
    from augreg_nb import index_validate, upstream

    assert (upstream.BASE_LR, upstream.BATCH_SIZE, upstream.WARMUP_STEPS, upstream.GRAD_CLIP) == (
        protocol.PRETRAIN_LR, protocol.PRETRAIN_BATCH, protocol.PRETRAIN_WARMUP_STEPS,
        protocol.PRETRAIN_GRAD_CLIP)
    assert set(upstream.WEIGHT_DECAYS) == set(index_validate.DOMAINS["wd"]) == {0.03, 0.1}
    assert index_validate.EPOCHS_BY_DS == protocol.PRETRAIN_EPOCHS
    df = synthetic_index.make_synthetic_index()
    assert set(df["wd"]) == set(protocol.PRETRAIN_WEIGHT_DECAYS)
    assert set(df["do"]) == set(df["sd"]) == set(protocol.PRETRAIN_REGULARISATION)
