"""Model forward (inference) and full train-step throughput, images per second.

Forward: ``jax.jit(model.apply)`` on a batch already in device memory, ``train=False``.
Train step: the fine-tuning code itself — ``train_step.make_train_step`` with the optimiser
and schedule of the CIFAR-100 2500-step preset (SGD momentum 0.9 kept in bfloat16, global
norm clip 1.0, warm-up + cosine), the state sharded and donated exactly as
``train.fit`` sets it up, one micro-batch.

For Ti/16 the same rounds also time peers, interleaved call by call:

- ``reference``: :mod:`bench.reference_vit`, the straightforward Flax style (strided
  ``nn.Conv`` patch embedding, ``nn.MultiHeadDotProductAttention``, plain jit, no
  donation), fed the same parameters; its logits are checked against ours first.
- ``timm``: timm's ``vit_tiny_patch16_224`` on PyTorch in a separate interpreter
  (:mod:`bench.torch_worker`), when that interpreter exists.
- ``gradient`` (train only): ``jax.value_and_grad`` of the same loss alone, which shows
  what the optimiser update, clipping and the non-finite guard of the step cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from bench.common import Row, median, time_interleaved

logger = logging.getLogger(__name__)

#: Models of the forward and train-step sections (B/16 forward only).
FORWARD_MODELS = ("Ti/16", "S/32", "B/32", "R+Ti/16", "B/16")
TRAIN_MODELS = ("Ti/16", "S/32", "B/32", "R+Ti/16")
#: The preset whose optimiser and schedule the train step uses.
RECIPE_PRESET = "cifar100-2500-0.01-224"
TRAIN_CLASSES = 100
#: Pause between interleaved calls of different runtimes (PyTorch's OpenMP threads and
#: XLA's thread pool spin briefly after a call and would slow down whoever runs next).
PEER_GAP_S = 0.2
FORWARD_CLASSES = 1000


#: Variants of our model's attention that ``run_models`` can time as peers: the other CPU
#: routing (all heads batched, or head by head) and ``jax.nn.dot_product_attention``'s XLA
#: implementation (the accelerator path, run on the CPU).
ATTENTION_VARIANTS = ("batched-attention", "head-by-head-attention", "xla-attention")
#: Peer: the whole batch at once instead of the package's chunks of
#: ``models.forward_chunk()`` images (``train.train_chunk`` for a step; the same on
#: accelerators, where both are 0).
WHOLE_BATCH = "whole-batch"


def variant_fn(variant: str, mode: str, name: str, batch: int, resolution: int
               ) -> Callable[[], None]:
    """Our forward or train callable with one attention variant, compiled here (the CPU
    routing is read while tracing, so the first call happens under the patched value)."""
    from unittest import mock

    from augreg_nb import models

    make = forward_fn if mode == "forward" else train_fn
    if variant == "xla-attention":
        fn = make(name, batch, resolution, attention_impl="xla")
        fn()
        return fn
    limit = {"batched-attention": 0, "head-by-head-attention": 10**6}[variant]
    with mock.patch.object(models, "PER_HEAD_MAX_HEADS", limit):
        fn = make(name, batch, resolution)
        fn()
    return fn


def _inputs(batch: int, resolution: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch, resolution, resolution, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    return images, labels


def _params(name: str, num_classes: int, resolution: int):
    """Seeded, well-scaled parameters (a fake checkpoint's values, head included)."""
    from augreg_nb.checkpoint import unflatten
    from augreg_nb.testing.checkpoints import fake_params

    return unflatten(fake_params(name, num_classes=num_classes, resolution=resolution))


def forward_fn(name: str, batch: int, resolution: int, dtype=None,
               attention_impl: str = "auto", matmul_dtype=None,
               chunk: int | None = None) -> Callable[[], None]:
    """A callable that runs one forward pass of ``name`` on a device-resident batch
    (``matmul_dtype``: see ``models.create_model``), in sequential chunks of ``chunk``
    images as the package's inference does (``models.in_chunks``; None: the package's
    choice for this backend, ``models.forward_chunk()``; 0: the whole batch at once)."""
    import jax
    import jax.numpy as jnp

    from augreg_nb.models import create_model, forward_chunk, in_chunks

    model = create_model(name, FORWARD_CLASSES, dtype=dtype, attention_impl=attention_impl,
                         matmul_dtype=matmul_dtype)
    params = jax.device_put(_params(name, FORWARD_CLASSES, resolution))
    images = jax.device_put(jnp.asarray(_inputs(batch, resolution, FORWARD_CLASSES)[0]))
    chunk = forward_chunk() if chunk is None else chunk
    apply = jax.jit(in_chunks(lambda p, x: model.apply({"params": p}, x, train=False), chunk))
    return lambda: apply(params, images).block_until_ready()


def train_fn(name: str, batch: int, resolution: int, dtype=None,
             attention_impl: str = "auto", chunk: int | None = None) -> Callable[[], None]:
    """A callable that runs one fine-tuning step of ``name`` through ``make_train_step``
    (``dtype``: the model's compute dtype, float32 by default), in sequential chunks of
    ``chunk`` images as ``train.fit`` runs it (None: ``train.train_chunk``'s choice for
    the recipe and this machine; 0: the whole batch at once)."""
    import jax

    from augreg_nb import input_pipeline as ip
    from augreg_nb import train_step as ts
    from augreg_nb.config import get_config
    from augreg_nb.models import create_model
    from augreg_nb.train import train_chunk
    from augreg_nb.train_state import TrainState

    config = get_config(RECIPE_PRESET)
    model = create_model(name, TRAIN_CLASSES, dtype=dtype, attention_impl=attention_impl)
    mesh = ip.data_mesh()
    tx = ts.optimizer_from_config(config)
    params = _params(name, TRAIN_CLASSES, resolution)
    p_shard = ts.param_shardings(params, mesh, "replicated")
    params = jax.device_put(params, p_shard)
    state = jax.jit(lambda p: TrainState.create(p, tx))(params)
    state_sharding = jax.tree.map(lambda x: x.sharding, state).replace(params=p_shard)
    step = ts.make_train_step(model.apply, tx, mesh=mesh, num_classes=TRAIN_CLASSES,
                              micro_batches=1, lr_schedule=ts.schedule_from_config(config),
                              state_sharding=state_sharding, seed=0,
                              chunk=train_chunk(config, mesh.devices.size) if chunk is None
                              else chunk)
    images, labels = _inputs(batch, resolution, TRAIN_CLASSES)
    device_batch = ip.put_batch({"image": images, "label": labels}, mesh)
    holder = {"state": jax.device_put(state, state_sharding)}

    def run():
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics)

    return run


