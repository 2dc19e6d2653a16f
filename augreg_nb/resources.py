"""Where the shipped data lives, and the environment variables every module honours.

The repository's top-level ``data/`` folder is installed into wheels as ``augreg_nb/_data``;
in a source checkout (or an editable install) it is read in place.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Folder that holds downloaded checkpoints and index tables (default: the user cache dir).
ENV_CACHE = "AUGREG_NB_CACHE"
#: "1" means: never touch the network; only local files, the cache and shipped data.
ENV_OFFLINE = "AUGREG_NB_OFFLINE"
#: Path or URL of a full ``index.csv`` to use instead of looking it up.
ENV_INDEX = "AUGREG_NB_INDEX"
#: A local folder (e.g. a mounted Google Drive) that holds ``{name}.npz`` checkpoint files.
ENV_CHECKPOINT_DIR = "AUGREG_NB_CHECKPOINT_DIR"
#: "1" makes the notebooks run in offline smoke mode (fake checkpoints, tiny datasets).
ENV_SMOKE = "AUGREG_NB_SMOKE"

_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def data_dir() -> Path:
    """The folder of shipped data (paper tables, real index rows, mirror list, npz layouts)."""
    pkg = Path(__file__).resolve().parent
    for candidate in (pkg / "_data", pkg.parent / "data"):
        if (candidate / "SOURCES.md").is_file():
            return candidate
    raise FileNotFoundError(
        "augreg_nb's shipped data folder is missing (looked for augreg_nb/_data and ../data). "
        "Reinstall the package: pip install --force-reinstall augreg_nb"
    )


def data_path(*parts: str) -> Path:
    """Path of one shipped file, e.g. ``data_path("paper", "table3_imagenet1k_transfer.csv")``."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"shipped data file {'/'.join(parts)!r} not found in {data_dir()}")
    return path
