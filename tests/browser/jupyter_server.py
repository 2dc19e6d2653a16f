"""A throw-away JupyterLab server for browser tests: loopback only, offline, isolated.

Usage::

    with JupyterLab(root_dir=tmp / "root", state_dir=tmp / "state") as lab:
        page.goto(lab.url("lab/tree/notebooks/01_choose_checkpoint.ipynb"))

What "isolated" and "offline" mean here:

- HOME, the Jupyter config/data/runtime folders, IPython's and matplotlib's folders all live
  under ``state_dir``; nothing of the user's set-up is read and nothing is left behind.
- The only kernel is ``python3``, written into the temporary data folder, pointing at this
  interpreter (the project's virtual environment, which has ipykernel and the package).
- JupyterLab fetches no news, checks for no updates and has no PyPI extension manager; the
  notebook document is never autosaved (the notebooks under test stay untouched).
- Child processes (server and kernel) get ``http(s)_proxy`` pointing at a closed loopback
  port, so any stray request for the outside world fails at once instead of hanging, while
  loopback servers (``no_proxy``) keep working. pytest-socket cannot see child processes, so
  this is what keeps them off the network.
- The kernel runs the notebooks' offline smoke mode (``AUGREG_NB_SMOKE=1``) on CPU, or
  with ``smoke=False`` a real user's set-up (the public bucket and the Hub, no credentials)
  where every request for the outside world fails at once, as without a network.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from augreg_nb.resources import ENV_SMOKE

#: A loopback port nothing listens on: requests through this "proxy" are refused at once.
_DEAD_PROXY = "http://127.0.0.1:9"

#: JupyterLab user settings that stop every background request and keep documents unsaved.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {
        "enabled": False,
        "disclaimed": False,
    },
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {
        "autosave": False,
    },
    # Render every cell (no virtual scrolling), so a test sees all outputs in the DOM.
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
    },
}


class JupyterLabError(RuntimeError):
    """The server did not start or answer; the message carries the tail of its log."""


class JupyterLab:
    """Start ``python -m jupyterlab`` on 127.0.0.1 with a random token; stop it on exit."""

    def __init__(self, root_dir: Path, state_dir: Path, *, startup_timeout: float = 120.0,
                 smoke: bool = True):
        self.smoke = smoke  # False: the real user's path (public bucket, Hub; no network)
        self.root_dir = Path(root_dir)
        self.state_dir = Path(state_dir)
        self.startup_timeout = startup_timeout
        self.token = secrets.token_hex(16)
        self.log_path = self.state_dir / "jupyterlab.log"
        self.base_url = ""
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- set-up ---------------------------------------------------------------------------
    def _dirs(self) -> dict[str, Path]:
        s = self.state_dir
        return {
            "HOME": s / "home",
            "JUPYTER_CONFIG_DIR": s / "jupyter_config",
            "JUPYTER_DATA_DIR": s / "jupyter_data",
            "JUPYTER_RUNTIME_DIR": s / "jupyter_runtime",
            "IPYTHONDIR": s / "ipython",
            "MPLCONFIGDIR": s / "matplotlib",
        }

    def _write_kernelspec(self, data_dir: Path) -> None:
        spec_dir = data_dir / "kernels" / "python3"
        spec_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (augreg_nb test environment)",
            "language": "python",
            "metadata": {"debugger": False},
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

    def _write_lab_settings(self, config_dir: Path) -> None:
        # The server extension jupyter-lsp is off (see command()); its front end goes too.
        page_config = config_dir / "labconfig" / "page_config.json"
        page_config.parent.mkdir(parents=True, exist_ok=True)
        disabled = {
            "@jupyterlab/lsp-extension": True,
            "@jupyterlab/fileeditor-extension:language-server": True,
            "@jupyterlab/notebook-extension:language-server": True,
        }
        page_config.write_text(json.dumps({"disabledExtensions": disabled}, indent=1))
        for rel, values in _LAB_SETTINGS.items():
            path = config_dir / "lab" / "user-settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=1))

    def environment(self) -> dict[str, str]:
        """The environment of the server and (inherited) of its kernels."""
        env = dict(os.environ)
        for key, path in self._dirs().items():
            path.mkdir(parents=True, exist_ok=True)
            env[key] = str(path)
        env.pop("JUPYTER_PATH", None)
        env.pop("JUPYTER_CONFIG_PATH", None)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        # In a virtual environment Jupyter prefers its share/jupyter over the user folders;
        # the temporary data folder (with our kernelspec) must win.
        env["JUPYTER_PREFER_ENV_PATH"] = "0"
        # The test process uses the Agg backend; the kernel must use the inline one
        # (ipykernel selects it only when MPLBACKEND is unset).
        env.pop("MPLBACKEND", None)
        if self.smoke:
            env[ENV_SMOKE] = "1"
        else:  # a real user's set-up: default bucket and Hub, no credentials, no network
            for key in [k for k in env if k.startswith("AUGREG_NB_")]:
                env.pop(key)
            for key in ("HF_ENDPOINT", "HF_HOME", "GOOGLE_APPLICATION_CREDENTIALS",
                        "CLOUDSDK_CONFIG"):
                env.pop(key, None)
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["PYTHONUNBUFFERED"] = "1"
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env[key] = _DEAD_PROXY
        env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost,::1"
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        return env

    def command(self) -> list[str]:
        # CI machines run as root; JupyterLab refuses that unless told it is intended.
        as_root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        return [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.terminals_enabled=False",
            "--ServerApp.open_browser=False",
            # jupyter-lsp would scan for language servers; the test needs none.
            '--ServerApp.jpserver_extensions={"jupyter_lsp": False}',
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--KernelSpecManager.ensure_native_kernel=False",
            # Lets the test read the notebook model (which outputs are widgets) from the page.
            "--LabApp.expose_app_in_browser=True",
            *as_root,
        ]

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> JupyterLab:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        self._write_kernelspec(Path(env["JUPYTER_DATA_DIR"]))
        self._write_lab_settings(Path(env["JUPYTER_CONFIG_DIR"]))
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.command(),
            env=env,
            cwd=self.root_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() also reaches its kernels
        )
        try:
            self.base_url = self._wait_until_ready(Path(env["JUPYTER_RUNTIME_DIR"]))
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, runtime_dir: Path) -> str:
        deadline = time.monotonic() + self.startup_timeout
        info_file = runtime_dir / f"jpserver-{self._proc.pid}.json"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise JupyterLabError(
                    f"JupyterLab exited with code {self._proc.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            if not self.base_url and info_file.is_file():
                try:
                    info = json.loads(info_file.read_text())
                    self.base_url = f"http://127.0.0.1:{info['port']}{info['base_url']}"
                except (json.JSONDecodeError, KeyError):
                    pass  # written but not complete yet
            if self.base_url:
                try:
                    with urllib.request.urlopen(self.api_url("api/status"), timeout=5) as r:
                        if r.status == 200:
                            return self.base_url
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.25)
        raise JupyterLabError(
            f"JupyterLab did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}"
        )

    def api_url(self, path: str) -> str:
        """``path`` (e.g. ``api/status``) on the running server, with the token."""
        base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        return f"{base}{path.lstrip('/')}?token={self.token}"

    def url(self, path: str) -> str:
        """A browser URL inside the server, logged in through the token."""
        return self.api_url(path)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the server to shut down (it stops its kernels), then make sure it is gone."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self.base_url:
                try:
                    req = urllib.request.Request(self.api_url("api/shutdown"), method="POST")
                    urllib.request.urlopen(req, timeout=5).close()
                except (urllib.error.URLError, OSError):
                    pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if proc is not None:
            # Kernels started by this server share its process group; end any left over.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._proc = None
        self.base_url = ""
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