def gradient_fn(name: str, batch: int, resolution: int) -> Callable[[], None]:
    """Only ``value_and_grad`` of the same loss: the train step minus optimiser and checks."""
    import jax
    import jax.numpy as jnp

    from augreg_nb.models import create_model
    from augreg_nb.train_step import softmax_cross_entropy

    model = create_model(name, TRAIN_CLASSES)
    params = jax.device_put(_params(name, TRAIN_CLASSES, resolution))
    images, labels = (jax.device_put(a) for a in _inputs(batch, resolution, TRAIN_CLASSES))

    def loss(p):
        logits = model.apply({"params": p}, images, train=True)
        return jnp.mean(softmax_cross_entropy(logits, jax.nn.one_hot(labels, TRAIN_CLASSES)))

    grad = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(grad(params))


def reference_fns(name: str, batch: int, resolution: int) -> tuple[Callable, Callable, float]:
    """Forward and train callables of the reference-style ViT ``name``, and the largest
    absolute difference between its logits and ours on the same parameters."""
    import jax
    import jax.numpy as jnp

    from augreg_nb.models import create_model, get_model_config
    from bench.reference_vit import reference_for, reference_train_step

    config = get_model_config(name)
    ref_fwd = reference_for(config, FORWARD_CLASSES)
    params = jax.device_put(_params(name, FORWARD_CLASSES, resolution))
    images = jax.device_put(jnp.asarray(_inputs(batch, resolution, FORWARD_CLASSES)[0]))
    apply_ref = jax.jit(lambda p, x: ref_fwd.apply({"params": p}, x))
    ours = create_model(name, FORWARD_CLASSES)
    check = images[:2]
    diff = float(jnp.max(jnp.abs(
        apply_ref(params, check) - jax.jit(ours.apply)({"params": params}, check))))

    ref_train = reference_for(config, TRAIN_CLASSES)
    init_state, step = reference_train_step(ref_train)
    images_np, labels_np = _inputs(batch, resolution, TRAIN_CLASSES)
    t_images, t_labels = jax.device_put(images_np), jax.device_put(labels_np)
    holder = {"state": init_state(jax.device_put(_params(name, TRAIN_CLASSES, resolution)))}

    def train():
        holder["state"], loss = step(holder["state"], t_images, t_labels)
        loss.block_until_ready()

    return (lambda: apply_ref(params, images).block_until_ready()), train, diff


