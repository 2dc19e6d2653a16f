"""The harness itself: CPU pinning, loopback-only network, 8 virtual devices, CLI entry."""

import socket
import subprocess
import sys

import pytest
from pytest_socket import SocketConnectBlockedError

from tests.conftest import run_python


def test_jax_is_pinned_to_cpu():
    import jax

    assert jax.default_backend() == "cpu"


def test_matplotlib_uses_agg():
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_network_is_refused_but_loopback_works(monkeypatch):
    """The guard refuses a host that is not loopback before anything else happens: the name
    below is never looked up (a look-up would fail differently) and no address outside
    127.0.0.0/8 is named."""
    looked_up = []
    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: looked_up.append(a) or real_getaddrinfo(*a, **k))
    client = socket.socket()
    try:
        with pytest.raises(SocketConnectBlockedError):
            client.connect(("augreg-nb-harness-check.invalid", 80))
    finally:
        client.close()
    assert looked_up == []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.close()
    server.close()


def test_eight_virtual_devices_in_a_child_process():
    out = run_python(
        "import jax; print(jax.device_count(), jax.default_backend())", devices=8
    )
    assert out.split() == ["8", "cpu"]


def test_console_script_help_lists_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "augreg_nb", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "devices" in proc.stdout


def test_import_prints_nothing():
    proc = subprocess.run(
        [sys.executable, "-c", "import augreg_nb, augreg_nb.resources, augreg_nb.cli"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_shipped_data_is_found():
    from augreg_nb.resources import data_dir, data_path

    assert (data_dir() / "SOURCES.md").is_file()
    assert data_path("paper", "table3_imagenet1k_transfer.csv").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="not found"):
        data_path("paper", "no_such_table.csv")


def test_missing_tensorflow_names_the_install_command():
    code = """
import sys
sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
from augreg_nb.preprocess import import_tf
try:
    import_tf()
except ImportError as err:
    print(err)
"""
    out = run_python(code)
    assert "pip install 'augreg_nb[tf]'" in out
