"""The source chain reports each source as it is tried, and fails fast without a network."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from augreg_nb import sources
from tests.test_download import NAME, write_partial_ti16_npz
from tests.test_sources import FT_NAME, FT_REPO, _fake_timm_file, bucket, hub, isolated  # noqa: F401

TIMM_ONLY = "vit_base_patch16_224.augreg2_in21k_ft_in1k"  # timm's own run: Hub only


def _closed_port_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_on_attempt_reports_each_source_in_order(bucket, hub, tmp_path):  # noqa: F811
    bucket.set(f"{FT_NAME}.npz", status=403)
    hub.add_file(FT_REPO, "model.safetensors", _fake_timm_file(tmp_path))
    calls = []
    r = sources.resolve_checkpoint(FT_NAME, progress=False,
                                   on_attempt=lambda k, n, d: calls.append((k, n, d)))
    assert r.source == "hf-mirror"
    assert [(k, n) for k, n, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    descriptions = [d for _, _, d in calls]
    assert descriptions == ["download cache", "public bucket URL",
                            "bucket with Google credentials",
                            f"Hugging Face Hub mirror {FT_REPO}"]


def test_on_attempt_stops_at_the_source_that_works_and_counts_folders(bucket, hub, tmp_path):  # noqa: F811
    folder = tmp_path / "drive"
    folder.mkdir()
    write_partial_ti16_npz(folder / f"{NAME}.npz")
    calls = []
    r = sources.resolve_checkpoint(NAME, folder=folder, progress=False,
                                   on_attempt=lambda *a: calls.append(a))
    assert r.source == "local"
    # folder, cache, bucket (https), bucket (gcs), Hub mirror: the first one works.
    assert calls == [(1, 5, f"folder {folder}")]
    calls.clear()
    with pytest.raises(sources.SourceError):  # not mirrored: no Hub step is counted
        sources.resolve_checkpoint(NAME.replace("wd_0.03", "wd_0.1"), folder=folder,
                                   progress=False, on_attempt=lambda *a: calls.append(a))
    assert [(k, n) for k, n, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_on_attempt_for_the_index(bucket):  # noqa: F811
    calls = []
    with pytest.raises(sources.SourceError):
        sources.resolve_index(progress=False, on_attempt=lambda *a: calls.append(a))
    assert calls == [(1, 3, "download cache"), (2, 3, "public bucket URL"),
                     (3, 3, "bucket with Google credentials")]


def test_no_network_fails_fast_with_one_clear_message(monkeypatch, caplog, capfd):
    """Unresolvable bucket and Hub hosts: the first failed look-up ends the network part of
    the chain (no connection attempt to a non-loopback address: pytest-socket would refuse
    it), with no retries and no retry chatter from the Hub client."""
    monkeypatch.setenv("AUGREG_NB_BUCKET_URL", "http://nonexistent.invalid/augreg")
    monkeypatch.setenv("HF_ENDPOINT", "http://nonexistent.invalid")
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    with pytest.raises(sources.SourceError) as info:
        sources.resolve_checkpoint(FT_NAME, progress=False)
    assert time.monotonic() - start < 5
    by_source = {a.source: a.reason for a in info.value.attempts}
    assert "cannot be resolved" in by_source["bucket-https"]
    assert by_source["hf-mirror"].startswith("skipped: no network")
    assert "seems to have no network" in str(info.value)
    assert "Retrying" not in caplog.text and "Retrying" not in "".join(capfd.readouterr())


def test_timm_name_without_network_fails_fast(monkeypatch, caplog, capfd):
    monkeypatch.setenv("HF_ENDPOINT", "http://nonexistent.invalid")
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    with pytest.raises(sources.SourceError, match="no network"):
        sources.resolve_checkpoint(TIMM_ONLY, progress=False)
    assert time.monotonic() - start < 5
    assert "Retrying" not in caplog.text and "Retrying" not in "".join(capfd.readouterr())


def test_refused_connections_are_no_network_too(monkeypatch, caplog, capfd):
    monkeypatch.setenv("AUGREG_NB_BUCKET_URL", _closed_port_url())
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    with pytest.raises(sources.SourceError) as info:
        sources.resolve_checkpoint(FT_NAME, progress=False)
    assert time.monotonic() - start < 5
    by_source = {a.source: a.reason for a in info.value.attempts}
    assert "refused the connection" in by_source["bucket-https"]
    assert by_source["hf-mirror"].startswith("skipped: no network")
    # The Hub alone (a timm-only name) refused: one request, no retry loop.
    with pytest.raises(sources.SourceError, match="refused the connection"):
        sources.resolve_checkpoint(TIMM_ONLY, progress=False)
    assert time.monotonic() - start < 10
    assert "Retrying" not in caplog.text and "Retrying" not in "".join(capfd.readouterr())


def test_load_pretrained_passes_on_attempt_through(tmp_path):
    from augreg_nb.checkpoint import load_pretrained
    from augreg_nb.testing.checkpoints import write_fake_checkpoint

    path = write_fake_checkpoint(tmp_path / "mine.npz", "testing", num_classes=3,
                                 resolution=32)
    calls = []
    name, params = load_pretrained(path, model_name="testing",
                                   on_attempt=lambda *a: calls.append(a))
    assert name == "testing" and calls == [(1, 1, f"given file {path}")]


def test_index_without_network_fails_fast_and_falls_back(monkeypatch):
    from augreg_nb import index

    monkeypatch.setenv("AUGREG_NB_BUCKET_URL", "http://nonexistent.invalid/augreg")
    start = time.monotonic()
    with pytest.raises(sources.SourceError) as info:
        sources.resolve_index(progress=False)
    by_source = {a.source: a.reason for a in info.value.attempts}
    assert "cannot be resolved" in by_source["bucket-https"]
    assert by_source["bucket-gcs"].startswith("skipped: no network")
    df = index.load_index()
    assert df.attrs["provenance"]["kind"] == "catalogue"
    assert time.monotonic() - start < 5


def test_the_failure_message_numbers_the_sources_as_the_progress_counted_them(bucket):  # noqa: F811
    """Progress says "source k of n" for the sources a request can use; the error lists the
    others too, unnumbered, so "4 of 4" is never followed by a list of five."""
    calls = []
    missing = NAME.replace("wd_0.03", "wd_0.1")  # not mirrored, not in the bucket
    with pytest.raises(sources.SourceError) as info:
        sources.resolve_checkpoint(missing, progress=False,
                                   on_attempt=lambda *a: calls.append(a))
    n = calls[-1][1]
    text = str(info.value)
    numbered = [line for line in text.splitlines() if line[:5].strip().rstrip(".").isdigit()]
    assert len(numbered) == n == len(calls)
    assert "(not tried)" in text and "not one of the" in text
    # A well-formed name that another bucket (smoke mode's) lacks is no spelling problem.
    assert "check the spelling" not in text and "does not serve this name" in text


def test_error_summary_cuts_after_a_sentence_and_drops_request_ids():
    class RepositoryNotFoundError(Exception):
        pass

    err = RepositoryNotFoundError(
        "401 Client Error. (Request ID: Root=1-69a8c1f2-5a1b2c3d4e5f)\n\nRepository Not Found "
        "for url: https://huggingface.co/api/models/timm/vit_tiny_patch16_384.augreg_in21k_"
        "ft_in1k/revision/main.\nPlease make sure you specified the correct `repo_id` and "
        "`repo_type`.\nIf you are trying to access a private or gated repo, make sure you "
        "are authenticated. For more details, see https://huggingface.co/docs/huggingface_hub/"
        "authentication\nInvalid username or password.")
    text = sources.error_summary(err)
    assert text.startswith("RepositoryNotFoundError: 401 Client Error. Repository Not Found")
    assert "Request ID" not in text and "\n" not in text
    assert text.endswith(" ...") and len(text) <= len("RepositoryNotFoundError: ") + 305
    assert not text.removesuffix(" ...").endswith("authenti")
    assert text.removesuffix(" ...").endswith(".")
    short = sources.error_summary(OSError("disk full"))
    assert short == "OSError: disk full"
