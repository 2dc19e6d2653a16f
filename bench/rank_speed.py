"""Ranking checkpoints: feature extraction against the forward bench, and a cached re-rank.

    .venv/bin/python -m bench --only rank                       # Ti/16, S/32, B/32, R+Ti/16
    .venv/bin/python -m bench --only rank --rank-models Ti/16 --rank-images 64 --repeats 1

Extraction: a prepared TFDS dataset of JPEG photo-sized images (375 x 500, like Oxford-IIIT
Pets) is read by ``augreg_nb.features.extract`` (decode, few-shot pre-processing, padded
batches, the pre-logits forward pass) with a fake checkpoint's weights of each model, after
one untimed pass (compilation, TensorFlow's start). Its images/s sit next to the ``model``
section's measurement (``bench.model_speed.forward_fn``, same batch and resolution, a
device-resident batch), timed in this section's own rounds so that both see the same load;
the goal is extraction within 1.2x of the forward pass, i.e. the input pipeline hidden
behind the model.

Cached re-rank: the features of the nine recommended checkpoints on a 37-class task with
2,944 train and 2,000 test images (the sizes of Pets) are written into a temporary cache
(random features of each model's width, 37 classes), then ``augreg_nb.rank.rank`` runs
over them as a second ranking would: candidates from the catalogue, the cost check, reading
18 cached files and fitting the probes (10 shots x 3 seeds, then all four shot counts). Goal:
under 5 s.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Row, median, time_interleaved

#: Models of the extraction rows (the forward section's small ones).
RANK_MODELS = ("Ti/16", "S/32", "B/32", "R+Ti/16")
#: Images of the extraction dataset.
RANK_IMAGES = 128
#: The re-rank task: Pets' class count and split sizes.
RERANK_CLASSES = 37
RERANK_SIZES = {"train": 2944, "test": 2000}


def extraction_rows(models, *, batch: int, resolution: int, repeats: int, images: int,
                    root: Path) -> list[Row]:
    from augreg_nb import features
    from augreg_nb.testing.datasets import write_tfds_dataset
    from bench.model_speed import _params, forward_fn

    task = write_tfds_dataset(root / "tfds", name="augreg_bench_rank",
                              sizes={"test": images}, image_shape=(375, 500),
                              encoding="jpeg")
    rows = []
    for model in models:
        params = features.without_head(_params(model, 1, resolution))

        def extract(params=params, model=model):
            features.extract(model, params, task, "test", resolution=resolution,
                             batch_size=batch)

        forward = forward_fn(model, batch, resolution)
        times = time_interleaved({"forward": forward, "extract": extract},
                                 repeats=repeats, warmup=1)
        fwd = batch / median(times["forward"])
        ext = images / median(times["extract"])
        rows.append(Row("rank", f"{model} feature extraction at {resolution} px, batch "
                        f"{batch} (JPEG decode, resize, crop, pre-logits)", ext, "img/s",
                        f"forward bench {fwd:.1f} img/s: forward / extraction = "
                        f"{fwd / ext:.2f}x (goal <= 1.2)",
                        {"forward_img_s": fwd, "ratio": fwd / ext, "images": images}))
    return rows


def rerank_rows(root: Path) -> list[Row]:
    from augreg_nb import features, rank
    from augreg_nb.index import load_index
    from augreg_nb.models import get_model_config
    from augreg_nb.testing.datasets import write_tfds_dataset

    names = [f"c{i:02d}" for i in range(RERANK_CLASSES)]
    task = write_tfds_dataset(root / "tfds37", name="augreg_bench_rerank",
                              class_names=tuple(names), sizes=RERANK_SIZES,
                              image_shape=(8, 8))
    index = load_index("catalogue")
    cache = root / "features"
    ckpts = rank.default_checkpoints(index)
    rng = np.random.default_rng(0)
    for cand in rank.make_candidates(ckpts, index=index):
        width = get_model_config(cand.model).hidden_size
        centres = rng.normal(size=(RERANK_CLASSES, width)).astype(np.float32)
        for split, n in RERANK_SIZES.items():
            y = np.arange(n) % RERANK_CLASSES
            x = centres[y] + rng.normal(size=(n, width)).astype(np.float32) * 2
            meta = features.describe(cand.checkpoint, task, split, cand.resolution)
            features.write(features.cache_path(cand.checkpoint, task, split,
                                               cand.resolution, cache),
                           x, y, {**meta, "model": cand.model, "seconds": 1.0})
    rows = []
    for shots in ((10,), (1, 5, 10, 25)):
        start = time.perf_counter()
        result = rank.rank(task, ckpts, index=index, shots=shots, cache_root=cache)
        seconds = time.perf_counter() - start
        if len(result.order) != len(ckpts) or not result.plan["cached"].all():
            raise RuntimeError("the re-rank did not read every candidate from the cache")
        rows.append(Row("rank", f"cached re-rank of {len(ckpts)} checkpoints, "
                        f"{RERANK_CLASSES} classes, {RERANK_SIZES['train']:,} train / "
                        f"{RERANK_SIZES['test']:,} test, shots {','.join(map(str, shots))} "
                        "x 3 seeds", seconds, "s", "goal < 5 s",
                        {"candidates": len(ckpts)}))
    return rows


def run_rank(models=RANK_MODELS, *, batch: int = 32, resolution: int = 224,
             repeats: int = 3, images: int = RANK_IMAGES) -> list[Row]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = extraction_rows(models, batch=batch, resolution=resolution,
                               repeats=repeats, images=images, root=root)
        rows += rerank_rows(root)
    return rows
