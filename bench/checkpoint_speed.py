"""Checkpoint: load a B/16-size file from the cache into device memory; peak host memory.

A fake upstream B/16 checkpoint (21,843 classes, 224 px, the published ``.npz`` layout,
about 400 MB) is written into a temporary cache as a downloaded file would be. A fresh
interpreter (so that its peak memory is the load's own) then runs
``checkpoint.load_pretrained(name)`` offline — resolve in the cache, read, check, adapt —
and ``jax.device_put`` of the tree, several times, and reports:

- the median seconds of load + device put, next to the seconds a raw read of the file's
  bytes takes (the disk-speed floor);
- the rise of the peak resident memory over the resident memory before loading: Linux's
  ``VmHWM`` high-water mark, reset first through ``/proc/self/clear_refs`` (the child's
  ``resource.getrusage`` peak would include its parent's, which Linux carries over
  ``exec``; it is used where ``/proc`` is missing), and ``tracemalloc``'s peak of one load
  (NumPy reports its buffers to it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, Row, median

NAME = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"


def run_checkpoint(*, repeats: int, model: str = "B/16", name: str = NAME,
                   num_classes: int = 21843, resolution: int = 224) -> list[Row]:
    from augreg_nb import resources
    from augreg_nb.testing.checkpoints import write_fake_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env[resources.ENV_CACHE] = tmp
        env[resources.ENV_OFFLINE] = "1"
        env.pop(resources.ENV_CHECKPOINT_DIR, None)
        old = os.environ.get(resources.ENV_CACHE)
        os.environ[resources.ENV_CACHE] = tmp
        try:
            from augreg_nb import sources

            path = sources.checkpoint_cache_path(name)
            write_fake_checkpoint(path, model, num_classes=num_classes, resolution=resolution)
        finally:
            if old is None:
                os.environ.pop(resources.ENV_CACHE, None)
            else:
                os.environ[resources.ENV_CACHE] = old
        args = json.dumps({"name": name, "repeats": repeats, "path": str(path)})
        out = subprocess.run([sys.executable, "-m", "bench.checkpoint_speed", args],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode:
            raise RuntimeError(f"checkpoint load child failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    mb = res["file_bytes"] / 1e6
    load_s, read_s = median(res["load_seconds"]), median(res["read_seconds"])
    return [
        Row("checkpoint", f"{model} load_pretrained + device_put ({mb:.0f} MB .npz)", load_s,
            "s", f"{mb / load_s:.0f} MB/s; raw read {read_s:.2f} s ({mb / read_s:.0f} MB/s)",
            res),
        Row("checkpoint", f"{model} peak host memory rise (VmHWM)",
            res["peak_rss_rise_bytes"] / 1e6, "MB",
            f"{res['peak_rss_rise_bytes'] / res['file_bytes']:.2f}x the file"),
        Row("checkpoint", f"{model} tracemalloc peak of one load",
            res["tracemalloc_peak_bytes"] / 1e6, "MB",
            f"{res['tracemalloc_peak_bytes'] / res['file_bytes']:.2f}x the file"),
    ]


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(options: dict) -> dict:
    import resource
    import time
    import tracemalloc

    import jax

    from augreg_nb.checkpoint import load_pretrained

    jax.devices()
    path = Path(options["path"])

    def read_raw():
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass

    def load():
        _, params = load_pretrained(options["name"], offline=True)
        jax.block_until_ready(jax.device_put(params))

    read_raw()  # the page cache holds the file, as it does after a download
    use_proc = _status_kb("VmRSS") is not None and _reset_peak()
    if use_proc:
        before = _status_kb("VmRSS") * 1024
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    read_s, load_s = [], []
    for _ in range(int(options["repeats"])):
        t0 = time.perf_counter()
        read_raw()
        read_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load()
        load_s.append(time.perf_counter() - t0)
    if use_proc:
        after = _status_kb("VmHWM") * 1024
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    load()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"file_bytes": path.stat().st_size, "load_seconds": load_s, "read_seconds": read_s,
            "rss_before_bytes": before, "peak_rss_rise_bytes": after - before,
            "peak_measured_by": "VmHWM" if use_proc else "getrusage",
            "tracemalloc_peak_bytes": peak}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
