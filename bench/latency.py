"""First prediction from a fresh interpreter (a cold notebook kernel), with and without the
persistent compilation cache.

For each model a new interpreter imports ``augreg_nb.inference`` (and JAX), builds the
parameters (a fake checkpoint's values, 1000 classes, not timed: the ``checkpoint`` section
times loading), and predicts one 224 px image the way ``inference.predict`` does, in its two
steps: pre-processing (whose first call imports TensorFlow) and the forward pass (whose
first call compiles it, or loads it from the cache). The row's value is imports +
pre-processing + first forward; a second ``predict`` call is reported as well. Three
interpreters run one after the other on the same temporary cache folder:

- ``off``: ``AUGREG_NB_NO_COMPILE_CACHE=1``, what every kernel start cost before the cache;
- ``cold``: the cache on but empty (the first kernel ever: compiles and writes the cache);
- ``warm``: the cache filled by the cold run (every later kernel start, e.g. after a
  restart): the forward pass is loaded from disk instead of compiled;
- ``panel``: as ``warm``, with ``preprocess.warm_up()`` called once JAX is imported, as
  the inference panel does when it is shown: TensorFlow is imported in the background
  while the parameters are built (in the notebook: while Load fetches and reads the
  checkpoint and the user chooses images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import REPO, Row

LATENCY_MODELS = ("Ti/16", "B/16")
RUNS = ("off", "cold", "warm", "panel")


def run_latency(models=LATENCY_MODELS, *, resolution: int = 224) -> list[Row]:
    from augreg_nb import compile_cache, resources

    rows = []
    for name in models:
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for run in RUNS:
                env = dict(os.environ)
                env[resources.ENV_CACHE] = tmp
                env[resources.ENV_OFFLINE] = "1"
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                env.pop("JAX_COMPILATION_CACHE_DIR", None)
                env.pop(compile_cache.ENV_NO_COMPILE_CACHE, None)
                if run == "off":
                    env[compile_cache.ENV_NO_COMPILE_CACHE] = "1"
                args = json.dumps({"model": name, "resolution": resolution,
                                   "warm_up": run == "panel"})
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "bench.latency", args], cwd=REPO,
                                     env=env, capture_output=True, text=True, timeout=900)
                wall = time.perf_counter() - t0
                if out.returncode:
                    raise RuntimeError(f"first prediction ({name}, {run}) failed:\n"
                                       f"{out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                res["process_wall_s"] = wall
                results[run] = res
        for run in RUNS:
            res = results[run]
            note = (f"imports {res['import_s']:.1f} s + pre-processing (TensorFlow's "
                    f"first use) {res['preprocess_s']:.1f} s + first forward "
                    f"{res['forward_s']:.1f} s; second predict "
                    f"{res['second_predict_s']:.2f} s; cache files {res['cache_files']}")
            if run == "warm":
                saved = results["cold"]["forward_s"] - res["forward_s"]
                note += f"; first forward {saved:.1f} s shorter than cold"
            if run == "panel":
                note += (f"; TensorFlow warmed up in the background while the parameters "
                         f"were built ({res['build_s']:.1f} s)")
            rows.append(Row("latency", f"{name} first prediction, fresh interpreter, "
                            f"compile cache {run}", res["import_s"] + res["first_predict_s"],
                            "s", note, res))
    return rows


def _child(options: dict) -> dict:
    t0 = time.perf_counter()
    import numpy as np

    from augreg_nb import compile_cache, inference, preprocess
    from augreg_nb.preprocess import prepare_images

    t1 = time.perf_counter()
    import flax.linen  # noqa: F401
    import jax

    jax.devices()
    t2 = time.perf_counter()
    if options.get("warm_up"):  # the notebook has imported JAX when the panel is built
        preprocess.warm_up()
    from augreg_nb.checkpoint import unflatten
    from augreg_nb.testing.checkpoints import fake_params

    name, resolution = options["model"], int(options["resolution"])
    params = unflatten(fake_params(name, num_classes=1000, resolution=resolution))
    image = np.random.default_rng(0).integers(0, 256, (resolution, resolution, 3), np.uint8)
    labels = [str(i) for i in range(1000)]
    # What inference.predict does, in its two steps: pre-processing, then the forward pass.
    t3 = time.perf_counter()
    arrays = prepare_images([image], resolution)
    t4 = time.perf_counter()
    first = inference.predict_arrays(name, params, arrays, top_k=1, label_names=labels)
    t5 = time.perf_counter()
    inference.predict(name, params, [image], resolution=resolution, top_k=1,
                      label_names=labels)
    t6 = time.perf_counter()
    folder = compile_cache.default_dir()
    files = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    return {"model": name, "import_s": (t1 - t0) + (t2 - t1), "jax_import_s": t2 - t1,
            "preprocess_s": t4 - t3, "forward_s": t5 - t4,
            "first_predict_s": (t4 - t3) + (t5 - t4), "second_predict_s": t6 - t5,
            "cache_files": files, "top1": int(first[0][0].index), "build_s": t3 - t2}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
