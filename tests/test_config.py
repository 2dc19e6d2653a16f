"""Fine-tuning configs: locked, documented, presets from the sweep, typed overrides."""

import re
from pathlib import Path

import pytest

from augreg_nb import config as config_lib
from augreg_nb.config import apply_overrides, get_config, preset_for, validate


def test_sweep_preset_is_parsed_with_table4_warmup():
    c = get_config("cifar100-2500-0.01-384")
    assert (c.task, c.total_steps, c.warmup_steps, c.base_lr, c.resolution) == (
        "cifar100", 2500, 200, 0.01, 384)
    assert c.global_batch == 512 and c.grad_clip == 1.0 and c.momentum == 0.9
    assert c.momentum_dtype == "bfloat16"
    assert get_config("oxford_iiit_pet-500-0.003-224").warmup_steps == 100
    assert get_config("resisc45-10000-0.03-224").warmup_steps == 500
    assert get_config("imagenet2012-20000-0.01-384").warmup_steps == 500


def test_preset_for_sets_the_checkpoint():
    c = preset_for("kitti", 2500, 0.001, 224, checkpoint="R26+S/32", micro_batches=16)
    assert c.checkpoint == "R26+S/32" and c.micro_batches == 16 and c.warmup_steps == 200


def test_config_is_locked_and_suggests_the_right_name():
    c = get_config("smoke")
    with pytest.raises(AttributeError, match="Did you mean \"base_lr\""):
        c.base_lf = 0.1
    with pytest.raises(TypeError):
        c.total_steps = "many"


def test_unknown_preset_names_the_format():
    with pytest.raises(ValueError, match="<task>-<steps>-<lr>-<resolution>"):
        get_config("cifar100")


def test_overrides_are_typed():
    c = get_config("smoke")
    apply_overrides(c, ["base_lr=0.003", "micro_batches=4", "workdir=/tmp/x y",
                        "model=testing", "export=False", "base_lr=1"])
    assert c.base_lr == 1.0 and isinstance(c.base_lr, float)
    assert c.micro_batches == 4 and c.workdir == "/tmp/x y" and c.export is False
    with pytest.raises(ValueError, match="Did you mean 'micro_batches'"):
        apply_overrides(c, ["micro_batch=2"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(c, ["micro_batches"])
    with pytest.raises(ValueError, match="total_steps"):
        apply_overrides(c, ["total_steps=lots"])


def test_validate_explains_bad_splits():
    c = get_config("cifar100-2500-0.01-384")
    validate(c, num_devices=8)  # 512 / (8 x 8)
    c.micro_batches = 3
    with pytest.raises(ValueError, match=r"Valid micro_batches here: \[1, 2, 4, 8"):
        validate(c, num_devices=8)
    c.micro_batches = 1
    c.warmup_steps = 3000
    with pytest.raises(ValueError, match="warmup_steps"):
        validate(c)
    c.warmup_steps = 200
    c.dtype = "float16"
    with pytest.raises(ValueError, match="dtype"):
        validate(c)


def test_every_field_has_a_comment():
    source = Path(config_lib.__file__).read_text()
    body = source[source.index("def _base()"):source.index("    return c\n")]
    lines = body.splitlines()
    fields = [(i, m.group(1)) for i, line in enumerate(lines)
              if (m := re.match(r"    c\.(\w+) = ", line))]
    assert len(fields) == len(get_config("smoke").keys())
    for i, name in fields:
        assert lines[i - 1].strip().startswith("#"), f"field {name} has no comment above it"


def test_smoke_preset_is_small():
    c = get_config("smoke")
    assert c.model == "testing" and c.checkpoint.startswith("fake:")
    assert c.total_steps <= 500 and c.resolution <= 64


def test_presets_list_the_published_sweep():
    names = config_lib.presets()
    assert "smoke" in names and "cifar100-10000-0.03-384" in names
    assert "oxford_iiit_pet-500-0.001-224" in names and "imagenet2012-20000-0.01-384" in names
    augreg = list(config_lib.AUGREG_PRESETS)
    assert names[1:1 + len(augreg)] == augreg == [
        "augreg-smoke", "augreg-pets-scratch", "augreg-pets-transfer"]
    names = [n for n in names if n not in augreg]
    assert len(names) == 1 + 4 * 2 * 4 * 2 + 2 * 2  # 4 tasks x 2 lengths x 4 lrs; ImageNet 2 lrs
    for name in names[1:6]:
        assert get_config(name).total_steps in (500, 2500, 10000, 20000)
