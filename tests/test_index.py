"""Loading the index table: source order, provenance, validation, the CLI."""

from __future__ import annotations

import functools
import http.server
import threading
import types

import numpy as np
import pandas as pd
import pytest

import augreg_nb
from augreg_nb import cli, index, sources
from augreg_nb.testing.synthetic_index import make_synthetic_index, write_synthetic_index


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_index(seed=0)


@pytest.fixture(scope="module")
def full_csv(synthetic, tmp_path_factory):
    return write_synthetic_index(tmp_path_factory.mktemp("full") / "index.csv", df=synthetic)


@pytest.fixture(scope="module")
def small_csv(synthetic, tmp_path_factory):
    """The first 340 rows (5 upstream checkpoints x 68): a valid but partial table."""
    return write_synthetic_index(
        tmp_path_factory.mktemp("small") / "index.csv", df=synthetic.iloc[:340]
    )


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("AUGREG_NB_INDEX", raising=False)
    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    return monkeypatch


class FakeSourceError(RuntimeError):
    def __init__(self, message, attempts):
        super().__init__(message)
        self.attempts = attempts


def _fake_sources(monkeypatch, *, cache_path, resolve):
    """The index's view of the download layer: a cache path and a resolver, both faked."""
    monkeypatch.setattr(sources, "SourceError", FakeSourceError)
    monkeypatch.setattr(sources, "index_cache_path", lambda: cache_path)
    monkeypatch.setattr(sources, "resolve_index", resolve)
    return sources


# --------------------------------------------------------------------------- sources


def test_full_table_from_an_explicit_path_is_complete_and_typed(full_csv, synthetic):
    df = index.load_index(full_csv)
    assert list(df.columns) == list(index.COLUMNS) and len(df) == 51_509
    prov = df.attrs["provenance"]
    assert prov["kind"] == "explicit" and prov["complete"] is True and prov["upstream"] == 759
    assert str(full_csv) in prov["source"]
    assert isinstance(df["name"].dtype, pd.CategoricalDtype)
    assert list(df["name"].cat.categories) == list(augreg_nb.names.MODELS)
    assert df["adapt_steps"].dtype == np.int32 and df["adapt_resolution"].dtype == np.int16
    np.testing.assert_array_equal(df["adapt_final_val"], synthetic["adapt_final_val"])
    assert "complete published table" in index.describe_provenance(df)


def test_folder_and_env_var(small_csv, clean_env):
    df = index.load_index(small_csv.parent)
    assert len(df) == 340 and df.attrs["provenance"]["complete"] is False
    clean_env.setenv("AUGREG_NB_INDEX", str(small_csv))
    df = index.load_index()
    assert df.attrs["provenance"]["kind"] == "env"
    assert "incomplete" in index.describe_provenance(df)


def test_named_source_that_is_missing_raises_with_the_fix(tmp_path, clean_env):
    with pytest.raises(FileNotFoundError, match="'catalogue' for the shipped"):
        index.load_index(tmp_path / "nope.csv")
    clean_env.setenv("AUGREG_NB_INDEX", str(tmp_path / "nope.csv"))
    with pytest.raises(FileNotFoundError, match="AUGREG_NB_INDEX"):
        index.load_index()


def test_cache_comes_before_the_bucket(small_csv, clean_env):
    def resolve(location=None):
        raise AssertionError("the bucket must not be asked when a cached copy exists")

    _fake_sources(clean_env, cache_path=small_csv, resolve=resolve)
    df = index.load_index()
    assert df.attrs["provenance"]["kind"] == "cache" and len(df) == 340


def test_bucket_through_the_resolver(small_csv, tmp_path, clean_env):
    calls = []

    def resolve(location=None):
        calls.append(location)
        return types.SimpleNamespace(path=small_csv, source="bucket-https")

    _fake_sources(clean_env, cache_path=tmp_path / "absent.csv", resolve=resolve)
    df = index.load_index()
    assert calls == [None]
    assert df.attrs["provenance"]["kind"] == "bucket-https"


def test_resolver_failure_falls_back_to_the_catalogue_and_says_why(tmp_path, clean_env):
    def resolve(location=None):
        raise FakeSourceError("none worked", ["bucket: HTTP 403 Forbidden"])

    _fake_sources(clean_env, cache_path=tmp_path / "absent.csv", resolve=resolve)
    df = index.load_index()
    prov = df.attrs["provenance"]
    assert prov["kind"] == "catalogue" and prov["complete"] is False
    assert prov["attempts"] == ["bucket: HTTP 403 Forbidden"]
    text = index.describe_provenance(df)
    assert "offline catalogue" in text and "incomplete" in text and "published picks" in text


