"""The compiled step's memory (augreg_nb.memory): the state's bytes per device against a
count by hand, replicated and sharded over 8 devices, and the advice after running out of
memory naming exactly what the estimator finds."""

from __future__ import annotations

import json

import pytest

from augreg_nb import memory
from augreg_nb.config import get_config
from augreg_nb.train import oom_advice, step_recipe


def _testing_model_params(classes: int) -> tuple[int, int]:
    """(all parameters, those of the head's kernel) of the "testing" ViT at 32 px, by hand:
    patch 8, width 32, 2 blocks of 2 heads (64 features in all) and MLP 48."""
    d, mlp, tokens, layers = 32, 48, (32 // 8) ** 2 + 1, 2
    embedding = 8 * 8 * 3 * d + d
    block = (2 * 2 * d  # two layer norms (scale, bias)
             + 3 * (d * d + d)  # query, key, value (kernel, bias)
             + d * d + d  # attention output
             + d * mlp + mlp + mlp * d + d)  # MLP
    head_kernel = d * classes
    total = embedding + d + tokens * d + layers * block + 2 * d + head_kernel + classes
    return total, head_kernel


def test_state_bytes_per_device_match_a_count_by_hand(python_runner):
    classes, batch, devices = 8192, 16, 8
    out = python_runner(f"""
        import json
        from augreg_nb.config import get_config
        from augreg_nb.memory import step_memory
        from augreg_nb.train import step_recipe
        config = get_config("cifar100-2500-0.01-384")
        recipe = step_recipe(config)
        res = {{}}
        for sharding in ("replicated", "sharded"):
            m = step_memory(config, model="testing", num_classes={classes}, recipe=recipe,
                            resolution=32,
                            global_batch={batch}, micro_batches=1, param_sharding=sharding)
            res[sharding] = {{**vars(m), "peak_bytes": m.peak_bytes,
                              "images_per_device": m.images_per_device}}
        print(json.dumps(res))
    """, devices=devices)
    res = json.loads(out.strip().splitlines()[-1])
    n_params, head = _testing_model_params(classes)
    n_leaves = 2 + 1 + 1 + 2 * 16 + 2 + 2  # embedding, cls, positions, blocks, norm, head
    # Only the head's kernel (32 x 8192 = 2**18 elements) is large enough to be sharded;
    # it is split 8 ways along its 8192 classes.
    params = {"replicated": 4 * n_params, "sharded": 4 * (n_params - head) + 4 * head // 8}
    # bfloat16, split like its parameter: only the head kernel's momentum is sharded too.
    momentum = {"replicated": 2 * n_params, "sharded": 2 * (n_params - head) + 2 * head // 8}
    scalars = 3 * 4  # step, first non-finite step, the schedule's update count (int32)
    batch_slice = batch // devices * (32 * 32 * 3 * 4 + 4)  # float32 images, int32 labels
    for sharding in ("replicated", "sharded"):
        r = res[sharding]
        state = params[sharding] + momentum[sharding] + scalars
        assert r["state_bytes"] == state, sharding
        assert r["argument_bytes"] == state + batch_slice, sharding
        assert r["alias_bytes"] == state, sharding  # the donated state is updated in place
        # Outputs: the new state, the loss, gradient norm and rate (float32), and the
        # output tuple's table of 8-byte buffer addresses (a leaf per parameter, per
        # momentum buffer, the 3 scalars, the 3 metrics).
        leaves = 2 * n_leaves + 3 + 3
        assert r["output_bytes"] == state + 3 * 4 + 8 * leaves, sharding
        assert r["peak_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                   + r["temp_bytes"])
        assert r["images_per_device"] == 2
    saved = (params["replicated"] - params["sharded"]
             + momentum["replicated"] - momentum["sharded"])
    assert res["replicated"]["state_bytes"] - res["sharded"]["state_bytes"] == saved
    assert res["sharded"]["peak_bytes"] < res["replicated"]["peak_bytes"]


def _smoke(**fields):
    config = get_config("smoke")  # fake:testing at 32 px on digits (10 classes), batch 64
    for key, value in fields.items():
        config[key] = value
    return config


def test_oom_advice_names_the_micro_batches_the_estimator_finds():
    config = _smoke(micro_batches=1)
    recipe = step_recipe(config)
    two, four = (memory.step_memory(config, model="testing", num_classes=10, recipe=recipe,
                                    micro_batches=m) for m in (2, 4))
    assert two.peak_bytes > four.peak_bytes  # 32 and 16 images per device at a time
    # A pretend device on which 4 micro-batches just fit with the headroom, 2 do not.
    size = four.peak_bytes / (1 - memory.HEADROOM)
    assert four.fits(size) and not two.fits(size)
    fit = memory.smallest_fit(config, size, model="testing", num_classes=10, recipe=recipe,
                              at_least=2)
    assert (fit.micro_batches, fit.param_sharding) == (4, "replicated")
    assert fit.step == four
    # Model and classes from the config (fake:testing, digits), the recipe from train.
    advice = memory.oom_advice(config, 1, recipe=recipe, memory_bytes=size)
    assert f"set micro_batches={fit.micro_batches} (--set micro_batches=4)" in advice
    assert "param_sharding" not in advice.split("(")[0]
    assert f"needs {memory.format_bytes(four.peak_bytes)} per device (16 image(s)" in advice
    # What fit is told: train.oom_advice with the memory the device reports.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "device_memory", lambda device=None: size)
        assert oom_advice(config, 1) == advice
    # Nothing fits a device smaller than even one image per device needs.
    tiny = memory.oom_advice(config, 1, recipe=recipe, memory_bytes=1000)
    assert tiny.startswith("even 1 image(s) per device (micro_batches=64")
    assert "over 900 B (90% of the device's 1000 B)" in tiny


def test_oom_advice_without_a_memory_figure_halves_the_images_per_device():
    config = get_config("cifar100-2500-0.01-384")  # 512 over 8 devices in 8 micro-batches
    assert memory.device_memory() is None  # the CPU reports none
    assert "set micro_batches=16 (4 per device" in oom_advice(config, 8)  # train's
    # A checkpoint whose model cannot be told from the config: the same rule.
    other = _smoke(checkpoint="/somewhere/own-weights.npz", model=None)
    assert memory.model_of(other) is None
    assert memory.oom_advice(other, 1, recipe=step_recipe(other), memory_bytes=2**30) == (
        memory.halving_advice(other, 1))


def test_device_memory_is_the_limit_the_device_reports():
    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert memory.device_memory(Device({"bytes_limit": 12 * memory.GiB,
                                        "bytes_in_use": 5})) == 12 * memory.GiB
    assert memory.device_memory(Device(None)) is None  # the CPU's answer
    assert memory.device_memory(Device({"bytes_in_use": 5})) is None


@pytest.mark.parametrize(("checkpoint", "model"), [
    ("L/16", "L/16"), ("fake:R50+L/32", "R50+L/32"),
    ("R50_L_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0", "R50+L/32"),
    ("gs://bucket/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--cifar100-steps_"
     "2k-lr_0.01-res_384.npz", "L/16")])
def test_model_of_a_config(checkpoint, model):
    assert memory.model_of(_smoke(checkpoint=checkpoint, model=None)) == model


def test_micro_batch_options_and_bytes_format():
    assert memory.micro_batch_options(512, 8) == [1, 2, 4, 8, 16, 32, 64]
    assert memory.micro_batch_options(48, 8) == [1, 2, 3, 6]
    assert memory.format_bytes(14.4 * memory.GiB) == "14.4 GiB"
    assert memory.format_bytes(3 * 2**20) == "3.0 MiB" and memory.format_bytes(12) == "12 B"
