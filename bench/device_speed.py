"""The fine-tuning step on an accelerator: B/16 and L/16 at 384 px, float32 and bfloat16.

For each model and dtype a fresh interpreter (so that each one's peak device memory is its
own) builds the train step of the fine-tuning code (:func:`bench.model_speed.train_fn`: the
recipe's optimiser, clip and schedule, the state donated, attention through
``jax.nn.dot_product_attention`` as ``attention_impl="auto"`` picks on the device), runs it
once to compile, then times ``repeats`` steps. Reported per step:

- images per second;
- **model FLOPs utilisation** (MFU): images/s x the model FLOPs of one training image
  (:func:`bench.roofline.train_flops`, 3x the forward pass) / the device's peak from
  :data:`PEAK_TFLOPS` for that dtype ("unknown" for devices not in the table);
- peak device memory (``device.memory_stats()["peak_bytes_in_use"]`` of the first device);
- with several devices, the step shards ``batch`` images per device over all of them and
  the MFU is against all their peaks together;
- the same for timm's ViT (``vit_base_patch16_384``, ``vit_large_patch16_384``) on PyTorch,
  when ``--torch-python`` has a CUDA build (autocast for bfloat16; TF32 allowed for float32,
  as JAX's default precision uses it), timed after the JAX run in its own interpreter.

A batch that does not fit is halved until it does (down to 8), and the row says so. The
bench process itself starts JAX without reserving GPU memory (the children need it). On a
TPU host, whose chips one process at a time can open, the measurements run in the bench
process instead, so peak memory there is cumulative over the run.
Without an accelerator (JAX's backend is the CPU) the section reports that and returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import REPO, Row, median

#: JAX reserves 75 % of a GPU's memory when it starts unless this is "false".
PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"
PREALLOCATE_SET_BY_BENCH = "AUGREG_NB_BENCH_SET_PREALLOCATE"
DEVICE_MODELS = ("B/16", "L/16")
DEVICE_RESOLUTION = 384
DEVICE_DTYPES = ("float32", "bfloat16")
#: Images per device (the step's batch is this times the number of devices).
DEVICE_BATCH = 64
MIN_BATCH = 8
TIMM_ARCH = {"Ti/16": "vit_tiny_patch16_{res}", "S/16": "vit_small_patch16_{res}",
             "B/16": "vit_base_patch16_{res}", "L/16": "vit_large_patch16_{res}",
             "B/32": "vit_base_patch32_{res}", "S/32": "vit_small_patch32_{res}"}

#: Dense peak TFLOP/s by ``device_kind`` substring (first match wins, so the more specific
#: names come first): (bfloat16/float16 tensor cores, float32 as JAX runs it by default).
#: NVIDIA Ampere and later: float32 matrix multiplies run on TF32 tensor cores under JAX's
#: default precision, so the TF32 peak is the float32 roofline; V100 and T4 have no TF32
#: (plain FP32 units) and no bfloat16 tensor cores (their half-precision peak is float16's).
#: TPUs: JAX's default precision multiplies float32 in one bfloat16 pass on the MXU, so
#: both entries are the bfloat16 peak. Sources: the vendors' data sheets (SXM parts).
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.0, 495.0),
    ("H200", 989.0, 495.0),
    ("H800", 989.0, 495.0),
    ("A100", 312.0, 156.0),
    ("A800", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
    ("A10G", 70.0, 35.0),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
    ("TPU v6 lite", 918.0, 918.0),
    ("TPU v6e", 918.0, 918.0),
    ("TPU v5 lite", 197.0, 197.0),
    ("TPU v5e", 197.0, 197.0),
    ("TPU v5p", 459.0, 459.0),
    ("TPU v5", 459.0, 459.0),
    ("TPU v4", 275.0, 275.0),
    ("TPU v3", 123.0, 123.0),
    ("TPU v2", 45.0, 45.0),
)


def device_peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of ``device_kind`` for ``dtype`` ("float32", "bfloat16",
    "float16"); None when the device is not in :data:`PEAK_TFLOPS`."""
    kind = device_kind.lower()
    for pattern, half, single in PEAK_TFLOPS:
        if pattern.lower() in kind:
            return (single if dtype == "float32" else half) * 1e12
    return None


def accelerator() -> tuple[object | None, str]:
    """JAX's first device when it is a GPU or TPU, else (None, why)."""
    import jax

    backend = jax.default_backend()
    if backend == "cpu":
        return None, ("no accelerator: JAX's backend is the CPU (install jax[cuda12] on an "
                      "NVIDIA GPU or jax[tpu] on a TPU VM, then run "
                      "`python -m bench --only device`)")
    return jax.devices()[0], ""


def run_device(models=DEVICE_MODELS, dtypes=DEVICE_DTYPES, *, resolution=DEVICE_RESOLUTION,
               batch: int = DEVICE_BATCH, repeats: int = 5, torch_python: str | None = None,
               allow_cpu: bool = False) -> list[Row]:
    """Rows per model and dtype (ours, then timm); one note row without an accelerator.

    ``allow_cpu`` runs the same machinery on the CPU (for tests, with tiny settings).
    """
    device, why = accelerator()
    if device is None and not allow_cpu:
        return [Row("device", "fine-tuning step on an accelerator", None, "img/s", why)]
    # A TPU host opens its chips in one process only, and this one holds them already:
    # measure in this interpreter (peak memory is then the process's, cumulative).
    in_process = device is not None and device.platform == "tpu"
    rows = []
    for name in models:
        for dtype in dtypes:
            res = _run_ours(name, dtype, resolution, batch, repeats, in_process)
            rows.append(_row(f"{name} {resolution}px {dtype} train step", res))
            if device is not None and device.platform == "gpu" and name in TIMM_ARCH:
                timm = _run_timm(name, dtype, resolution, res.get("batch", batch), repeats,
                                 torch_python, res.get("device_kind", ""))
                rows.append(_row(f"{name} {resolution}px {dtype} train step [timm]", timm))
    return rows


