"""Failure paths of the data layer: nothing of the user's is lost, nothing wrong is kept.

Each test drives one class of failure end to end against the loopback bucket and Hub:
the cache's own files versus the user's, explicit index sources, resumes of an object that
changed, truncated index downloads, full disks and file-size limits, redirect loops, the
index command's output, and names too long for a file system.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from augreg_nb import download as dl
from augreg_nb import index, sources
from augreg_nb.cli import main as cli_main
from augreg_nb.testing.synthetic_index import make_synthetic_index, write_synthetic_index
from tests.conftest import REPO, run_python
from tests.test_download import NAME, write_partial_ti16_npz
from tests.test_sources import (  # noqa: F401 - fixtures
    B16_UP,
    FT_NAME,
    FT_REPO,
    _fake_timm_file,
    bucket,
    hub,
    isolated,
)


def _gets(server, path):
    return [r for r in server.requests if r.method == "GET" and r.path == path]


# --------------------------------------------------------------------------- 1. cache ownership


def test_cache_clear_remove_and_listing_touch_only_downloaded_files(bucket, hub, capsys):  # noqa: F811
    root = dl.cache_dir()
    write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    assert cli_main(["fetch", NAME, "-q"]) == 0
    # The cache folder is shared with the user's own files, some in the cache's folders.
    own = {
        root / "notes.txt": b"mine",
        root / "photos" / "a.jpg": b"\xff\xd8 not really",
        root / "checkpoints" / f"{B16_UP}.npz": b"my own copy, no sidecar",
        root / "checkpoints" / "x.npz.part": b"my partial file",
        root / "index" / "index-mine.csv": b"a,b\n1,2\n",
    }
    for path, data in own.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    capsys.readouterr()
    assert cli_main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert f"checkpoints/{NAME}.npz" in listing and "1 file," in listing
    assert not any(p.name in listing for p in own)
    assert cli_main(["cache", "--remove", B16_UP]) == 1
    assert "not downloaded by augreg-nb" in capsys.readouterr().err
    assert cli_main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 downloaded file" in out and "left alone" in out
    assert not (root / "checkpoints" / f"{NAME}.npz").exists()
    assert not list(root.rglob("*.meta.json")) and not list(root.rglob("*.lock"))
    assert {p: p.read_bytes() for p in own} == own


def test_cache_clear_removes_the_folder_when_only_downloads_were_in_it(bucket, hub):  # noqa: F811
    write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    assert cli_main(["fetch", NAME, "-q"]) == 0
    assert cli_main(["cache", "--clear"]) == 0
    assert not dl.cache_dir().exists()


# --------------------------------------------------------------------------- 2. explicit index


@pytest.fixture
def small_index(tmp_path):
    return write_synthetic_index(tmp_path / "small.csv", df=make_synthetic_index(0).iloc[:340])


def test_an_explicit_index_source_that_fails_is_an_error(bucket, small_index, monkeypatch,  # noqa: F811
                                                         capsys):
    # A valid table in the cache, which the old code showed instead of the failed source.
    (bucket.root / "index.csv").write_bytes(small_index.read_bytes())
    assert index.load_index().attrs["provenance"]["kind"] == "bucket-https"
    assert sources.index_cache_path().is_file()
    (bucket.root / "garbage.csv").write_bytes(b"<html>oops</html>\n")
    for url in (f"{bucket.url}/missing.csv", f"{bucket.url}/garbage.csv"):
        with pytest.raises(sources.SourceError, match="given explicitly"):
            index.load_index(url)
        assert cli_main(["index", "--source", url]) == 1
        err = capsys.readouterr().err
        assert url in err and "complete published table" not in err
        monkeypatch.setenv("AUGREG_NB_INDEX", url)
        with pytest.raises(sources.SourceError, match="given explicitly"):
            index.load_index()
        monkeypatch.delenv("AUGREG_NB_INDEX")
    # An explicit source that works is named in the provenance.
    (bucket.root / "good.csv").write_bytes(small_index.read_bytes())
    df = index.load_index(f"{bucket.url}/good.csv")
    assert df.attrs["provenance"]["source"].startswith(f"{bucket.url}/good.csv")
    # Offline, the copy fetched from that very URL is used without a connection.
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    asked = len(bucket.requests)
    assert len(index.load_index(f"{bucket.url}/good.csv")) == 340
    assert len(bucket.requests) == asked


# --------------------------------------------------------------------------- 3. resumes


def _leave_partial(bucket, name, size):  # noqa: F811
    bucket.set(name, cut_after=size, times=1, chunk=10_000)
    with pytest.raises(dl.DownloadError):
        dl.download(f"{bucket.url}/{name}", dl.cache_dir() / "checkpoints" / name,
                    progress=False, retries=0)
    bucket.reset()
    part = dl.cache_dir() / "checkpoints" / f"{name}.part"
    assert part.stat().st_size > 0
    return part


@pytest.mark.parametrize("server", ["honours If-Range", "ignores If-Range"])
def test_resume_of_an_object_that_changed_starts_over(bucket, server):  # noqa: F811
    name = f"{NAME}.npz"
    write_partial_ti16_npz(bucket.root / name, seed=1)
    _leave_partial(bucket, name, 200_000)
    new = write_partial_ti16_npz(bucket.root / name, seed=2)  # same size, other bytes
    if server == "ignores If-Range":
        bucket.set(name, ignore_if_range=True)
    path = dl.download(f"{bucket.url}/{name}", dl.cache_dir() / "checkpoints" / name,
                       progress=False, backoff=0.01)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(new).hexdigest()
    assert "If-Range" in _gets(bucket, f"/{name}")[0].headers


def test_the_server_hash_catches_a_spliced_file(bucket, monkeypatch):  # noqa: F811
    """Even when the server confirms the old version (a wrong If-Range answer, a stale
    ETag), the finished file must match the hash the server announced."""
    name = f"{NAME}.npz"
    old = write_partial_ti16_npz(bucket.root / name, seed=1)
    part = _leave_partial(bucket, name, 200_000)
    # Pretend the first bytes came from another version with the same ETag.
    kept = part.read_bytes()
    part.write_bytes(bytes(b ^ 0x55 for b in kept[:1000]) + kept[1000:])
    path = dl.download(f"{bucket.url}/{name}", dl.cache_dir() / "checkpoints" / name,
                       progress=False, backoff=0.01)
    assert path.read_bytes() == old  # the spliced file was refused, then fetched whole
    assert len(_gets(bucket, f"/{name}")) == 2


def test_a_part_file_that_is_a_link_is_never_followed(bucket, tmp_path):  # noqa: F811
    name = f"{NAME}.npz"
    data = write_partial_ti16_npz(bucket.root / name)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    part = dl.cache_dir() / "checkpoints" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.symlink_to(victim)
    path = dl.download(f"{bucket.url}/{name}", dl.cache_dir() / "checkpoints" / name,
                       progress=False)
    assert path.read_bytes() == data and victim.read_bytes() == b"precious"


# --------------------------------------------------------------------------- 4. truncated index


def test_a_truncated_index_is_never_kept_or_reused(bucket, small_index):  # noqa: F811
    full = small_index.read_bytes()
    cut = full[: len(full) // 2]
    cut = cut[: cut.rindex(b"\n") + 1] + cut[cut.rindex(b"\n") + 1:][:40]  # a row cut short
    (bucket.root / "index.csv").write_bytes(cut)
    with pytest.raises(sources.SourceError, match="fails the index validation"):
        sources.resolve_index(progress=False)
    assert not sources.index_cache_path().exists()
    # A truncated copy that an older version cached (with a matching sidecar) ...
    dl.download(f"{bucket.url}/index.csv", sources.index_cache_path(), progress=False)
    assert sources.index_cache_path().read_bytes() == cut
    # ... is not shown, even leniently, once the server is fixed: it is fetched again.
    (bucket.root / "index.csv").write_bytes(full)
    df = index.load_index(strict=False)
    assert len(df) == 340 and df.attrs["provenance"]["kind"] == "bucket-https"
    assert sources.index_cache_path().read_bytes() == full


# --------------------------------------------------------------------------- 5. other failures


def test_redirect_loop_is_a_reason_and_the_chain_goes_on(bucket, hub, tmp_path):  # noqa: F811
    bucket.set(f"{FT_NAME}.npz", redirect=f"/{FT_NAME}.npz")
    hub.add_file(FT_REPO, "model.safetensors", _fake_timm_file(tmp_path))
    r = sources.resolve_checkpoint(FT_NAME, progress=False)
    assert r.source == "hf-mirror"
    by_source = {a.source: a.reason for a in r.attempts}
    assert "redirects in a loop" in by_source["bucket-https"]


def test_an_unforeseen_failure_of_a_source_is_its_reason(bucket, hub, tmp_path,  # noqa: F811
                                                          monkeypatch):
    hub.add_file(FT_REPO, "model.safetensors", _fake_timm_file(tmp_path))

    def broken(url, dest, **kwargs):
        raise KeyError("something nobody planned for")

    monkeypatch.setattr(dl, "download", broken)
    r = sources.resolve_checkpoint(FT_NAME, progress=False)
    assert r.source == "hf-mirror"
    assert "KeyError" in {a.source: a.reason for a in r.attempts}["bucket-https"]


def test_full_disk_is_a_reason_and_leaves_no_partial_file(bucket, hub, tmp_path,  # noqa: F811
                                                          monkeypatch):
    import errno

    write_partial_ti16_npz(bucket.root / f"{FT_NAME}.npz")
    hub.add_file(FT_REPO, "model.safetensors", _fake_timm_file(tmp_path))

    class FullDisk:
        def __init__(self, path, mode):
            self.f = open(path, mode)  # noqa: SIM115 - closed in __exit__

        def write(self, chunk):
            self.f.write(chunk[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            self.f.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(dl, "_open_part", FullDisk)
    r = sources.resolve_checkpoint(FT_NAME, progress=False)
    assert r.source == "hf-mirror"
    reason = {a.source: a.reason for a in r.attempts}["bucket-https"]
    assert "the disk is full" in reason and "removed" in reason
    assert not list(dl.cache_dir().rglob("*.part"))


def test_file_size_limit_is_a_reason(bucket, hub, tmp_path):  # noqa: F811
    write_partial_ti16_npz(bucket.root / f"{NAME}.npz")  # ~2.5 MB, over the limit below
    out = run_python(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        from augreg_nb import sources
        try:
            sources.resolve_checkpoint({NAME!r}, progress=False)
        except sources.SourceError as err:
            print(err)
        """, env={"AUGREG_NB_CACHE": str(tmp_path / "child-cache"),
                  "HF_HOME": str(tmp_path / "child-hf")})
    assert "file-size limit" in out and "Traceback" not in out
    assert not list((tmp_path / "child-cache").rglob("*.part"))


# --------------------------------------------------------------------------- 8. index command


def test_index_where_without_filters(capsys, monkeypatch):
    monkeypatch.delenv("AUGREG_NB_INDEX", raising=False)
    assert cli_main(["index", "--source", "catalogue", "--where"]) == 0
    out = capsys.readouterr().out
    assert "recommended checkpoints" in out and "hf_repo" in out


def test_index_into_a_closed_pipe_ends_quietly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "AUGREG_NB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "augreg_nb", "index", "--source", "catalogue", "--csv"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


# --------------------------------------------------------------------------- 9. long names


def test_names_longer_than_a_file_name_are_invalid_names(bucket, hub, capsys):  # noqa: F811
    from augreg_nb.checkpoint import load_pretrained

    long = NAME + "-x" * 150
    with pytest.raises(ValueError, match="at most .* bytes"):
        sources.resolve_checkpoint(long, progress=False)
    with pytest.raises(ValueError, match="at most .* bytes"):
        load_pretrained(long)
    for argv in (["fetch", long], ["cache", "--remove", long], ["predict", long, "x.jpg"]):
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert "at most" in err and "File name too long" not in err
