"""The benchmark suite: one command, a table on screen, the same numbers as JSON.

    .venv/bin/python -m bench                          # all but memory (about 6 min on 2 cores)
    .venv/bin/python -m bench --only model,train       # some sections
    .venv/bin/python -m bench --only torch             # Ti/16: ours vs reference vs timm
    .venv/bin/python -m bench --out bench/results-h100.json --repeats 10

Sections (``--only`` takes a comma-separated list):

- ``model``: forward images/s of Ti/16, S/32, B/32, R+Ti/16, B/16 (float32, batch 32,
  224 px, run as the package's inference runs it: in chunks of ``models.forward_chunk()``
  images on a CPU); Ti/16 side by side with a reference-style Flax ViT, timm (when
  available) and the same model on the whole batch at once (``whole-batch``).
- ``train``: full fine-tuning step images/s (the recipe's optimiser, clip and schedule,
  through ``augreg_nb.train_step``) of Ti/16, S/32, B/32, R+Ti/16, with the same peers.
- ``torch``: only the Ti/16 comparison of both (forward and train) with timm on PyTorch,
  and B/16's forward pass next to timm's (forward rows with ``whole-batch`` as well).
- ``bf16``: the opt-in bfloat16 forward pass (``matmul_dtype``) of Ti/16 and B/16 against
  float32 and timm (float32 and bfloat16 autocast), with its top-1 agreement and largest
  logit difference against float32 (:mod:`bench.bf16_speed`).
- ``latency``: first prediction of Ti/16 and B/16 from a fresh interpreter, with the
  persistent compilation cache off, cold (empty) and warm.
- ``device``: the B/16 and L/16 fine-tuning step at 384 px in float32 and bfloat16 on the
  accelerator JAX finds (img/s, model FLOPs utilisation, peak memory, timm alongside);
  without one it says so.
- ``input``: training input pipeline (decode, inception crop, flip) images/s.
- ``index``: load + validate the 51,509-row synthetic index from the cache; each query.
- ``checkpoint``: load a B/16-size file from the cache into device memory; peak memory.
- ``smoke``: time to first step (compilation) and the whole smoke fine-tune.
- ``notebooks``: each notebook run headless in smoke mode.
- ``rank``: feature extraction for the few-shot ranking (``augreg_nb.rank``) against the
  forward pass of the same models, and a ranking of nine checkpoints from cached features
  (:mod:`bench.rank_speed`).
- ``memory``: per-device memory of the L/16 and R50+L/32 fine-tuning step at 384 px,
  global batch 512 over 8 virtual CPU devices, from XLA's compiled memory analysis
  (parameters replicated and sharded), and the fewest micro-batches that fit a 16 GiB and
  an 80 GiB accelerator (:mod:`bench.memory_table`; only when named in ``--only``,
  about 7 min on 2 cores).

Every number is the median of ``--repeats`` timed runs after a warm-up; peers are timed in
interleaved rounds (see :mod:`bench.common`). Before the ``model``, ``train`` and ``torch``
sections the run measures the machine's float32 matmul peak, and each of their rows is also
given as a fraction of that roofline (:mod:`bench.roofline`). Results go to
``bench/results.json`` with a description of the machine (CPU, cores, load, library
versions, XLA flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

SECTIONS = ("model", "train", "torch", "bf16", "input", "index", "checkpoint", "smoke",
            "latency", "notebooks", "device", "memory", "rank")
#: Sections run only when named in ``--only``.
OPT_IN_SECTIONS = ("memory",)
#: Sections whose rows are related to the measured matmul peak.
ROOFLINE_SECTIONS = ("model", "train", "torch", "bf16")
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.bf16_speed import BF16_MODELS
    from bench.device_speed import DEVICE_BATCH, DEVICE_DTYPES, DEVICE_MODELS, DEVICE_RESOLUTION
    from bench.latency import LATENCY_MODELS
    from bench.memory_table import (
        MEMORY_DEVICES,
        MEMORY_MODELS,
        MEMORY_RESOLUTION,
        MEMORY_SIZES_GIB,
    )
    from bench.model_speed import FORWARD_MODELS, TRAIN_MODELS
    from bench.rank_speed import RANK_IMAGES, RANK_MODELS
    from bench.torch_worker import DEFAULT_TORCH_PYTHON

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", type=_csv,
                   default=[s for s in SECTIONS if s not in OPT_IN_SECTIONS],
                   help=f"comma-separated sections of {','.join(SECTIONS)} (default: all "
                        f"but {','.join(OPT_IN_SECTIONS)})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--forward-models", type=_csv, default=list(FORWARD_MODELS))
    p.add_argument("--train-models", type=_csv, default=list(TRAIN_MODELS))
    p.add_argument("--peers", type=_csv,
                   default=["reference", "timm", "gradient", "whole-batch"],
                   help="comparisons next to Ti/16: reference, timm, gradient, whole-batch "
                        "(or none); also our attention variants batched-attention, "
                        "head-by-head-attention, xla-attention")
    p.add_argument("--peer-model", default="Ti/16",
                   help="the model timed next to its peers (timm exists for Ti/16 only)")
    p.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON,
                   help="interpreter with torch and timm for the timm comparison")
    p.add_argument("--peak-kernels", choices=("all", "in-process"), default="all",
                   help="kernels of the matmul peak: XLA default, NumPy's BLAS, XLA's "
                        "dot options and PyTorch (all), or the first two only (in-process)")
    p.add_argument("--bf16-models", type=_csv, default=list(BF16_MODELS),
                   help="models of the bf16 section (bfloat16 matmuls vs float32 and timm)")
    p.add_argument("--input-images", type=int, default=64)
    p.add_argument("--input-batches", type=int, default=10)
    p.add_argument("--smoke-steps", type=int, default=None,
                   help="shorten the smoke fine-tune (default: the preset's length)")
    p.add_argument("--latency-models", type=_csv, default=list(LATENCY_MODELS))
    p.add_argument("--device-models", type=_csv, default=list(DEVICE_MODELS))
    p.add_argument("--device-dtypes", type=_csv, default=list(DEVICE_DTYPES))
    p.add_argument("--device-resolution", type=int, default=DEVICE_RESOLUTION)
    p.add_argument("--device-batch", type=int, default=DEVICE_BATCH,
                   help="batch of the device section (halved while it does not fit)")
    p.add_argument("--rank-models", type=_csv, default=list(RANK_MODELS))
    p.add_argument("--rank-images", type=int, default=RANK_IMAGES,
                   help="images of the rank section's extraction dataset")
    p.add_argument("--memory-models", type=_csv, default=list(MEMORY_MODELS))
    p.add_argument("--memory-resolution", type=int, default=MEMORY_RESOLUTION)
    p.add_argument("--memory-batch", type=int, default=None,
                   help="global batch of the memory section (default: the recipe's 512)")
    p.add_argument("--memory-devices", type=int, default=MEMORY_DEVICES)
    p.add_argument("--memory-sizes", type=lambda t: [float(v) for v in _csv(t)],
                   default=list(MEMORY_SIZES_GIB),
                   help="accelerator memory sizes in GiB whose fitting micro-batches to find")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Run the chosen sections; returns the JSON document (also written to ``args.out``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "device" in args.only:
        # The device section measures in child interpreters; this one must not reserve
        # most of a GPU's memory for itself when it starts JAX (machine_info below).
        from bench.device_speed import keep_parent_memory_small

        keep_parent_memory_small()
    from bench.common import format_table, machine_info

    doc = {"machine": machine_info(), "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": []}
    rows = []
    started = time.perf_counter()
    peak = None
    if set(args.only) & set(ROOFLINE_SECTIONS):
        rows.append(_peak_row(args))
        peak = rows[-1].extra["peak_flops"]
        args.bf16_peak = rows[-1].extra["bf16"]["peak_flops"]
    for section in SECTIONS:
        if section not in args.only:
            continue
        t0 = time.perf_counter()
        new = _run_section(section, args, peak)
        rows += new
        logging.getLogger("bench").info("%s: %.0f s", section, time.perf_counter() - t0)
        for row in new:
            print(f"  {row.section}: {row.name}: {row.value} {row.unit} {row.note}",
                  file=sys.stderr, flush=True)
    _relate(rows)
    doc["elapsed_s"] = time.perf_counter() - started
    doc["rows"] = [dict(vars(r)) for r in rows]
    doc["table"] = format_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, args.out)
    return doc


def _relate(rows) -> None:
    """Put the input pipeline's rate next to the Ti/16 train step's of the same run."""
    step = next((r for r in rows if r.name == "Ti/16 train" and r.value), None)
    for r in rows:
        if r.section == "input" and r.value and step is not None:
            r.note = (f"{r.value / step.value:.1f}x the Ti/16 train step "
                      f"({step.value:.1f} img/s)")


def _peak_row(args: argparse.Namespace):
    from bench.common import Row
    from bench.roofline import PEAK_MATMUL_SIZE, XLA_DOT_OPTIONS, hardware_peak

    everything = args.peak_kernels == "all"
    res = hardware_peak(options=XLA_DOT_OPTIONS if everything else {},
                        torch_python=args.torch_python if everything else None)
    each = "; ".join(
        f"{k} {v['peak_flops'] / 1e9:.0f}" if "error" not in v else f"{k}: {v['error']}"
        for k, v in res["kernels"].items())
    return Row("roofline", f"float32 matmul peak ({PEAK_MATMUL_SIZE}^2, best kernel: "
               f"{res['kernel']})", res["peak_flops"] / 1e9, "GFLOP/s",
               f"GFLOP/s per kernel: {each}; the model and train rows give their share of "
               f"the best; bfloat16 operands with float32 sums (XLA): "
               f"{res['bf16']['peak_flops'] / 1e9:.0f}", res)


def _run_section(section: str, args: argparse.Namespace, peak: float | None = None):
    peers = [p for p in args.peers if p != "none"]
    if section in ("model", "train"):
        from bench.model_speed import run_models

        models = args.forward_models if section == "model" else args.train_models
        return run_models("forward" if section == "model" else "train", models,
                          batch=args.batch, resolution=args.resolution,
                          repeats=args.repeats, peers=peers, torch_python=args.torch_python,
                          peer_model=args.peer_model, peak_flops=peak)
    if section == "torch":
        from bench.model_speed import WHOLE_BATCH, run_models
        from bench.torch_worker import start

        worker, why = start(args.torch_python, batch=args.batch, resolution=args.resolution)
        if worker is None:
            from bench.common import Row

            return [Row("torch", "timm ViT-Ti/16 comparison", None, "img/s", why)]
        worker.close()
        rows = []
        variants = [p for p in peers if p.endswith("-attention")]
        for mode in ("forward", "train"):
            rows += run_models(mode, ["Ti/16"], batch=args.batch, resolution=args.resolution,
                               repeats=args.repeats,
                               peers=["reference", "timm", WHOLE_BATCH, *variants],
                               torch_python=args.torch_python, peak_flops=peak)
        # Ranking checkpoints on a CPU is forward-bound: B/16 next to timm's as well.
        rows += run_models("forward", ["B/16"], batch=args.batch, resolution=args.resolution,
                           repeats=min(args.repeats, 3), peers=["timm", WHOLE_BATCH],
                           torch_python=args.torch_python, peer_model="B/16",
                           peak_flops=peak)
        for row in rows:
            row.section = "torch"
        return rows
    if section == "bf16":
        from bench.bf16_speed import run_bf16

        return run_bf16(args.bf16_models, batch=args.batch, resolution=args.resolution,
                        repeats=min(args.repeats, 5), torch_python=args.torch_python,
                        peak_flops=peak, bf16_peak_flops=getattr(args, "bf16_peak", None))
    if section == "input":
        from bench.bench_input import measure
        from bench.common import Row, median

        rates = measure(images=args.input_images, batches=args.input_batches,
                        batch=args.batch, resolution=args.resolution, windows=args.repeats)
        return [Row("input", f"train pre-processing at {args.resolution} px, batch "
                    f"{args.batch} (decode, inception crop, flip)", median(rates), "img/s",
                    "", {"rates": rates})]
    if section == "index":
        from bench.index_speed import run_index

        return run_index(repeats=args.repeats)
    if section == "checkpoint":
        from bench.checkpoint_speed import run_checkpoint

        return run_checkpoint(repeats=min(args.repeats, 3))
    if section == "smoke":
        from bench.startup import run_smoke

        return run_smoke(total_steps=args.smoke_steps)
    if section == "latency":
        from bench.latency import run_latency

        return run_latency(args.latency_models)
    if section == "device":
        from bench.device_speed import run_device

        return run_device(args.device_models, args.device_dtypes,
                          resolution=args.device_resolution, batch=args.device_batch,
                          repeats=args.repeats, torch_python=args.torch_python)
    if section == "memory":
        from bench.memory_table import run_memory

        return run_memory(args.memory_models, resolution=args.memory_resolution,
                          global_batch=args.memory_batch, devices=args.memory_devices,
                          sizes_gib=args.memory_sizes)
    if section == "rank":
        from bench.rank_speed import run_rank

        return run_rank(args.rank_models, batch=args.batch, resolution=args.resolution,
                        repeats=min(args.repeats, 3), images=args.rank_images)
    if section == "notebooks":
        from bench.startup import run_notebooks

        return run_notebooks()
    raise ValueError(section)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    args = parse_args(argv)
    doc = run(args)
    m = doc["machine"]
    print(f"{m['cpu']} ({m['usable_cores']} cores usable, load {m['load_average_at_start']}), "
          f"jax {m['jax']}, flax {m['flax']}, XLA_FLAGS={m['xla_flags'] or '(none)'}")
    print(doc["table"])
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
