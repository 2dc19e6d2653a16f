"""What the notebooks report first: the accelerator JAX found and how many devices.

``describe_devices()`` is pure information (no side effects besides initialising JAX), so a
notebook cell can print it and a test can check it.
"""

from __future__ import annotations

import dataclasses
import platform


@dataclasses.dataclass(frozen=True)
class DeviceReport:
    platform: str  # "tpu", "gpu" or "cpu"
    device_kind: str  # e.g. "TPU v2", "NVIDIA H100 80GB HBM3", "cpu"
    local_devices: int
    global_devices: int
    processes: int
    jax_version: str
    python: str

    def __str__(self) -> str:
        hosts = f" on {self.processes} hosts" if self.processes > 1 else ""
        return (
            f"{self.platform.upper()}: {self.global_devices} x {self.device_kind}{hosts} "
            f"({self.local_devices} local) — jax {self.jax_version}, Python {self.python}"
        )


def describe_devices() -> DeviceReport:
    """Describe the accelerator JAX uses by default (TPU, GPU or CPU) and the device count."""
    import jax

    devices = jax.devices()
    first = devices[0]
    return DeviceReport(
        platform=first.platform,
        device_kind=getattr(first, "device_kind", first.platform),
        local_devices=jax.local_device_count(),
        global_devices=len(devices),
        processes=jax.process_count(),
        jax_version=jax.__version__,
        python=platform.python_version(),
    )
