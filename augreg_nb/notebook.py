"""Small helpers the notebooks call: Colab set-up, the device report, the offline smoke mode.

Every notebook under ``notebooks/`` starts the same way::

    from augreg_nb import notebook as nb
    session = nb.start()          # smoke mode when AUGREG_NB_SMOKE=1, see below
    print(session.report)         # accelerator, devices, data source

``start()`` returns a :class:`Session` with the index table the widgets browse, where own
results and runs are written, and (in smoke mode) the fake sources. Nothing here downloads
anything or starts a training run.

Colab
    The notebooks' first cell installs the package only when ``google.colab`` is loaded, at
    the ref :data:`COLAB_REF` (the main branch until a release is tagged), without extras
    (Colab ships TensorFlow; installing ``tensorflow-cpu`` next to it would replace the same
    module), and says in one line
    whether the session must restart (:mod:`augreg_nb.colab`). Colab's own versions satisfy
    every requirement, so the install adds packages but changes none of Colab's (the check
    in ``tests/colab/`` proves it). Colab renders ipywidgets 7 with its own widget manager;
    only ipywidgets 8 needs the custom one: see :func:`enable_colab_widgets`.

Smoke mode (``AUGREG_NB_SMOKE=1``)
    The notebooks run top to bottom offline in about a minute on two CPU cores: the index is
    the shipped catalogue; the caches live in a temporary folder (own results go to one file
    under the user's cache, so notebook 3 shows what notebook 2 exported); the checkpoint
    bucket is a loopback server (:class:`augreg_nb.loopback.FakeBucket`) that serves fake
    checkpoints written in the published ``.npz`` layout (:mod:`augreg_nb.random_checkpoints`)
    under their real names; Google credentials are hidden and the Hugging Face endpoint is a
    loopback server with no repositories, so nothing leaves the machine; fine-tuning uses the
    ``smoke`` preset (a tiny model on the digits shipped with the package). The
    :class:`SmokeEnvironment` that :func:`setup_smoke` returns owns the servers and the
    environment variables it set: ``close()`` (or leaving ``with setup_smoke() as env:``)
    stops the servers and restores every variable.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from augreg_nb import compile_cache
from augreg_nb.config import SMOKE_MODEL
from augreg_nb.download import cache_dir
from augreg_nb.envinfo import describe_devices
from augreg_nb.index import load_index as _load_index
from augreg_nb.names import parse_name
from augreg_nb.resources import ENV_CACHE, ENV_INDEX, ENV_OFFLINE, ENV_SMOKE, data_path, env_flag
from augreg_nb.sources import ENV_BUCKET_URL
from augreg_nb.widgets.common import quiet_libraries

logger = logging.getLogger(__name__)

#: The repository the notebooks are published from.
REPOSITORY = "https://github.com/augreg-nb/augreg_nb"
#: The git ref the Colab cell installs by default (``AUGREG_NB_REF`` there): the main branch,
#: which exists in the published repository; a release tag (``v0.1.0``) once one is published.
#: ``tests/test_colab.py`` checks that the ref exists in the checkout and installs through it.
COLAB_REF = "main"
#: pip requirement the Colab cell installs, no extras (Colab has TensorFlow already);
#: IPython's ``%pip`` fills in the cell's ``AUGREG_NB_REF`` (a tag, a branch or a commit).
COLAB_INSTALL = f"augreg_nb @ git+{REPOSITORY}@{{AUGREG_NB_REF}}"
#: Where Colab opens the notebooks from.
COLAB_URL = "https://colab.research.google.com/github/augreg-nb/augreg_nb/blob/main/notebooks/"



def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def colab_badge(notebook: str) -> str:
    """Markdown of the "Open in Colab" badge for ``notebooks/{notebook}``."""
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({COLAB_URL}{notebook})"
    )


def enable_colab_widgets() -> bool:
    """Turn on Colab's custom widget manager where ipywidgets 8 is installed (Colab renders
    its own ipywidgets 7 without it); False outside Colab or with ipywidgets 7."""
    from importlib.metadata import version

    if not in_colab() or int(version("ipywidgets").split(".")[0]) < 8:
        return False
    from google.colab import output  # type: ignore[import-not-found]

    output.enable_custom_widget_manager()
    return True


def smoke_mode() -> bool:
    """True when ``AUGREG_NB_SMOKE`` asks for the offline smoke mode."""
    return env_flag(ENV_SMOKE)


# --------------------------------------------------------------------------- smoke mode


@dataclasses.dataclass
class SmokeEnvironment:
    """The fake sources smoke mode runs against (a temporary folder and loopback servers)."""

    root: Path  #: temporary folder holding the cache, the bucket's files and the runs
    bucket: Any  #: the running :class:`~augreg_nb.loopback.FakeBucket`
    hub: Any  #: the running :class:`~augreg_nb.loopback.FakeHub` (no repositories)
    checkpoints: tuple[str, ...]  #: checkpoint names the fake bucket serves
    previous_env: dict[str, str | None]  #: environment variables before smoke mode set them
    owns_root: bool = False  #: the folder was made by :func:`setup_smoke` (removed on close)
    #: own results of smoke runs: one file under the user's cache, shared by the notebooks
    #: (notebook 2 exports into it, notebook 3 reads it), kept across sessions
    results_csv: Path | None = None

    def __enter__(self) -> SmokeEnvironment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the servers, restore the environment variables, remove a temporary root."""
        global _SMOKE
        if _SMOKE is self:
            _SMOKE = None
        self.bucket.stop()
        self.hub.stop()
        for key, value in self.previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


