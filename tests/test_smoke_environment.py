"""Smoke mode's fake sources are owned by one object that undoes everything it did."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import jax
import pytest

from augreg_nb import notebook


def test_leaving_smoke_mode_stops_the_servers_and_restores_the_environment(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("AUGREG_NB_INDEX", "/somewhere/index.csv")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    jax.devices()  # JAX sets variables of its own when it starts: not smoke mode's
    before = dict(os.environ)
    with notebook.setup_smoke(tmp_path) as env:
        assert os.environ["AUGREG_NB_BUCKET_URL"] == env.bucket.url
        assert os.environ["HF_ENDPOINT"] == env.hub.url
        assert "AUGREG_NB_INDEX" not in os.environ
        url = f"{env.bucket.url}/{env.checkpoints[0]}.npz"
        with urllib.request.urlopen(url) as r:
            assert r.read(2) == b"PK"  # a real .npz (zip) in the published layout
        assert notebook.setup_smoke() is env  # one smoke set-up at a time
    assert dict(os.environ) == before
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    assert (tmp_path / "bucket").is_dir()  # a folder it did not make is left in place