def _row(label: str, res: dict) -> Row:
    if res.get("error"):
        return Row("device", label, None, "img/s", res["error"], res)
    mfu = res.get("mfu")
    peak = res.get("peak_memory_bytes")
    devices = res.get("devices", 1)
    note = [f"batch {res['batch']}" + (f" per device x {devices}" if devices > 1 else ""),
            f"MFU {mfu:.1%}" if mfu is not None else "MFU unknown (device not in the table)",
            f"peak memory {peak / 2**30:.2f} GiB" if peak else "peak memory unknown",
            f"{res.get('device_kind', '')}"]
    if res.get("halved_from"):
        note.append(f"batch {res['halved_from']} did not fit")
    return Row("device", label, res["img_per_s"], "img/s", "; ".join(note), res)


def _oom(text: str) -> bool:
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                   "OutOfMemory"))


def _run_ours(name: str, dtype: str, resolution: int, batch: int, repeats: int,
              in_process: bool = False) -> dict:
    first = batch
    while True:
        options = {"model": name, "dtype": dtype, "resolution": resolution,
                   "batch": batch, "repeats": repeats}
        if in_process:
            try:
                res = _child(options)
                res["peak_memory_note"] = "cumulative over the bench process"
            except Exception as err:  # noqa: BLE001 - reported in the table
                if _oom(str(err)) and batch // 2 >= MIN_BATCH:
                    batch //= 2
                    continue
                return {"batch": batch, "error": f"failed: {str(err)[-300:]}"}
        else:
            res = _run_child(options)
            if res.get("oom") and batch // 2 >= MIN_BATCH:
                batch //= 2
                continue
        if batch != first and not res.get("error"):
            res["halved_from"] = first
        return res


def _run_child(options: dict) -> dict:
    """One measurement in a fresh interpreter (its own device memory and peak)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if env.pop(PREALLOCATE_SET_BY_BENCH, None):
        env.pop(PREALLOCATE_ENV, None)  # the child allocates as a user's run would
    out = subprocess.run([sys.executable, "-m", "bench.device_speed", json.dumps(options)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode == 0:
        return json.loads(out.stdout.strip().splitlines()[-1])
    return {"batch": options["batch"], "oom": _oom(out.stderr),
            "error": f"failed: {out.stderr.strip()[-300:]}"}


def keep_parent_memory_small() -> None:
    """Before this interpreter starts JAX: do not reserve most of a GPU's memory, which the
    child interpreters measure with (only when the user has not chosen otherwise)."""
    if PREALLOCATE_ENV not in os.environ:
        os.environ[PREALLOCATE_ENV] = "false"
        os.environ[PREALLOCATE_SET_BY_BENCH] = "1"


def _run_timm(name, dtype, resolution, batch, repeats, torch_python, device_kind) -> dict:
    from bench import torch_worker
    from bench.roofline import train_flops

    arch = TIMM_ARCH[name].format(res=resolution)
    worker, why = torch_worker.start(torch_python, batch=batch, resolution=resolution,
                                     arch=arch, device="cuda", dtype=dtype)
    if worker is None:
        return {"batch": batch, "error": why}
    try:
        worker.time("train")  # warm-up (cuDNN/cuBLAS choose their kernels)
        seconds = [worker.time("train") for _ in range(repeats)]
        peak = worker.peak_memory()
    except RuntimeError as err:
        return {"batch": batch, "error": f"timm failed: {str(err)[-300:]}"}
    finally:
        worker.close()
    rate = batch / median(seconds)
    peak_flops = device_peak_flops(device_kind, dtype)
    flops = train_flops(name, resolution, 100)
    return {"batch": batch, "img_per_s": rate, "seconds": seconds, "arch": arch,
            "peak_memory_bytes": peak, "device_kind": device_kind,
            "mfu": rate * flops / peak_flops if peak_flops else None,
            "torch": worker.versions}


def _child(options: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from bench.model_speed import train_fn
    from bench.roofline import train_flops

    name, dtype = options["model"], options["dtype"]
    per_device, resolution = int(options["batch"]), int(options["resolution"])
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    # The train step shards the batch over every device (as fine-tuning does): ``batch``
    # images per device, and the peak of all of them.
    devices = jax.device_count()
    batch = per_device * devices
    step = train_fn(name, batch, resolution, dtype=jnp.dtype(dtype))
    t0 = time.perf_counter()
    step()  # compile + first step
    compile_s = time.perf_counter() - t0
    seconds = []
    for _ in range(int(options["repeats"])):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    rate = batch / median(seconds)
    stats = device.memory_stats() or {}
    peak_flops = device_peak_flops(kind, dtype)
    peak_flops = peak_flops * devices if peak_flops else None
    flops = train_flops(name, resolution, 100)
    from augreg_nb.models import resolve_attention_impl

    return {"model": name, "dtype": dtype, "batch": per_device, "global_batch": batch,
            "devices": devices, "resolution": resolution,
            "img_per_s": rate, "seconds": seconds, "compile_and_first_step_s": compile_s,
            "device_kind": kind, "platform": device.platform,
            "attention": resolve_attention_impl("auto", jnp.dtype(dtype)),
            "train_flops_per_image": flops, "peak_flops": peak_flops,
            "mfu": rate * flops / peak_flops if peak_flops else None,
            "peak_memory_bytes": stats.get("peak_bytes_in_use")}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