def run_models(mode: str, models: Sequence[str], *, batch: int, resolution: int,
               repeats: int, peers: Sequence[str] = ("reference", "timm", "gradient"),
               torch_python: str | None = None, peer_model: str = "Ti/16",
               peak_flops: float | None = None) -> list[Row]:
    """Rows of images/s for ``mode`` "forward" or "train"; peers only next to
    ``peer_model`` (timm for the models of ``torch_worker.TIMM_ARCH``). With ``peak_flops``
    (the machine's measured matmul peak, FLOP/s) each row also gives its fraction of that
    roofline."""
    import jax

    from augreg_nb.config import get_config
    from augreg_nb.models import forward_chunk
    from augreg_nb.train import train_chunk
    from bench import torch_worker
    from bench.roofline import forward_flops, roofline_fraction, train_flops

    section = "model" if mode == "forward" else "train"
    rows: list[Row] = []
    for name in models:
        make = forward_fn if mode == "forward" else train_fn
        fns = {"ours": make(name, batch, resolution)}
        diff = None
        notes = []
        if name == peer_model and "reference" in peers:
            ref_forward, ref_train, diff = reference_fns(name, batch, resolution)
            fns["reference"] = ref_forward if mode == "forward" else ref_train
        if name == peer_model and mode == "train" and "gradient" in peers:
            fns["gradient only"] = gradient_fn(name, batch, resolution)
        for variant in ATTENTION_VARIANTS:
            if name == peer_model and variant in peers:
                fns[variant] = variant_fn(variant, mode, name, batch, resolution)
        if name == peer_model and WHOLE_BATCH in peers:
            fns[WHOLE_BATCH] = make(name, batch, resolution, chunk=0)
        worker = None
        if name == peer_model and name in torch_worker.TIMM_ARCH and "timm" in peers:
            worker, why = torch_worker.start(torch_python, batch=batch, resolution=resolution,
                                             arch=torch_worker.TIMM_ARCH[name])
            if worker is None:
                notes.append(why)
            else:
                fns["timm"] = (lambda w=worker: w.time(mode))
        try:
            times = time_interleaved(fns, repeats=repeats, warmup=1,
                                     gap_s=PEER_GAP_S if len(fns) > 1 else 0.0)
        finally:
            if worker is not None:
                worker.close()
        rate = {k: batch / median(v) for k, v in times.items()}
        best = {k: batch / min(v) for k, v in times.items()}
        label = f"{name} {mode}"
        used_chunk = forward_chunk() if mode == "forward" else train_chunk(
            get_config(RECIPE_PRESET), len(jax.devices()))
        if batch <= used_chunk or (mode == "train" and batch % used_chunk):
            used_chunk = 0  # the whole batch runs at once (as in_chunks / the step decide)
        flops = (forward_flops(name, resolution, FORWARD_CLASSES) if mode == "forward"
                 else train_flops(name, resolution, TRAIN_CLASSES))
        roof = ({k: roofline_fraction(r, flops, peak_flops) for k, r in rate.items()}
                if peak_flops else {})
        extra = {"batch": batch, "resolution": resolution, "dtype": "float32",
                 "chunk": used_chunk,
                 "seconds": times["ours"], "best_img_per_s": best["ours"],
                 "model_flops_per_image": flops}
        if roof:
            extra["roofline_fraction"] = roof["ours"]
            extra["matmul_peak_flops"] = peak_flops
            notes.append(f"{roof['ours']:.0%} of roofline")
        if extra["chunk"]:
            notes.append(f"in chunks of {extra['chunk']}")
        if diff is not None:
            extra["max_abs_logit_diff_vs_reference"] = diff
        if "gradient only" in rate:
            extra["gradient_only_img_per_s"] = rate["gradient only"]
            notes.append(f"step/gradient {rate['ours'] / rate['gradient only']:.2f}")
        for peer in ("reference", "timm", *ATTENTION_VARIANTS, WHOLE_BATCH):
            if peer in rate:
                extra[f"{peer}_img_per_s"] = rate[peer]
                extra[f"{peer}_best_img_per_s"] = best[peer]
                extra[f"ratio_vs_{peer}"] = rate["ours"] / rate[peer]
                extra[f"best_ratio_vs_{peer}"] = best["ours"] / best[peer]
                notes.append(f"{rate['ours'] / rate[peer]:.2f}x {peer} "
                             f"(best-of: {best['ours'] / best[peer]:.2f}x)")
        if worker is not None:
            extra["torch"] = worker.versions
        notes.append(f"best {best['ours']:.1f}")
        rows.append(Row(section, label, rate["ours"], "img/s", "; ".join(notes), extra))
        for peer in ("gradient only", "reference", "timm", *ATTENTION_VARIANTS, WHOLE_BATCH):
            if peer in rate:
                peer_extra = {"seconds": times[peer], "best_img_per_s": best[peer]}
                roof_note = ""
                if roof:
                    peer_extra["roofline_fraction"] = roof[peer]
                    roof_note = f"; {roof[peer]:.0%} of roofline"
                rows.append(Row(section, f"{name} {mode} [{peer}]", rate[peer], "img/s",
                                f"best {best[peer]:.1f}{roof_note}; same rounds as the row "
                                "above", peer_extra))
    return rows
