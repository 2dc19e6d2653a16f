"""Per-device memory of the large models' fine-tuning step, and the settings that fit.

For L/16 and R50+L/32 at 384 px with the recipe's global batch of 512 over 8 devices, a
child interpreter per model (side by side) with 8 virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) compiles the step that
``augreg_nb.train.fit`` runs (:func:`augreg_nb.memory.step_memory`: the CIFAR-100 preset's
optimiser and schedule, 100 classes, float32 activations, bfloat16 momentum, the state
donated, attention as on an accelerator: ``attention_impl="xla"``) and reads XLA's compiled
memory analysis. For each parameter placement (replicated, sharded) and each memory size
(16 and 80 GiB) :func:`augreg_nb.memory.smallest_fit` finds the fewest micro-batches that
fit with 10 % of the memory left free; every step it compiled on the way is a row too.
Nothing is allocated, so the CPU host needs no such memory. ::

    .venv/bin/python -m bench --only memory
    .venv/bin/python -m bench.memory_table '{"models": ["L/16"]}'   # the child alone, JSON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import REPO, Row

MEMORY_MODELS = ("L/16", "R50+L/32")
MEMORY_RESOLUTION = 384
MEMORY_DEVICES = 8
#: Accelerator memory sizes (GiB) whose fewest fitting micro-batches the table gives.
MEMORY_SIZES_GIB = (16.0, 80.0)
#: The preset whose recipe is compiled (its task, CIFAR-100, gives the 100-class head).
PRESET = "cifar100-2500-0.01-384"
NUM_CLASSES = 100


def run_memory(models=MEMORY_MODELS, *, resolution: int = MEMORY_RESOLUTION,
               global_batch: int | None = None, devices: int = MEMORY_DEVICES,
               sizes_gib=MEMORY_SIZES_GIB, timeout: float = 3600) -> list[Row]:
    """The section's rows, measured in child interpreters with ``devices`` CPU devices, one
    per model, run side by side (compilation is mostly one thread)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    children = []
    for model in models:
        options = {"models": [model], "resolution": resolution, "global_batch": global_batch,
                   "devices": devices, "sizes_gib": [float(s) for s in sizes_gib]}
        children.append(subprocess.Popen(
            [sys.executable, "-m", "bench.memory_table", json.dumps(options)], cwd=REPO,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows = []
    for model, child in zip(models, children, strict=True):
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            stderr += f"\n(stopped after {timeout:.0f} s)"
        if child.returncode != 0:
            rows.append(Row("memory", f"{model}: compiled fine-tuning step memory", None,
                            "GiB/device", f"failed: {stderr.strip()[-300:]}"))
            continue
        rows += rows_of(json.loads(stdout.strip().splitlines()[-1]))
    return rows


def rows_of(doc: dict) -> list[Row]:
    """Table rows of the child's result: per model, the fits, then every compiled step."""
    from augreg_nb.memory import GiB

    rows = []
    head = f"{doc['resolution']}px batch {doc['global_batch']} on {doc['devices']} devices"
    for model, res in doc["models"].items():
        steps = {(s["param_sharding"], s["micro_batches"]): s for s in res["steps"]}
        for fit in res["fits"]:
            size, sharding, m = fit["memory_gib"], fit["param_sharding"], fit["micro_batches"]
            name = f"{model} {head}, {sharding}: fewest micro_batches for {size:g} GiB"
            if m is None:
                rows.append(Row("memory", name, None, "micro_batches",
                                "none fits (even 1 image per device)", fit))
                continue
            step = steps[sharding, m]
            below = [s for (sh, k), s in steps.items() if sh == sharding and k < m]
            note = (f"{step['peak_bytes'] / GiB:.1f} GiB per device, "
                    f"{step['images_per_device']} images at a time")
            if below:
                prev = max(below, key=lambda s: s["micro_batches"])
                note += (f"; micro_batches={prev['micro_batches']}: "
                         f"{prev['peak_bytes'] / GiB:.1f} GiB")
            rows.append(Row("memory", name, m, "micro_batches", note, fit))
        for (sharding, m), s in sorted(steps.items()):
            rows.append(Row(
                "memory", f"{model} {head}, {sharding}, micro_batches={m}",
                s["peak_bytes"] / GiB, "GiB/device",
                f"state {s['state_bytes'] / GiB:.2f}, arguments {s['argument_bytes'] / GiB:.2f}"
                f", temporaries {s['temp_bytes'] / GiB:.2f} GiB; {s['images_per_device']} "
                f"images per device; compiled in {s['compile_s']:.0f} s", s))
    return rows


def _child(options: dict) -> dict:
    import jax

    from augreg_nb import memory
    from augreg_nb.config import get_config
    from augreg_nb.train import step_recipe

    config = get_config(PRESET)
    config.resolution = int(options["resolution"])
    if options.get("global_batch"):
        config.global_batch = int(options["global_batch"])
    devices = int(options["devices"])
    recipe = step_recipe(config)
    doc = {"resolution": config.resolution, "global_batch": config.global_batch,
           "devices": devices, "headroom": memory.HEADROOM, "dtype": config.dtype,
           "momentum_dtype": config.momentum_dtype, "attention_impl": "xla",
           "platform": jax.devices()[0].platform, "models": {}}
    for model in options["models"]:
        measured, fits = {}, []
        for sharding in memory.PARAM_SHARDINGS:
            for size in options["sizes_gib"]:
                fit = memory.smallest_fit(
                    config, size * memory.GiB, model=model, num_classes=NUM_CLASSES,
                    recipe=recipe, num_devices=devices, attention_impl="xla",
                    param_shardings=(sharding,), measured=measured)
                fits.append({"memory_gib": size, "param_sharding": sharding,
                             "micro_batches": fit.micro_batches if fit else None})
        steps = [{**vars(s), "peak_bytes": s.peak_bytes,
                  "images_per_device": s.images_per_device} for s in measured.values()]
        doc["models"][model] = {"fits": fits, "steps": steps}
    return doc


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
