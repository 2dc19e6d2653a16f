"""timm's ViT-Ti/16 on PyTorch, timed in a separate interpreter that the bench drives.

PyTorch lives in its own virtual environment (it is no dependency of augreg_nb)::

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 timm

The bench starts ``/tmp/torchvenv/bin/python bench/torch_worker.py '{"batch": 32, ...}'``
(another interpreter with ``--torch-python``) and sends it one command per line:
``forward`` or ``train``; the worker answers each with the seconds that one call took,
as a JSON line. This lets the bench interleave timm's calls with the JAX ones, so both see
the same machine load. The worker's train step is the fine-tuning recipe in PyTorch: SGD
with momentum 0.9, gradients clipped at global norm 1.0, warm-up + cosine learning rate,
softmax cross-entropy. Only the standard library is imported at module level, so the bench
side (:func:`start`) runs without torch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time

DEFAULT_TORCH_PYTHON = "/tmp/torchvenv/bin/python"
ARCH = "vit_tiny_patch16_224"
#: timm's architecture of each model the bench compares (224 px, ImageNet-style head).
TIMM_ARCH = {"Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224",
             "S/32": "vit_small_patch32_224", "B/16": "vit_base_patch16_224",
             "B/32": "vit_base_patch32_224", "L/16": "vit_large_patch16_224"}


class Worker:
    """The bench's handle on a running worker."""

    def __init__(self, proc: subprocess.Popen, versions: dict, stderr_path: str):
        self.proc = proc
        self.versions = versions
        self._stderr_path = stderr_path

    def time(self, mode: str) -> float:
        """Seconds of one ``forward`` or ``train`` call, as measured inside the worker."""
        self.proc.stdin.write(mode + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch worker exited: {self._stderr()}")
        return float(json.loads(line)["seconds"])

    def matmul(self, operands: str, repeats: int = 10) -> dict:
        """Seconds of ``repeats`` float32 products of the two matrices ``a`` and ``b`` in the
        ``.npz`` file ``operands`` with PyTorch, and the product's first four rows."""
        self.proc.stdin.write(f"matmul {repeats} {operands}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch worker exited: {self._stderr()}")
        return json.loads(line)

    def peak_memory(self) -> int | None:
        """Peak device memory in bytes the worker's PyTorch allocated (None on CPU)."""
        self.proc.stdin.write("memory\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch worker exited: {self._stderr()}")
        return json.loads(line)["peak_bytes"]

    def _stderr(self) -> str:
        try:
            with open(self._stderr_path) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no output)"

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        try:
            os.unlink(self._stderr_path)
        except OSError:
            pass


def start(python: str | None = None, *, batch: int = 32, resolution: int = 224,
          timeout: float = 300.0, arch: str = ARCH, device: str = "cpu",
          dtype: str = "float32") -> tuple[Worker | None, str]:
    """Start a worker; ``(None, reason)`` when the torch interpreter is missing or fails.

    ``arch``: a timm model name; ``device``: "cpu" or "cuda"; ``dtype``: "float32" or
    "bfloat16" (autocast, parameters stay float32, as the JAX models' ``dtype``).
    """
    python = python or DEFAULT_TORCH_PYTHON
    if not os.path.exists(python):
        return None, (f"timm skipped: no PyTorch interpreter at {python} (create it with "
                      "`python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install "
                      "torch==2.13.0 timm`, or pass --torch-python)")
    fd, stderr_path = tempfile.mkstemp(prefix="augreg-bench-torch-", suffix=".log")
    args = json.dumps({"batch": batch, "resolution": resolution, "arch": arch,
                       "device": device, "dtype": dtype})
    proc = subprocess.Popen([python, os.path.abspath(__file__), args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=fd, text=True)
    os.close(fd)
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        with open(stderr_path) as f:
            err = f.read()[-1000:]
        os.unlink(stderr_path)
        return None, f"timm skipped: the worker did not start ({err.strip() or 'no output'})"
    return Worker(proc, json.loads(line), stderr_path), ""


def _import_timm():
    """timm imports torchvision, whose compiled ops may not load (a CUDA build of
    torchvision next to a CPU build of torch). timm's ViT uses none of those ops; declaring
    the two operator schemas torchvision's import-time fake registrations look up lets the
    import succeed, and any use of the ops still fails loudly."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_timm.keep = lib  # the schemas live as long as the library object
    import timm

    return timm


def _serve(batch: int, resolution: int, arch: str = ARCH, device: str = "cpu",
           dtype: str = "float32") -> None:  # runs inside the torch interpreter
    import contextlib

    import torch
    import torch.nn.functional as F

    timm = _import_timm()
    torch.manual_seed(0)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("this PyTorch has no CUDA device")
        # JAX multiplies float32 on NVIDIA tensor cores as TF32 by default; let PyTorch too.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=getattr(torch, dtype))

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    base_lr, total, warmup = 0.01, 2500, 200

    def lr_factor(count: int) -> float:  # count from 0, the schedule's step = count + 1
        step = count + 1
        progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * min(1.0, step / warmup)

    kw = {"pretrained": False, "img_size": resolution}
    forward_model = timm.create_model(arch, num_classes=1000, **kw).to(device).eval()
    train_model = timm.create_model(arch, num_classes=100, **kw).to(device).train()
    opt = torch.optim.SGD(train_model.parameters(), lr=base_lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    images = (torch.rand(batch, 3, resolution, resolution) * 2 - 1).to(device)
    labels = torch.randint(0, 100, (batch,)).to(device)

    def forward():
        with torch.inference_mode(), autocast():
            forward_model(images)
        sync()

    def train():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(train_model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_model.parameters(), 1.0)
        opt.step()
        sched.step()
        float(loss)

    print(json.dumps({"torch": torch.__version__, "timm": timm.__version__,
                      "threads": torch.get_num_threads(), "device": device}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command.startswith("matmul "):  # float32 matmul peak: "matmul REPEATS FILE"
            import numpy as np

            _, repeats, path = command.split(" ", 2)
            with np.load(path, allow_pickle=False) as f:
                a, b = torch.from_numpy(f["a"]), torch.from_numpy(f["b"])
            with torch.inference_mode():
                out = a @ b
                seconds = []
                for _ in range(int(repeats)):
                    t0 = time.perf_counter()
                    out = a @ b
                    seconds.append(time.perf_counter() - t0)
            print(json.dumps({"seconds": seconds, "rows": out[:4].tolist(),
                              "library": f"PyTorch {torch.__version__} "
                                         f"({torch.get_num_threads()} threads)"}), flush=True)
            continue
        if command == "memory":  # peak bytes of device memory so far (CUDA only)
            peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
            print(json.dumps({"peak_bytes": peak}), flush=True)
            continue
        fn = {"forward": forward, "train": train}[command]
        t0 = time.perf_counter()
        fn()
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    _serve(int(options.get("batch", 32)), int(options.get("resolution", 224)),
           options.get("arch", ARCH), options.get("device", "cpu"),
           options.get("dtype", "float32"))
