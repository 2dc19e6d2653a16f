"""Download files into the cache: atomic, resumable, verified, locked, with a progress bar.

The cache is a plain folder that people can read::

    <cache>/checkpoints/<name>.npz              a checkpoint, exactly as published
    <cache>/checkpoints/<name>.npz.meta.json    where it came from, its size and sha256
    <cache>/index/index.csv                     the index table (+ index.csv.meta.json)

``<cache>`` is ``$AUGREG_NB_CACHE`` if set, else the platform's user cache folder
(``~/.cache/augreg_nb`` on Linux). Usage::

    from augreg_nb.download import cache_dir, download
    path = download("https://example.org/B_16-....npz", cache_dir() / "checkpoints" / "x.npz")

What ``download`` guarantees:

* bytes go to ``<dest>.part`` in the same folder and are renamed onto ``<dest>`` only once
  complete and verified (size announced by the server, ``sha256`` when given, and the file
  format: an ``.npz`` must be a zip of ``.npy`` members) - the cache never holds a
  half-written file under its final name;
* an interrupted download resumes from ``<dest>.part`` with an HTTP ``Range`` request (a
  server that ignores ``Range`` and answers 200 makes it start over);
* a cached file that fails verification (size or checksum differs from its
  ``.meta.json``, or it is not a valid zip) is reported, deleted and fetched again;
* two processes fetching the same file wait for each other (a lock file in ``.locks/``)
  and end with one correct file;
* timeouts (connect, read) and up to ``retries`` retries with exponential back-off on 5xx,
  429 and broken connections; never on 401/403/404;
* ``AUGREG_NB_OFFLINE=1`` makes every download fail at once with :class:`OfflineError`,
  before any connection is opened.

``gs://`` URLs are read with the user's Google credentials through ``gcsfs`` (or
TensorFlow's file system when gcsfs is missing); see :mod:`augreg_nb.sources`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from augreg_nb.resources import ENV_CACHE, ENV_OFFLINE, env_flag

logger = logging.getLogger(__name__)

#: (connect, read) timeouts in seconds for each HTTP request.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
#: Retries after the first attempt, for 5xx/429 answers and broken connections.
DEFAULT_RETRIES = 4
#: First back-off delay in seconds; doubles after every retry.
DEFAULT_BACKOFF = 1.0
#: How long to wait for another process that is fetching the same file.
LOCK_TIMEOUT = 6 * 3600.0

CHUNK = 1 << 20
#: Bytes per read from the network; a broken connection loses at most this much.
NET_CHUNK = 1 << 16
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
META_SUFFIX = ".meta.json"
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download failed; ``status`` is the HTTP status (None for network/format problems).

    ``no_network`` is set (to a short phrase such as "the host name x cannot be resolved")
    when the failure means that this machine cannot reach the network at all, so other
    network sources need not be tried.
    """

    def __init__(self, message: str, *, url: str = "", status: int | None = None,
                 no_network: str | None = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.no_network = no_network


class OfflineError(DownloadError):
    """Offline mode (``AUGREG_NB_OFFLINE=1``) forbids opening a connection."""


class _Retryable(Exception):
    """Internal: a transient failure worth another attempt."""


def cache_dir() -> Path:
    """The cache folder: ``$AUGREG_NB_CACHE``, else the platform's user cache folder."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("augreg_nb", appauthor=False))


def is_offline() -> bool:
    """True when ``AUGREG_NB_OFFLINE`` is set to 1/true/yes/on."""
    return env_flag(ENV_OFFLINE)


def offline_message(what: str) -> str:
    return f"offline mode ({ENV_OFFLINE}=1): not opening a connection for {what}"


# --------------------------------------------------------------------------- verification


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_format(path: Path, suffix: str | None = None) -> str | None:
    """Why ``path`` is not a valid file of its kind, or None when it looks valid.

    The kind is ``suffix`` (default: the file's own): ``.npz`` must be a zip whose members
    are ``.npy`` arrays; ``.safetensors`` a JSON header of the announced length; ``.csv`` a
    UTF-8 header line with comma-separated columns. Other kinds are not checked.
    """
    suffix = (suffix or path.suffix).lower()
    try:
        if suffix == ".npz":
            if not zipfile.is_zipfile(path):
                return "not a valid .npz (zip) file"
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if not names or not all(n.endswith(".npy") for n in names):
                return "zip file holds no .npy arrays"
        elif suffix == ".safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n <= 0 or n > path.stat().st_size - 8:
                    return "not a valid .safetensors file (bad header length)"
                json.loads(f.read(n))
        elif suffix == ".csv":
            with open(path, encoding="utf-8") as f:
                header = f.readline()
            if "," not in header:
                return "not a CSV file (no comma-separated header line)"
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return f"unreadable ({err})"
    return None


def lock_path(path: Path) -> Path:
    """The lock file that serialises fetches of ``path``: ``<folder>/.locks/<name>.lock``."""
    path = Path(path)
    folder = path.parent / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (path.name + LOCK_SUFFIX)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def read_meta(path: Path) -> dict:
    """The sidecar ``<file>.meta.json`` of a cached file ({} when missing or unreadable)."""
    try:
        return json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return {}


def verify_file(
    path: Path, *, expected_size: int | None = None, sha256: str | None = None,
    full: bool | None = None,
) -> str | None:
    """Why the file at ``path`` cannot be trusted, or None when it passes every check.

    Checks its size against ``expected_size`` and its ``.meta.json`` sidecar, its format
    (:func:`check_format`), and its sha256 against ``sha256`` and the sidecar. Hashing a
    large file takes seconds, so by default (``full=None``) the recorded hash is checked
    only when the file was modified after it was recorded; ``full=True`` always hashes.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    meta = read_meta(path)
    stat = path.stat()
    for label, want in (("expected", expected_size), ("recorded", meta.get("size"))):
        if want is not None and stat.st_size != int(want):
            return f"size {stat.st_size} bytes differs from the {label} {int(want)} bytes"
    problem = check_format(path)
    if problem:
        return problem
    wants = [("expected", sha256)] if sha256 else []
    if meta.get("sha256") and (full or meta.get("mtime_ns") != stat.st_mtime_ns):
        wants.append(("recorded", meta["sha256"]))
    if wants and full is not False:
        digest = sha256_file(path)
        for label, want in wants:
            if digest != want.lower():
                return f"sha256 {digest[:12]}... differs from the {label} {want[:12]}..."
    return None


def _write_meta(path: Path, meta: dict) -> None:
    target = meta_path(path)
    tmp = target.with_name(target.name + PART_SUFFIX)
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, target)


def remove_file(path: Path) -> None:
    """Delete a cached file together with its sidecar and partial download."""
    path = Path(path)
    for p in (path, meta_path(path), path.with_name(path.name + PART_SUFFIX)):
        p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- download


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
) -> Path:
    """Fetch ``url`` (``http(s)://`` or ``gs://``) to ``dest``; return ``dest``.

    A valid ``dest`` that is already there is returned without a connection; an invalid
    one is reported, deleted and fetched again. Raises :class:`OfflineError` in offline
    mode and :class:`DownloadError` (with ``.status``) when the server refuses or the
    retries run out; the partial ``<dest>.part`` is kept so the next call resumes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if dest.exists():
            problem = verify_file(dest, expected_size=expected_size, sha256=sha256)
            if problem is None:
                logger.debug("%s is already cached", dest)
                return dest
            logger.warning("cached file %s is corrupt (%s); fetching it again", dest, problem)
            remove_file(dest)
        if is_offline():
            raise OfflineError(offline_message(url), url=url)
        part = dest.with_name(dest.name + PART_SUFFIX)
        fetch = _gcs_fetch if url.startswith("gs://") else _http_fetch
        for restart in (False, True):
            total = _with_retries(fetch, url, part, timeout, retries, backoff, progress, dest.name)
            problem, digest = _check_part(part, total, expected_size, sha256, dest.suffix)
            if problem is None:
                break
            part.unlink(missing_ok=True)
            if restart:
                raise DownloadError(f"download of {url} is corrupt: {problem}", url=url)
            logger.warning("download of %s failed verification (%s); starting over", url, problem)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_meta(dest, {"url": url, "size": part.stat().st_size, "sha256": digest,
                           "downloaded": stamp, "mtime_ns": part.stat().st_mtime_ns})
        os.replace(part, dest)
        logger.info("downloaded %s -> %s", url, dest)
        return dest


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold the lock of ``dest``; say so when another process holds it first."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(dest)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another process is fetching %s; waiting for it", dest.name)
        lock.acquire(timeout=LOCK_TIMEOUT)
    try:
        yield
    finally:
        lock.release()


def _check_part(part, total, expected_size, sha256, suffix) -> tuple[str | None, str]:
    """(why the finished ``part`` is wrong or None, its sha256)."""
    size = part.stat().st_size
    for label, want in (("the server announced", total), ("expected", expected_size)):
        if want is not None and size != want:
            return f"got {size} bytes, {label} {want}", ""
    problem = check_format(part, suffix)
    if problem:
        return problem, ""
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        return f"sha256 {digest[:12]}... differs from the expected {sha256[:12]}...", digest
    return None, digest


def _with_retries(fetch, url, part, timeout, retries, backoff, progress, label) -> int | None:
    for attempt in range(retries + 1):
        try:
            return fetch(url, part, timeout, progress, label)
        except _Retryable as err:
            if attempt == retries:
                raise DownloadError(
                    f"{url}: {err} (gave up after {retries + 1} attempts; run again to resume "
                    f"from the {part.stat().st_size if part.exists() else 0} bytes kept in {part})",
                    url=url,
                ) from None
            delay = backoff * 2**attempt
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, delay, attempt + 1,
                           retries)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _progress_bar(total: int | None, initial: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, disable=not enabled, leave=True, miniters=1)


def _stream_to(part: Path, chunks: Iterator[bytes], mode: str, bar) -> None:
    with open(part, mode) as f:
        for chunk in chunks:
            f.write(chunk)
            bar.update(len(chunk))


def _http_fetch(url: str, part: Path, timeout, progress: bool, label: str) -> int | None:
    """One HTTP attempt; resumes ``part``; returns the total size the server announced."""
    import requests

    start = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.TooManyRedirects as err:
        raise DownloadError(f"{url}: the server redirects in a loop ({_short(err)})",
                            url=url) from None
    except (requests.ConnectionError, requests.Timeout) as err:
        unreachable = unreachable_reason(err, url)
        if unreachable is not None:
            # No network (or no DNS, or nothing listening): retrying only makes the user wait.
            raise DownloadError(
                f"{url}: {unreachable} ({_short(err)}); this machine seems to have no network. "
                "Use a local copy or the cache, or set AUGREG_NB_OFFLINE=1 to skip network "
                "sources.",
                url=url, no_network=unreachable,
            ) from None
        raise _Retryable(f"connection failed ({_short(err)})") from None
    except requests.RequestException as err:  # a malformed URL, a bad proxy setting, ...
        raise DownloadError(f"{url}: {_short(err)}", url=url) from None
    with resp:
        status = resp.status_code
        if status == 416 and start:
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total == start:
                return total
            logger.warning("%s: server refused to resume at byte %d; starting over", url, start)
            part.unlink()
            raise _Retryable("range not satisfiable")
        if status in _RETRY_STATUS:
            raise _Retryable(f"HTTP {status} {resp.reason}")
        if status not in (200, 206):
            body = resp.raw.read(300, decode_content=True).decode("utf-8", "replace").strip()
            text = " ".join(re.sub(r"<\?xml[^>]*>|<[^>]+>", " ", body).split())
            detail = f": {text[:200]}" if text else ""
            raise DownloadError(f"{url}: HTTP {status} {resp.reason}{detail}", url=url,
                                status=status)
        mode = "ab"
        if status == 206:
            first = _content_range_start(resp.headers.get("Content-Range"))
            if first != start:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {first}, not {start}")
            total = _content_range_total(resp.headers.get("Content-Range"))
        else:
            if start:
                logger.info("%s: server ignored the Range request; starting over", url)
                start = 0
            mode = "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with _progress_bar(total, start, label, progress) as bar:
            try:
                _stream_to(part, resp.iter_content(NET_CHUNK), mode, bar)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as err:
                raise _Retryable(f"connection broke ({_short(err)})") from None
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Retryable(f"connection closed after {got} of {total} bytes")
    return total


def unreachable_reason(err: BaseException, url: str) -> str | None:
    """Why ``url``'s host cannot be reached at all (a failed DNS look-up, a refused or
    unreachable connection), from a requests, httpx or socket error; None otherwise."""
    import errno
    import socket

    host = urlsplit(url).hostname or url
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DownloadError) and e.no_network:
            return e.no_network
        if isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError":
            return f"the host name {host} cannot be resolved"
        if isinstance(e, ConnectionRefusedError):
            return f"{host} refused the connection"
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"{host} is unreachable ({os.strerror(e.errno)})"
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return None


def unreachable_host(url: str) -> str | None:
    """Why the host of ``url`` cannot be reached when its name does not resolve, else None.

    Only a name look-up: it opens no connection, so it is quick, and it answers "no
    network" before a client library starts its own retries."""
    import socket

    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as err:
        return f"the host name {host} cannot be resolved ({err.strerror or err})"
    except (OSError, UnicodeError):
        return None
    return None


