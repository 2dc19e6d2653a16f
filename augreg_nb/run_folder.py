"""A run's folder records what produced it, is used by one run at a time, and is read back
with checks, so that no result is ever served for a config that did not produce it.

    from augreg_nb import run_folder
    workdir = run_folder.claim(workdir, config)   # refuses (or moves to) on another config
    with run_folder.locked(workdir):              # one run per folder at a time
        ...train...
    run_folder.read_result(workdir / "result.json")  # a damaged file is named, not trusted

``<workdir>/run.json`` holds the run's resolved config (every field that changes what the
run computes; the fields of :data:`FREE_FIELDS`, such as ``micro_batches``, only change
memory use, speed or logging and may differ when a run is resumed) and the identity of its
checkpoint (for a local file: its name, size and SHA-256). A later call with a config that
differs in any recorded field is refused with the fields named, or, with the config field
``if_different="new_folder"``, runs in a folder of its own next to it, ``<workdir>-<hash>``
(the hash of the resolved config). Folders written before ``run.json`` existed are checked
against the config their training state recorded.

Every JSON file the package writes is strict JSON (:func:`augreg_nb.atomic.strict_json`):
NaN and infinities are written as ``null`` and read back as NaN.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

from augreg_nb.atomic import write_json_atomic
from augreg_nb.names import shorten

logger = logging.getLogger(__name__)

#: The record of what produced the run, in its folder.
RUN_FILE = "run.json"
#: The lock file of a folder in use (holds the pid of the run using it).
LOCK_FILE = ".lock"
#: Config fields that do not change what a run computes: memory use, placement, speed,
#: logging, where files go, and what to do on a conflict. They may differ on a rerun.
FREE_FIELDS = frozenset({
    "micro_batches", "param_sharding", "eval_every", "checkpoint_every", "log_every",
    "eval_batch", "workdir", "data_dir", "export", "if_different",
})


class RunFolderError(ValueError):
    """A run folder cannot be used for this config; the message says why and what to do."""


# ------------------------------------------------------------------ what produced a run


def checkpoint_identity(checkpoint) -> dict:
    """What identifies the checkpoint beyond its name: for a local file its name, size and
    SHA-256 (a file replaced under the same path is another checkpoint); else nothing (a
    published name, a model name or ``fake:<model>`` names its checkpoint)."""
    try:
        path = Path(str(checkpoint or "")).expanduser()
        if not str(checkpoint or "").strip() or not path.is_file():
            return {}
        stat = path.stat()
        return {"file": path.name, "bytes": stat.st_size,
                "sha256": _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                                       stat.st_ctime_ns, stat.st_ino)}
    except OSError:
        return {}


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """SHA-256 of a file, hashed once per (path, size, times, inode): a sweep checks the
    same checkpoint file for every run."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value):
    """``value`` as JSON has it (tuples as lists), so stored and new values compare."""
    return json.loads(json.dumps(value, default=str))


def record(config) -> dict:
    """The record of a run of ``config``: its resolved fields but :data:`FREE_FIELDS`, and
    the checkpoint's identity."""
    fields = {k: _plain(v) for k, v in sorted(config.to_dict().items())
              if k not in FREE_FIELDS}
    return {"config": fields, "checkpoint_identity": checkpoint_identity(config.checkpoint)}


def digest(config) -> str:
    """A short hash of :func:`record`: equal exactly when two configs run the same thing."""
    return hashlib.sha256(json.dumps(record(config), sort_keys=True).encode()).hexdigest()[:12]


def differences(stored: dict, wanted: dict) -> list[str]:
    """``field: stored -> wanted`` for each recorded field that differs. A field the stored
    record lacks (a field added since) counts as equal to the new default, which is given as
    ``wanted["defaults"]`` when known."""
    old, new = stored.get("config", {}), wanted["config"]
    defaults = wanted.get("defaults", {})
    out = []
    for key in sorted(set(old) | set(new)):
        if key in FREE_FIELDS:
            continue
        a = old.get(key, defaults.get(key, new.get(key)))
        b = new.get(key, defaults.get(key))
        if a != b and not (isinstance(a, float) and isinstance(b, float)
                           and math.isnan(a) and math.isnan(b)):
            out.append(f"{key}: {shorten(a, 40)} -> {shorten(b, 40)}")
    a_id, b_id = stored.get("checkpoint_identity") or {}, wanted.get("checkpoint_identity") or {}
    if a_id and b_id and a_id != b_id:
        out.append(f"checkpoint file: sha256 {a_id.get('sha256', '?')[:12]} -> "
                   f"{b_id.get('sha256', '?')[:12]}")
    return out