_SMOKE: SmokeEnvironment | None = None


def smoke_checkpoints(model: str = SMOKE_MODEL) -> dict[str, tuple[int, int]]:
    """Checkpoint name -> (num_classes, resolution) of the fakes smoke mode serves: the
    model's recommended upstream checkpoint and its ImageNet fine-tune at 384 px."""
    import pandas as pd

    rec = pd.read_csv(data_path("index", "recommended_checkpoints.csv"))
    row = rec[rec["model"] == model]
    if row.empty:
        raise ValueError(f"no recommended checkpoint of {model!r} is shipped")
    up = parse_name(row["pretrained_checkpoint"].iat[0])
    ft = parse_name(row["finetuned_checkpoint"].iat[0])
    return {up.filename: (21843, 224), ft.filename: (1000, ft.resolution)}


def setup_smoke(root: str | os.PathLike | None = None) -> SmokeEnvironment:
    """Start smoke mode (idempotent): temporary caches, a loopback bucket with fake
    checkpoints in the published layout, no Google credentials, an empty loopback Hub."""
    global _SMOKE
    if _SMOKE is not None:
        return _SMOKE
    from augreg_nb.loopback import FakeBucket, FakeHub
    from augreg_nb.random_checkpoints import write_fake_checkpoint

    owns_root = root is None
    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="augreg_nb_smoke_"))
    bucket_dir = root / "bucket"
    bucket_dir.mkdir(parents=True, exist_ok=True)
    served = smoke_checkpoints()
    for seed, (name, (num_classes, resolution)) in enumerate(served.items()):
        path = bucket_dir / f"{name}.npz"
        if not path.is_file():
            write_fake_checkpoint(path, SMOKE_MODEL, num_classes=num_classes,
                                  resolution=resolution, seed=seed)
    bucket = FakeBucket(bucket_dir).start()
    hub = FakeHub().start()
    settings = {
        ENV_CACHE: str(root / "cache"),
        ENV_BUCKET_URL: bucket.url,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(root / "hf"),
        "TFDS_DATA_DIR": str(root / "tfds"),
        # No credentials: the gs:// source is skipped instead of reaching Google.
        "GOOGLE_APPLICATION_CREDENTIALS": str(root / "no-credentials.json"),
        "CLOUDSDK_CONFIG": str(root / "gcloud"),
    }
    previous = {k: os.environ.get(k) for k in (*settings, ENV_INDEX, ENV_OFFLINE)}

    results_csv = cache_dir() / "smoke" / "augreg_results.csv"  # before the cache moves
    os.environ.update(settings)
    os.environ.pop(ENV_INDEX, None)  # the shipped catalogue, whatever the user set
    os.environ.pop(ENV_OFFLINE, None)  # the loopback bucket is reachable
    _SMOKE = SmokeEnvironment(root, bucket, hub, tuple(served), previous, owns_root,
                              results_csv)
    atexit.register(_SMOKE.close)
    logger.info("smoke mode: fake bucket at %s serving %s", bucket.url, ", ".join(served))
    return _SMOKE


