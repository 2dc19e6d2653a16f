"""Timing and reporting helpers shared by the bench sections.

A measurement is the median of ``repeats`` timed calls after ``warmup`` untimed ones.
Competitors (our model, the reference-style Flax ViT, timm) are timed in interleaved
rounds — A, B, C, A, B, C, ... — so that a machine shared with other busy processes slows
them alike and their ratio stays meaningful even when the absolute numbers move.

    rows = []
    times = time_interleaved({"ours": run_ours, "reference": run_ref}, repeats=5)
    rows.append(Row("model", "Ti/16 forward", 32 / median(times["ours"]), "img/s"))
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Row:
    """One result: ``value`` in ``unit`` (higher is better for rates, lower for times)."""

    section: str
    name: str
    value: float | None
    unit: str
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def median(values) -> float:
    return float(statistics.median(values))


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds one call takes; a callable may return its own measured seconds (a float)."""
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    return float(out) if isinstance(out, float) else elapsed


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 5,
                     warmup: int = 1, gap_s: float = 0.0) -> dict[str, list[float]]:
    """Per name, the seconds of ``repeats`` calls, timed round-robin after ``warmup`` calls.

    Each callable must finish its work before returning (``block_until_ready``).
    ``gap_s``: an untimed pause before each timed call, so that one runtime's worker
    threads, which spin for a while after a call, do not slow down the next one's call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if gap_s:
                time.sleep(gap_s)
            times[name].append(time_call(fn))
    return times


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, library versions, XLA flags and JAX's default device."""
    import jax

    device = jax.devices()[0]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "numpy": _version("numpy"),
        "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_device": f"{device.platform}: {getattr(device, 'device_kind', device.platform)}",
        "jax_device_count": jax.device_count(),
        "git_commit": _git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def format_table(rows: list[Row]) -> str:
    """A plain-text table: section, measurement, value, unit, note."""
    lines = [("section", "measurement", "value", "unit", "note")]
    for r in rows:
        if r.value is None:
            value = "-"
        elif abs(r.value) >= 100:
            value = f"{r.value:,.0f}"
        elif abs(r.value) >= 1:
            value = f"{r.value:.2f}"
        else:
            value = f"{r.value:.4f}"
        lines.append((r.section, r.name, value, r.unit, r.note))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) if j != 2 else c.rjust(w)
                             for j, (c, w) in enumerate(zip(line[:4], widths, strict=True)))
                   + (f"  {line[4]}" if line[4] else ""))
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)
