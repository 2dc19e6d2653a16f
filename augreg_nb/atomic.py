"""Write files atomically, with the user's permissions, and clean up after killed writers.

Outputs (training states, exported checkpoints) are written to a temporary file in the same
folder, ``.<name>.tmp-<pid>``, and renamed onto their name once complete, so a reader never
sees half a file and a run killed while writing keeps the previous version. The temporary
file is removed when writing fails (a full disk, an exception); one left behind by a killed
process (its pid is gone) is swept away by the next write into that folder::

    from augreg_nb.atomic import atomic_write
    with atomic_write(workdir / "state.npz") as f:
        np.savez(f, **arrays)

Files are created with ``open``'s default mode, so the user's umask decides who may read
them (``tempfile.mkstemp`` would make them private, 0600).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")
#: A temporary file this old is stale even when a process with its pid exists (pid reuse).
STALE_AFTER_S = 24 * 3600.0


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # someone else's process, or cannot tell: keep its file
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files of killed writers in ``folder``; return what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            if old or not _pid_alive(int(m.group(1))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s: %s",
                    len(removed), folder, ", ".join(p.name for p in removed))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; renamed onto ``path`` (after an
    fsync) when the block ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent)
    tmp = temp_path(path)
    try:
        tmp.unlink(missing_ok=True)  # never write through a link planted under this name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(tmp, flags, 0o666), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj):
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def strict_json(value):
    """``value`` with every NaN or infinite float (numpy's too) replaced by None, so that it
    is written as strict JSON (``null``), which every parser reads; lists, tuples and dicts
    are converted throughout."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def dumps_strict(payload, **kwargs) -> str:
    """``json.dumps`` of :func:`strict_json` of ``payload``; never writes NaN/Infinity."""
    return json.dumps(strict_json(payload), allow_nan=False, default=_json_default, **kwargs)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` as strict JSON (NaN and infinities as ``null``) to ``path``
    through :func:`atomic_write`."""
    with atomic_write(Path(path)) as f:
        f.write(dumps_strict(payload, indent=1).encode("utf-8"))