@pytest.fixture
def loopback(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_integration_with_the_real_download_layer(small_csv, loopback, clean_env):
    root, url = loopback
    (root / "index.csv").write_bytes(small_csv.read_bytes())
    clean_env.setenv("AUGREG_NB_OFFLINE", "0")
    clean_env.setenv("AUGREG_NB_BUCKET_URL", url)
    df = index.load_index()
    assert df.attrs["provenance"]["kind"] == "bucket-https" and len(df) == 340
    # Now it is cached: the next load reads the cache without asking the bucket.
    (root / "index.csv").unlink()
    assert index.load_index().attrs["provenance"]["kind"] == "cache"
    # An explicit URL goes through the same layer.
    (root / "other.csv").write_bytes(small_csv.read_bytes())
    assert len(index.load_index(f"{url}/other.csv")) == 340


def test_integration_offline_falls_back_to_the_catalogue(clean_env):
    df = index.load_index()
    prov = df.attrs["provenance"]
    assert prov["kind"] == "catalogue"
    assert any("offline" in a.lower() for a in prov["attempts"])


# --------------------------------------------------------------------------- validation


@pytest.fixture
def raw(synthetic):
    """200 rows as the CSV reader sees them when every cell is text."""
    return synthetic.iloc[:200].astype(str).replace("nan", np.nan).reset_index(drop=True)


def _problems(err) -> set[tuple[int, str]]:
    return set(zip(err.problems["row"], err.problems["column"], strict=True))


def test_each_problem_is_reported_with_row_and_column(raw, tmp_path):
    bad = raw.copy()
    bad.loc[5, "adapt_lr"] = "fast"
    bad.loc[7, "name"] = "B/17"
    bad.loc[9, "wd"] = "0.03" if raw.loc[9, "wd"] == "0.1" else "0.1"  # filename disagrees
    bad.loc[11, "adapt_final_test"] = "1.5"
    bad.loc[13, "adapt_filename"] = raw.loc[14, "adapt_filename"]  # duplicate + wrong suffix
    bad.loc[15, "epochs"] = "30.0"
    bad.loc[17, "adapt_steps"] = "2000"
    path = tmp_path / "index.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(index.IndexValidationError) as info:
        index.load_index(path)
    got = _problems(info.value)
    for cell in [(5, "adapt_lr"), (7, "name"), (9, "filename"), (11, "adapt_final_test"),
                 (13, "adapt_filename"), (14, "adapt_filename"), (15, "epochs"),
                 (17, "adapt_steps")]:  # fmt: skip
        assert cell in got, cell
    assert {r for r, _ in got} <= {5, 7, 9, 11, 13, 14, 15, 17}
    msg = str(info.value)
    assert "column 'adapt_lr': not a number - 1 row(s): 5" in msg
    assert "strict=False" in msg
    assert "unknown value" in msg and "disagrees with column 'wd'" in msg

    lenient = index.load_index(path, strict=False)
    assert len(lenient) == 200 - 8
    assert lenient.attrs["provenance"]["dropped_rows"] == 8
    assert "8 invalid row(s) dropped" in index.describe_provenance(lenient)


def test_missing_and_extra_columns(raw):
    with pytest.raises(index.IndexValidationError, match="lacks column"):
        index.validate_index(raw.drop(columns=["final_val"]))
    extra = raw.assign(my_notes="x")
    with pytest.raises(index.IndexValidationError, match="'my_notes': unexpected column"):
        index.validate_index(extra)
    ok = index.validate_index(extra, strict=False)
    assert "my_notes" not in ok.columns and len(ok) == 200
    assert ok.attrs["provenance"]["dropped_columns"] == ["my_notes"]


def test_the_catalogue_passes_strict_validation():
    df = index.load_index("catalogue")
    assert df.attrs["provenance"]["complete"] is False
    _, problems = index.find_problems(df)
    assert problems.empty


# --------------------------------------------------------------------------- CLI


def test_cli_prints_recommendations_and_provenance(capsys, clean_env):
    assert cli.main(["index", "--source", "catalogue"]) == 0
    out = capsys.readouterr().out
    assert "offline catalogue" in out and "published" in out
    for model in augreg_nb.names.MODELS:
        assert f"{model} " in out


def test_cli_filters_and_csv(capsys, small_csv):
    code = cli.main(["index", "--source", str(small_csv), "--model", "Ti_16",
                     "--task", "kitti", "--resolution", "384", "--top", "0", "--csv"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    from io import StringIO

    out = pd.read_csv(StringIO(captured.out))
    assert len(out) == 5 * 8  # 5 upstream checkpoints x (2 lengths x 4 learning rates)
    assert set(out["adapt_ds"]) == {"kitti"} and set(out["adapt_resolution"]) == {384}
    assert out["adapt_final_val"].is_monotonic_decreasing
    assert "# index:" in captured.err


def test_cli_reports_bad_filters(capsys, small_csv):
    assert cli.main(["index", "--source", str(small_csv), "--aug", "light2"]) == 1
    assert "aug_paper" in capsys.readouterr().err


def test_cli_where(capsys):
    assert cli.main(["index", "--source", "catalogue", "--model", "Ti/16", "--where",
                     "--csv"]) == 0  # fmt: skip
    from io import StringIO

    out = pd.read_csv(StringIO(capsys.readouterr().out), keep_default_na=False)
    assert set(out["kind"]) == {"upstream", "fine-tuned"}
    hub = dict(zip(out["filename"], out["hf_repo"], strict=True))
    up = "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    assert hub[up] == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert hub[f"{up}--imagenet2012-steps_20k-lr_0.03-res_384"] == (
        "timm/vit_tiny_patch16_384.augreg_in21k_ft_in1k"
    )


# --------------------------------------------------------------------------- synthetic table


def test_synthetic_table_has_the_published_shape(synthetic):
    assert list(synthetic.columns) == list(index.COLUMNS)
    assert len(synthetic) == 51_509 and synthetic["filename"].nunique() == 759
    per_upstream = synthetic.groupby("filename").size()
    assert (per_upstream == 68).sum() == 755 and (per_upstream == 34).sum() == 3
    assert synthetic.attrs["synthetic"] is True
    df = index.validate_index(synthetic)  # strict: names and columns agree on every row
    assert "SYNTHETIC" in index.describe_provenance(df)


def test_provenance_line_of_a_filtered_view(full_csv):
    df = index.load_index(full_csv)
    view = index.filter_index(df, model="B/16", task="kitti")
    assert view.attrs["provenance"]["complete"] is True
    assert index.describe_provenance(view).endswith(f"{len(view):,} shown after filtering")