def read_record(workdir: Path) -> dict | None:
    """The run record of ``workdir`` (None when it has none); a damaged one is named."""
    path = Path(workdir) / RUN_FILE
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise RunFolderError(f"{workdir} is a file, not a folder: move or remove it, or use "
                             "another workdir")
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunFolderError(f"cannot read {path} ({err.strerror or err}); fix its "
                             "permissions or use another workdir") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict)):
        raise RunFolderError(
            f"{path} is damaged (not the JSON record of a run), so what produced this folder "
            f"is unknown; delete the folder {path.parent} to start over, or use another workdir")
    return data


def _legacy_record(workdir: Path) -> dict | None:
    """The record of a folder written before run.json: the config its state recorded."""
    from augreg_nb.train_state import StateFileError, read_meta, saved

    state = Path(workdir) / "state"
    if not saved(state):
        return None
    try:
        config = read_meta(state).get("config")
    except StateFileError:
        return None  # the run itself names the damage when it resumes
    return {"config": config} if isinstance(config, dict) else None


def _defaults() -> dict:
    from augreg_nb.config import _base

    return {k: _plain(v) for k, v in _base().to_dict().items()}


def claim(workdir: str | os.PathLike, config, *, write: bool = True) -> Path:
    """The folder a run of ``config`` uses: ``workdir`` when it is new or holds a run of the
    same config; else, by ``config.if_different``, a RunFolderError naming the differing
    fields ("refuse"), or ``<workdir>-<digest>`` ("new_folder", checked the same way).
    Writes the record into a folder that has none (``write``; process 0 of several)."""
    workdir = Path(workdir)
    wanted = {**record(config), "defaults": _defaults()}
    how = config.get("if_different", "refuse") or "refuse"
    for attempt in (workdir, workdir.with_name(f"{workdir.name}-{digest(config)}")):
        stored = read_record(attempt) or _legacy_record(attempt)
        diff = differences(stored, wanted) if stored is not None else []
        if not diff:
            if write and (attempt / RUN_FILE).exists() is False:
                _write_record(attempt, config)
            return attempt
        if how != "new_folder" or attempt != workdir:
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8
                                           else "")
            raise RunFolderError(
                f"{attempt} holds a run of another config ({shown}), so its results are not "
                f"this config's. Use another workdir, delete that folder to start over, or "
                f"run in a folder of its own with --set if_different=new_folder")
        logger.info("%s holds a run of another config (%s); this run goes to %s-%s",
                    workdir, "; ".join(diff[:3]), workdir.name, digest(config))
    raise AssertionError("unreachable")  # pragma: no cover


def _write_record(workdir: Path, config) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / RUN_FILE, record(config))
    except OSError as err:
        raise not_writable(workdir, err) from None


def not_writable(workdir: Path, err: OSError) -> RunFolderError:
    """The message for a run folder the run cannot write into."""
    if err.errno == errno.ENOSPC:
        why = "the disk is full"
        fix = "free some space (or use a workdir on another disk) and run the same command again"
    else:
        why = err.strerror or str(err)
        fix = "use a workdir you can write to (--workdir or --set workdir=...)"
    return RunFolderError(f"cannot write in the run folder {workdir} ({why}); {fix}")


# ------------------------------------------------------------------ one run at a time


@contextlib.contextmanager
def locked(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold ``workdir``'s lock for the block: a second run started on the same folder while
    the first is running gets a RunFolderError naming the folder and the other run's pid.
    The lock is the operating system's (``flock``), so a killed run leaves none behind."""
    import fcntl

    workdir = Path(workdir)
    path = workdir / LOCK_FILE
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise not_writable(workdir, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise RunFolderError(
                f"another run is using {workdir} (pid {other}); wait for it to finish, or "
                "use another workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ------------------------------------------------------------------ result.json


def read_result(path: str | os.PathLike) -> dict:
    """A run's ``result.json``: a dict with a ``result_row`` dict (nulls read as NaN).
    A truncated, empty or otherwise damaged file raises RunFolderError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as err:
        raise RunFolderError(f"cannot read {path} ({err.strerror or err})") from None
    except ValueError as err:
        raise RunFolderError(f"{path} is damaged (not valid JSON: {err})") from None
    if not (isinstance(data, dict) and isinstance(data.get("result_row"), dict)
            and data["result_row"].get("adapt_filename")):
        raise RunFolderError(f"{path} is damaged (it holds no result row)")
    # Strict JSON holds NaN (no result, e.g. an upstream metric the index lacks) as null.
    for key in ("result_row", "final"):
        if isinstance(data.get(key), dict):
            data[key] = {k: math.nan if v is None else v for k, v in data[key].items()}
    return data
