"""Training input throughput at 224 px: decode + inception crop + flip + batch, images/s.

    .venv/bin/python -m bench.bench_input [--images 64] [--batches 20] [--batch 32]
    .venv/bin/python -m bench --only input        # the same, inside the full suite

Writes a prepared TFDS dataset of JPEG photos-sized images (375 x 500, like Oxford-IIIT
Pets) to a temporary folder and times ``input_pipeline.make_train_iterator`` (global
jax.Arrays on the default mesh) after a warm-up. For comparison, protocol.md measures a
ViT-Ti/16 train step on the 2-core CI machine at 6.0 images/s (vit_jax) and 15.7 (timm),
so the pipeline must deliver more than that to never be the bottleneck of CPU runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

VIT_TI16_TRAIN_STEP_IMAGES_PER_S = 15.7  # fastest train step in protocol.md (timm, 2 cores)


def measure(*, images: int = 64, batches: int = 20, batch: int = 32,
            resolution: int = 224, windows: int = 1) -> list[float]:
    """Images/s of the training iterator (decode, inception crop, flip, batch, device put),
    one rate per window of ``batches`` batches."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from augreg_nb import input_pipeline as ip
    from augreg_nb.testing.datasets import write_tfds_dataset

    with tempfile.TemporaryDirectory() as tmp:
        task = write_tfds_dataset(
            tmp,
            name="augreg_bench",
            sizes={"train": images},
            image_shape=(375, 500),
            encoding="jpeg",
        )
        it = ip.make_train_iterator(task, resolution=resolution, global_batch=batch, seed=0)
        for _ in range(3):  # warm-up: fills the shuffle buffer and tf.data's autotuner
            next(it)["image"].block_until_ready()
        rates = []
        for _ in range(windows):
            start = time.perf_counter()
            for _ in range(batches):
                next(it)["image"].block_until_ready()
            rates.append(batches * batch / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="examples in the dataset")
    parser.add_argument("--batches", type=int, default=20, help="batches to time")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    (rate,) = measure(images=args.images, batches=args.batches, batch=args.batch,
                      resolution=args.resolution)
    print(
        f"train pre-processing at {args.resolution} px ({os.cpu_count()} CPU cores, "
        f"inception crop + flip, batch {args.batch}): {rate:.1f} images/s"
    )
    print(
        f"ViT-Ti/16 train step on the 2-core reference machine: "
        f"{VIT_TI16_TRAIN_STEP_IMAGES_PER_S} images/s -> input pipeline is "
        f"{rate / VIT_TI16_TRAIN_STEP_IMAGES_PER_S:.1f}x faster"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
