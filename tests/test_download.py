"""Downloads against a loopback fake of the bucket: resume, verification, retries, locks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pytest_socket import disable_socket, enable_socket

from augreg_nb import download as dl
from augreg_nb.loopback import FakeBucket
from augreg_nb.resources import data_path

REPO = Path(__file__).resolve().parents[1]
NAME = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"


def write_partial_ti16_npz(path: Path, seed: int = 0) -> bytes:
    """An .npz with the published Ti/16 names and shapes (embedding, first block, norms;
    blocks 1-11 and the 21843-class head left out to keep it ~2.5 MB). Returns its bytes."""
    layout = json.loads(data_path("npz_layout", "Ti_16.json").read_text())["keys"]
    rng = np.random.default_rng(seed)
    arrays = {
        k: rng.normal(size=shape).astype(np.float32)
        for k, shape in layout.items()
        if not k.startswith("head/")
        and ("encoderblock_" not in k or "encoderblock_0/" in k)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AUGREG_NB_CACHE", str(root))
    monkeypatch.delenv("AUGREG_NB_OFFLINE", raising=False)
    return root


@pytest.fixture
def bucket(tmp_path):
    folder = tmp_path / "bucket"
    data = write_partial_ti16_npz(folder / f"{NAME}.npz")
    with FakeBucket(folder) as server:
        server.data = data
        yield server


def _get(bucket, url_name=f"{NAME}.npz", **kwargs) -> Path:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("backoff", 0.01)
    return dl.download(f"{bucket.url}/{url_name}", dl.cache_dir() / "checkpoints" / url_name,
                       **kwargs)


def _gets(bucket) -> list:
    return [r for r in bucket.requests if r.method == "GET"]


@contextlib.contextmanager
def no_sockets():
    """Any attempt to create a network socket raises SocketBlockedError."""
    disable_socket(allow_unix_socket=True)
    try:
        yield
    finally:
        enable_socket()


def test_cache_dir_from_env_else_platform_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "c"))
    assert dl.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AUGREG_NB_CACHE")
    import platformdirs

    assert dl.cache_dir() == Path(platformdirs.user_cache_dir("augreg_nb", appauthor=False))


def test_download_writes_verified_file_and_readable_sidecar(cache, bucket):
    path = _get(bucket)
    assert path == cache / "checkpoints" / f"{NAME}.npz"
    assert path.read_bytes() == bucket.data
    meta = json.loads((path.parent / f"{NAME}.npz.meta.json").read_text())
    assert meta["sha256"] == hashlib.sha256(bucket.data).hexdigest()
    assert meta["size"] == len(bucket.data) and meta["url"].endswith(f"/{NAME}.npz")
    assert not list(path.parent.glob("*.part"))
    # A second call finds the verified file and opens no connection.
    _get(bucket)
    assert len(_gets(bucket)) == 1
    from filelock import FileLock  # the lock was released: a fresh holder gets it at once

    with FileLock(str(dl.lock_path(path)), timeout=0):
        pass
    assert [e.path.name for e in dl.list_cache()] == [f"{NAME}.npz"]


def test_resume_after_truncation_gives_identical_bytes(cache, bucket):
    bucket.set(f"{NAME}.npz", cut_after=300_000, times=1)
    path = _get(bucket, retries=2)
    assert path.read_bytes() == bucket.data
    first, second = _gets(bucket)
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 300_000  # resumed, not restarted


def _leave_partial(cache, bucket, size: int) -> Path:
    """The .part (and its sidecar) that a download killed after ``size`` bytes leaves."""
    bucket.set(f"{NAME}.npz", cut_after=size, times=1, chunk=10_000)
    with pytest.raises(dl.DownloadError):
        _get(bucket, retries=0)
    part = cache / "checkpoints" / f"{NAME}.npz.part"
    assert 0 < part.stat().st_size <= size and dl.meta_path(part).is_file()
    bucket.reset()
    return part


def test_resume_from_partial_left_by_an_earlier_run(cache, bucket):
    part = _leave_partial(cache, bucket, 123_457)
    kept = part.stat().st_size
    path = _get(bucket)
    assert path.read_bytes() == bucket.data
    (only,) = _gets(bucket)
    assert only.headers["Range"] == f"bytes={kept}-"
    assert only.headers["If-Range"] == f'"{hashlib.md5(bucket.data).hexdigest()}"'
    assert not part.exists() and not dl.meta_path(part).exists()


def test_partial_of_unknown_origin_is_not_resumed(cache, bucket):
    part = cache / "checkpoints" / f"{NAME}.npz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 50_000)  # no sidecar: nothing says which version these bytes are
    assert _get(bucket).read_bytes() == bucket.data
    assert "Range" not in _gets(bucket)[0].headers


def test_server_that_ignores_range_makes_it_start_over(cache, bucket):
    part = _leave_partial(cache, bucket, 100_000)
    part.write_bytes(b"x" * part.stat().st_size)  # would corrupt the file if appended to
    bucket.set(f"{NAME}.npz", ignore_range=True)
    assert _get(bucket).read_bytes() == bucket.data
    assert _gets(bucket)[0].headers["Range"].startswith("bytes=")


@pytest.mark.parametrize("damage", ["flip", "truncate", "not-a-zip"])
def test_corrupt_cached_file_is_reported_and_fetched_again(cache, bucket, caplog, damage):
    path = _get(bucket)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF  # same size: only the recorded sha256 can tell
        expected = "sha256"
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
        expected = "size"
    else:  # a file copied in by hand, without a sidecar
        dl.meta_path(path).unlink()
        raw = b"<html>not a checkpoint</html>"
        expected = "not a valid .npz"
    path.write_bytes(bytes(raw))
    assert expected in dl.verify_file(path)
    with caplog.at_level(logging.WARNING, logger="augreg_nb.download"):
        assert _get(bucket).read_bytes() == bucket.data
    assert "corrupt" in caplog.text and expected in caplog.text
    assert len(_gets(bucket)) == 2


def test_wrong_checksum_is_refused_and_nothing_is_cached(cache, bucket):
    with pytest.raises(dl.DownloadError, match="sha256"):
        _get(bucket, sha256="0" * 64)
    assert len(_gets(bucket)) == 2  # started over once, then gave up
    assert not (cache / "checkpoints" / f"{NAME}.npz").exists()
    assert not list((cache / "checkpoints").glob("*.part"))


def test_non_npz_body_is_refused(cache, bucket, tmp_path):
    (bucket.root / "bad.npz").write_bytes(b"<html>sign in</html>")
    with pytest.raises(dl.DownloadError, match="not a valid .npz"):
        _get(bucket, "bad.npz")
    assert not (cache / "checkpoints" / "bad.npz").exists()


def test_retries_on_500_then_succeeds(cache, bucket):
    bucket.set(f"{NAME}.npz", status=500, times=2)
    assert _get(bucket, retries=3).read_bytes() == bucket.data
    assert len(_gets(bucket)) == 3


def test_retries_are_bounded(cache, bucket):
    bucket.set(f"{NAME}.npz", status=503)
    with pytest.raises(dl.DownloadError, match="gave up after 3 attempts"):
        _get(bucket, retries=2)
    assert len(_gets(bucket)) == 3


@pytest.mark.parametrize("status", [403, 404])
def test_no_retry_on_403_or_404(cache, bucket, status):
    bucket.set(f"{NAME}.npz", status=status)
    with pytest.raises(dl.DownloadError) as info:
        _get(bucket, retries=3)
    assert info.value.status == status and str(status) in str(info.value)
    assert len(_gets(bucket)) == 1
    assert not list((cache / "checkpoints").glob(f"{NAME}*"))


def test_slow_body_hits_the_read_timeout_cleanly(cache, bucket):
    bucket.set(f"{NAME}.npz", delay=5.0, chunk=4096)
    t0 = time.monotonic()
    with pytest.raises(dl.DownloadError, match="timed out"):
        _get(bucket, timeout=(2.0, 0.3), retries=1)
    assert time.monotonic() - t0 < 4
    assert len(_gets(bucket)) == 2
    assert not (cache / "checkpoints" / f"{NAME}.npz").exists()


def test_offline_mode_opens_no_connection(cache, bucket, monkeypatch):
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with no_sockets(), pytest.raises(dl.OfflineError, match="AUGREG_NB_OFFLINE=1"):
        _get(bucket)
    assert bucket.requests == []
    # A verified cached file is still served offline.
    monkeypatch.delenv("AUGREG_NB_OFFLINE")
    _get(bucket)
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with no_sockets():
        assert _get(bucket).read_bytes() == bucket.data
    assert len(bucket.requests) == 1


def test_concurrent_processes_end_with_one_correct_file(cache, bucket):
    bucket.set(f"{NAME}.npz", delay=0.02)  # ~40 chunks: the two runs overlap
    url = f"{bucket.url}/{NAME}.npz"
    dest = cache / "checkpoints" / f"{NAME}.npz"
    code = ("import sys; from augreg_nb.download import download; "
            "print(download(sys.argv[1], sys.argv[2], progress=False))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(dest)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(out.strip() == str(dest) for out, _ in outs)
    assert dest.read_bytes() == bucket.data
    assert len(_gets(bucket)) == 1  # the second process waited and found the file
    assert {p.name for p in dest.parent.iterdir()} == {
        f"{NAME}.npz", f"{NAME}.npz.meta.json", ".locks"}


def test_cache_listing_and_clearing(cache, bucket):
    _get(bucket)
    other = f"{NAME.replace('wd_0.03', 'wd_0.1')}.npz"
    (bucket.root / other).write_bytes(bucket.data)
    bucket.set(other, cut_after=4096, times=1)
    with pytest.raises(dl.DownloadError):
        _get(bucket, url_name=other, retries=0)
    entries = {e.path.name: e for e in dl.list_cache()}
    assert set(entries) == {f"{NAME}.npz", f"{other}.part"}
    assert entries[f"{NAME}.npz"].size == len(bucket.data)
    assert entries[f"{other}.part"].partial and entries[f"{NAME}.npz"].kind == "checkpoints"
    assert dl.clear_cache() == len(bucket.data) + entries[f"{other}.part"].size
    assert not cache.exists() and dl.list_cache() == []


def test_unresolvable_host_fails_at_once_with_the_offline_hint(cache, monkeypatch):
    """No network: one attempt, no back-off, and the message says how to work offline."""
    import socket

    import requests
    from urllib3.exceptions import MaxRetryError, NameResolutionError

    calls = []

    def no_dns(url, **kwargs):
        calls.append(url)
        reason = NameResolutionError("storage.example", None, socket.gaierror(-3, "no DNS"))
        raise requests.ConnectionError(MaxRetryError(None, url, reason))

    monkeypatch.setattr(requests, "get", no_dns)
    start = time.monotonic()
    with pytest.raises(dl.DownloadError, match="AUGREG_NB_OFFLINE=1"):
        dl.download("https://storage.example/x.npz", cache / "x.npz", progress=False)
    assert len(calls) == 1 and time.monotonic() - start < 1
