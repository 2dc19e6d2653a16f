"""The opt-in bfloat16 forward pass (``matmul_dtype="bfloat16"``) against float32 and timm.

For each model (default Ti/16 and B/16, 224 px, batch 32) the same interleaved rounds time

- ``ours float32``: the default forward pass;
- ``ours bfloat16 matmuls``: operands of every matrix multiply rounded to bfloat16, sums
  and everything else in float32 (``models.create_model(..., matmul_dtype=...)``);
- ``timm float32`` and ``timm bfloat16 autocast``: timm's model on PyTorch, each in its own
  worker interpreter (:mod:`bench.torch_worker`), when that interpreter exists.

Beside the speed it reports what the bfloat16 pass changes: top-1 agreement and the
largest absolute logit difference against float32 on the bench batch and the three shipped
sample photos (``data/samples``), with the fake checkpoint's seeded weights. The float32
rows are related to the float32 roofline, the bfloat16 row to XLA's bfloat16 matmul peak
(both measured by :mod:`bench.roofline` in the same run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import Row, median, time_interleaved

BF16_MODELS = ("Ti/16", "B/16")
SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def agreement_images(batch: int, resolution: int) -> np.ndarray:
    """The bench batch (uniform noise in [-1, 1]) and the shipped photos, pre-processed."""
    from augreg_nb.preprocess import prepare_images
    from bench.model_speed import FORWARD_CLASSES, _inputs

    noise = _inputs(batch, resolution, FORWARD_CLASSES)[0]
    photos = sorted(SAMPLES.glob("*.jpg"))
    if not photos:
        return noise
    return np.concatenate([noise, prepare_images([str(p) for p in photos], resolution)])


def measure_agreement(name: str, batch: int, resolution: int) -> dict:
    """Top-1 agreement and largest logit difference of the bfloat16 pass against float32."""
    from augreg_nb.inference import agreement
    from bench.model_speed import FORWARD_CLASSES, _params

    images = agreement_images(batch, resolution)
    got = agreement(name, _params(name, FORWARD_CLASSES, resolution), images,
                    batch_size=batch)
    return got._asdict()


def run_bf16(models: Sequence[str] = BF16_MODELS, *, batch: int = 32, resolution: int = 224,
             repeats: int = 5, torch_python: str | None = None,
             peak_flops: float | None = None, bf16_peak_flops: float | None = None
             ) -> list[Row]:
    import jax.numpy as jnp

    from bench import torch_worker
    from bench.model_speed import PEER_GAP_S, forward_fn
    from bench.roofline import forward_flops

    rows: list[Row] = []
    for name in models:
        fns = {"float32": forward_fn(name, batch, resolution),
               "bfloat16 matmuls": forward_fn(name, batch, resolution,
                                              matmul_dtype=jnp.bfloat16)}
        workers, notes = [], []
        arch = torch_worker.TIMM_ARCH.get(name)
        for dtype in ("float32", "bfloat16"):
            if arch is None:
                break
            worker, why = torch_worker.start(torch_python, batch=batch,
                                             resolution=resolution, arch=arch, dtype=dtype)
            if worker is None:
                notes.append(why)
                break
            workers.append(worker)
            label = "timm float32" if dtype == "float32" else "timm bfloat16 autocast"
            fns[label] = (lambda w=worker: w.time("forward"))
        try:
            times = time_interleaved(fns, repeats=repeats, warmup=1, gap_s=PEER_GAP_S)
        finally:
            for worker in workers:
                worker.close()
        agree = measure_agreement(name, batch, resolution)
        rate = {k: batch / median(v) for k, v in times.items()}
        best = {k: batch / min(v) for k, v in times.items()}
        flops = forward_flops(name, resolution)
        ours = rate["bfloat16 matmuls"]
        notes.insert(0, f"{ours / rate['float32']:.2f}x float32 (best-of "
                        f"{best['bfloat16 matmuls'] / best['float32']:.2f}x)")
        for peer in ("timm float32", "timm bfloat16 autocast"):
            if peer in rate:
                notes.append(f"{ours / rate[peer]:.2f}x {peer}")
        notes.append(f"top-1 agreement {agree['top1_agreement']:.1%} on {agree['images']} "
                     f"images, largest logit difference {agree['max_abs_logit_diff']:.3g} "
                     f"(largest logit {agree['max_abs_logit']:.3g})")
        extra = {"batch": batch, "resolution": resolution, "model_flops_per_image": flops,
                 "seconds": times["bfloat16 matmuls"], "best_img_per_s": best["bfloat16 matmuls"],
                 "each_img_per_s": rate, "each_best_img_per_s": best, "agreement": agree}
        if bf16_peak_flops:
            extra["bf16_roofline_fraction"] = ours * flops / bf16_peak_flops
            notes.append(f"{extra['bf16_roofline_fraction']:.0%} of the bfloat16 roofline")
        if workers:
            extra["torch"] = workers[0].versions
        rows.append(Row("bf16", f"{name} forward, bfloat16 matmuls", ours, "img/s",
                        "; ".join(notes), extra))
        for peer in fns:
            if peer == "bfloat16 matmuls":
                continue
            note = f"best {best[peer]:.1f}; same rounds as the row above"
            if peak_flops and "bfloat16" not in peer:
                note += f"; {rate[peer] * flops / peak_flops:.0%} of the float32 roofline"
            rows.append(Row("bf16", f"{name} forward [{peer}]", rate[peer], "img/s", note,
                            {"seconds": times[peer], "best_img_per_s": best[peer]}))
    return rows
