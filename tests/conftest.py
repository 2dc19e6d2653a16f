"""Test harness: CPU-only JAX, the Agg backend, no network but loopback, isolated caches.

Network: pytest-socket (configured in pyproject.toml) refuses connections to anything but
127.0.0.1/::1; tests that need a server start one on loopback.
Multi-device: ``run_python(code, devices=8)`` runs a snippet in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Must happen before anything imports jax, TensorFlow or matplotlib.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.pop("AUGREG_NB_INDEX", None)
os.environ.pop("AUGREG_NB_CHECKPOINT_DIR", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def real_env(tmp_path, monkeypatch):
    """A real user's set-up without network use: the public bucket (no credentials, so it
    refuses), an empty cache, no checkpoint folder, online."""
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    for var in ("AUGREG_NB_OFFLINE", "AUGREG_NB_CHECKPOINT_DIR", "AUGREG_NB_INDEX",
                "AUGREG_NB_BUCKET_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """No test reads or writes the user's caches (ours, Hugging Face's, TFDS's)."""
    root = tmp_path_factory.mktemp("caches")
    saved = {k: os.environ.get(k) for k in ("AUGREG_NB_CACHE", "HF_HOME", "TFDS_DATA_DIR")}
    os.environ["AUGREG_NB_CACHE"] = str(root / "augreg_nb")
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pytest_addoption(parser):
    parser.addoption(
        "--no-browser", action="store_true", help="skip the JupyterLab + Chromium tests"
    )


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--no-browser"):
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("--no-browser is for local runs; CI always runs browser tests")
    skip = pytest.mark.skip(reason="--no-browser given")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def run_python(code: str, devices: int = 1, timeout: float = 600, env: dict | None = None):
    """Run ``code`` in a fresh Python with ``devices`` virtual CPU devices; return stdout.

    Raises AssertionError with the child's stderr when it fails.
    """
    child_env = dict(os.environ)
    child_env["XLA_FLAGS"] = (
        child_env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    child_env["JAX_PLATFORMS"] = "cpu"
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), child_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    if env:
        child_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return proc.stdout


@pytest.fixture
def python_runner():
    """The ``run_python`` helper as a fixture."""
    return run_python