# --------------------------------------------------------------------------- session


@dataclasses.dataclass
class Session:
    """What a notebook works with after :func:`start`."""

    smoke: bool  #: offline smoke mode is on
    index: Any  #: the index table (pandas DataFrame, provenance in ``attrs``)
    workdir: Path  #: folder for fine-tuning runs
    results_csv: Path  #: own result rows (index schema), appended by the fine-tuning panel
    devices: str  #: the accelerator report
    smoke_env: SmokeEnvironment | None = None

    @property
    def report(self) -> str:
        lines = [f"Accelerator: {self.devices}"]
        prov = (self.index.attrs.get("provenance") or {}) if self.index is not None else {}
        if prov:
            complete = "complete" if prov.get("complete") else "incomplete"
            lines.append(f"Index table: {prov.get('source', 'unknown source')} ({complete}, "
                         f"{len(self.index):,} rows)")
        lines.append(f"Runs: {self.workdir}   own results: {self.results_csv}")
        if self.smoke_env is not None:
            lines.append(f"Smoke mode ({ENV_SMOKE}=1): offline; fake checkpoints served by "
                         f"{self.smoke_env.bucket.url}; files under {self.smoke_env.root}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's text display
        p.text(self.report)


def show_tables_whole() -> None:
    """Let pandas show file names and explanations whole in a notebook (its default cuts
    every cell at 50 characters, which hides what tells checkpoints apart)."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.width", 200)


def device_report() -> str:
    """One line: the accelerator JAX uses (TPU, GPU or CPU) and the number of devices."""
    return str(describe_devices())


def start(
    *,
    index: str | None = None,
    workdir: str | os.PathLike = "augreg_runs",
    results_csv: str | os.PathLike = "augreg_results.csv",
    load_index: bool = True,
) -> Session:
    """Prepare a notebook: smoke mode if asked for, the device report and the index table.

    ``index``: a path or URL of a full ``index.csv`` (default: ``$AUGREG_NB_INDEX``, the
    cache, the bucket, else the shipped catalogue; smoke mode always uses the catalogue).
    In smoke mode ``workdir`` moves into the temporary folder and ``results_csv`` to
``<cache>/smoke/augreg_results.csv``, one file that notebooks 2 and 3 share.
    """
    index = index or None  # "" (an empty notebook parameter) means: look it up
    show_tables_whole()

    quiet_libraries(tfds=False)  # before anything loads TensorFlow
    smoke_env = setup_smoke() if smoke_mode() else None
    if smoke_env is not None:
        workdir = smoke_env.root / "runs"
        results_csv = smoke_env.results_csv or smoke_env.root / "augreg_results.csv"
        index = "catalogue"
    compile_cache.enable()  # compiled programs survive kernel restarts (after smoke set-up)
    table = None
    if load_index:
        table = _load_index(index)
    return Session(
        smoke=smoke_env is not None,
        index=table,
        workdir=Path(workdir),
        results_csv=Path(results_csv),
        devices=device_report(),
        smoke_env=smoke_env,
    )