def _short(err: Exception) -> str:
    text = str(err)
    if "timed out" in text.lower():
        return f"{type(err).__name__}: read timed out"
    return f"{type(err).__name__}: {text[:200]}"


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _content_range_total(value: str | None) -> int | None:
    try:
        tail = value.rsplit("/", 1)[1]  # type: ignore[union-attr]
        return None if tail == "*" else int(tail)
    except (AttributeError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------- gs://


@dataclass
class GcsClient:
    """A reader for ``gs://`` objects: which library, and its size/open functions."""

    library: str
    size: Callable[[str], int]
    open: Callable[[str], BinaryIO]


def gcs_client() -> tuple[GcsClient | None, str]:
    """A client for reading the bucket with the user's Google credentials, or (None, why not).

    Uses gcsfs when installed, else TensorFlow's ``tf.io.gfile``; either needs credentials:
    ``GOOGLE_APPLICATION_CREDENTIALS`` or the application default credentials file
    (``gcloud auth application-default login``; in Colab
    ``google.colab.auth.authenticate_user()`` writes it). Never opens a connection itself.
    """
    import importlib.util

    creds = gcloud_credentials_file()
    if creds is None:
        return None, (
            "no Google credentials found (neither GOOGLE_APPLICATION_CREDENTIALS nor an "
            "application default credentials file); in Colab run "
            "`from google.colab import auth; auth.authenticate_user()`, elsewhere "
            "`gcloud auth application-default login`"
        )
    if importlib.util.find_spec("gcsfs") is not None:
        import gcsfs

        fs = gcsfs.GCSFileSystem(token="google_default")
        return GcsClient("gcsfs", lambda p: int(fs.info(p)["size"]), lambda p: fs.open(p, "rb")), ""
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        return GcsClient(
            "tf.io.gfile", lambda p: int(tf.io.gfile.stat(p).length),
            lambda p: tf.io.gfile.GFile(p, "rb"),
        ), ""
    return None, "neither gcsfs nor TensorFlow is installed (pip install gcsfs)"


def gcloud_credentials_file() -> Path | None:
    """The Google credentials file the client libraries would use, or None."""
    env = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if env:
        return Path(env) if Path(env).is_file() else None
    config = os.environ.get("CLOUDSDK_CONFIG")
    if config:
        folder = Path(config)
    elif os.name == "nt":
        folder = Path(os.environ.get("APPDATA", "")) / "gcloud"
    else:
        folder = Path.home() / ".config" / "gcloud"
    path = folder / "application_default_credentials.json"
    return path if path.is_file() else None


def _gcs_fetch(url: str, part: Path, timeout, progress: bool, label: str) -> int | None:
    client, why = gcs_client()
    if client is None:
        raise DownloadError(f"{url}: {why}", url=url)
    try:
        total = client.size(url)
        start = part.stat().st_size if part.exists() else 0
        if start > total:
            part.unlink()
            start = 0
        with client.open(url) as src, _progress_bar(total, start, label, progress) as bar:
            src.seek(start)
            _stream_to(part, iter(lambda: src.read(CHUNK), b""), "ab", bar)
    except FileNotFoundError as err:
        raise DownloadError(f"{url}: not found ({err})", url=url, status=404) from None
    except PermissionError as err:
        raise DownloadError(f"{url}: permission denied ({err})", url=url, status=403) from None
    except OSError as err:
        text = str(err)
        for code in (401, 403, 404):
            if str(code) in text:
                raise DownloadError(f"{url}: {text}", url=url, status=code) from None
        raise _Retryable(f"{client.library}: {text}") from None
    return total


# --------------------------------------------------------------------------- cache listing


@dataclass(frozen=True)
class CacheEntry:
    """One file in the cache."""

    path: Path
    kind: str  # "checkpoints", "index", ...
    size: int
    partial: bool  # an interrupted download (``.part``) that the next fetch resumes


def list_cache(root: Path | None = None) -> list[CacheEntry]:
    """Every cached file and partial download (sidecars and locks left out)."""
    root = cache_dir() if root is None else Path(root)
    out = []
    if not root.is_dir():
        return out
    skip = (META_SUFFIX, LOCK_SUFFIX, META_SUFFIX + PART_SUFFIX)
    for path in sorted(root.rglob("*")):
        name = path.name
        if not path.is_file() or name.endswith(skip) or ".locks" in path.parts:
            continue
        kind = path.relative_to(root).parts[0] if path.parent != root else ""
        out.append(CacheEntry(path, kind, path.stat().st_size, name.endswith(PART_SUFFIX)))
    return out


def clear_cache(root: Path | None = None) -> int:
    """Delete the whole cache folder; return the number of bytes freed."""
    root = cache_dir() if root is None else Path(root)
    freed = sum(e.size for e in list_cache(root))
    if root.is_dir():
        shutil.rmtree(root)
    return freed


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
