"""The resolver chain against loopback fakes of the bucket and the Hugging Face Hub."""

from __future__ import annotations

import hashlib

import pytest

from augreg_nb import download as dl
from augreg_nb import sources
from augreg_nb.cli import main as cli_main
from augreg_nb.loopback import FakeBucket, FakeHub
from augreg_nb.names import parse_name
from tests.test_download import NAME, no_sockets, write_partial_ti16_npz

# Mirrored on the Hub as timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k.
FT_NAME = f"{NAME}--imagenet2012-steps_20k-lr_0.03-res_224"
FT_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
# Not mirrored: a Pets fine-tune of a B/16 upstream.
B16_UP = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
B16_PETS = f"{B16_UP}--oxford_iiit_pet-steps_0k-lr_0.003-res_384"
LABELS = ("given file, folder or URL", "cache", "bucket, public HTTPS URL",
          "bucket with Google credentials", "Hugging Face Hub mirror")

INDEX_HEADER = ("name,ds,epochs,lr,aug,wd,do,sd,best_val,final_val,final_test,adapt_ds,"
                "adapt_lr,adapt_steps,adapt_resolution,adapt_final_val,adapt_final_test,params,"
                "infer_samples_per_sec,filename,adapt_filename")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own cache, own Hub cache, no credentials, no local folder, online."""
    import huggingface_hub.constants

    monkeypatch.setenv("AUGREG_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "AUGREG_NB_OFFLINE", "AUGREG_NB_INDEX",
                "AUGREG_NB_CHECKPOINT_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    folder = tmp_path / "bucket"
    folder.mkdir()
    with FakeBucket(folder) as server:
        monkeypatch.setenv("AUGREG_NB_BUCKET_URL", server.url)
        yield server


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _fake_timm_file(tmp_path) -> bytes:
    from augreg_nb.testing.checkpoints import write_fake_timm_safetensors

    return write_fake_timm_safetensors(tmp_path / "model.safetensors", "Ti/16",
                                       num_classes=1000, resolution=224).read_bytes()


def _resolve(name, **kw):
    return sources.resolve_checkpoint(name, progress=False, **kw)


def test_403_leads_to_the_hub_mirror_and_the_error_names_every_source(bucket, hub, tmp_path):
    bucket.set(f"{FT_NAME}.npz", status=403)
    with pytest.raises(sources.SourceError) as info:  # the Hub does not have it yet
        _resolve(FT_NAME)
    message = str(info.value)
    for label in LABELS:
        assert label in message
    assert "403" in message and "issues/321" in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "AUGREG_NB_CHECKPOINT_DIR" in message
    assert f"{FT_NAME}  (hf.co/{FT_REPO})" in message  # the closest mirrored: itself
    assert [a.source for a in info.value.attempts] == [
        "local", "cache", "bucket-https", "bucket-gcs", "hf-mirror"]

    data = _fake_timm_file(tmp_path)
    hub.add_file(FT_REPO, "model.safetensors", data)
    r = _resolve(FT_NAME)
    assert (r.source, r.layout, r.name) == ("hf-mirror", "timm-safetensors", FT_NAME)
    assert r.path.read_bytes() == data
    assert r.attempts[2].status == 403 and r.attempts[-1].ok
    served = [q.path for q in hub.requests if q.method == "GET" and "/resolve/" in q.path]
    assert served == [f"/{FT_REPO}/resolve/main/model.safetensors"]

    # Offline, the Hub's cache still answers, without any socket.
    n = len(hub.requests) + len(bucket.requests)
    with no_sockets():
        r2 = _resolve(FT_NAME, offline=True)
    assert r2.path == r.path and r2.source == "hf-mirror"
    assert len(hub.requests) + len(bucket.requests) == n


def test_timm_names_are_accepted(bucket, hub, tmp_path):
    bucket.set(f"{FT_NAME}.npz", status=403)
    hub.add_file(FT_REPO, "model.safetensors", _fake_timm_file(tmp_path))
    r = _resolve(FT_REPO.removeprefix("timm/"))
    assert r.name == FT_NAME and r.source == "hf-mirror"


def test_bucket_download_lands_in_the_cache_and_is_reused(bucket, hub, tmp_path):
    data = write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    r = _resolve(NAME)
    assert (r.source, r.layout) == ("bucket-https", "npz")
    assert r.path == dl.cache_dir() / "checkpoints" / f"{NAME}.npz"
    assert r.path.read_bytes() == data
    r2 = _resolve(NAME)
    assert r2.source == "cache" and r2.path == r.path
    assert len(bucket.requests) == 1 and hub.requests == []


def test_corrupt_cached_checkpoint_is_replaced(bucket, hub):
    data = write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    path = _resolve(NAME).path
    path.write_bytes(data[:1000])
    r = _resolve(NAME)
    assert r.source == "bucket-https" and r.path.read_bytes() == data
    assert "corrupt" in r.attempts[1].reason and "size" in r.attempts[1].reason


def test_local_folder_and_file_come_first(bucket, hub, tmp_path, monkeypatch):
    folder = tmp_path / "drive"
    data = write_partial_ti16_npz(folder / f"{NAME}.npz")
    monkeypatch.setenv("AUGREG_NB_CHECKPOINT_DIR", str(folder))
    r = _resolve(NAME)
    assert (r.source, r.path, r.layout) == ("local", folder / f"{NAME}.npz", "npz")
    monkeypatch.delenv("AUGREG_NB_CHECKPOINT_DIR")
    assert _resolve(NAME, folder=folder).path == folder / f"{NAME}.npz"
    r = _resolve(folder / f"{NAME}.npz")
    assert r.source == "local" and r.path.read_bytes() == data and r.name == NAME
    assert bucket.requests == [] and hub.requests == []
    # An explicit URL is fetched into the cache.
    (bucket.root / "copy").mkdir()
    (bucket.root / "copy" / f"{NAME}.npz").write_bytes(data)
    r = _resolve(f"{bucket.url}/copy/{NAME}.npz")
    assert (r.source, r.name) == ("local", NAME) and r.path.read_bytes() == data
    assert r.path == dl.cache_dir() / "checkpoints" / f"{NAME}.npz"
    dl.remove_file(r.path)
    # A path that does not exist falls back to the name, and says so.
    write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    r = _resolve(tmp_path / "nowhere" / f"{NAME}.npz")
    assert r.source == "bucket-https" and "no such file" in r.attempts[0].reason


def test_offline_mode_opens_no_connection_and_says_so(bucket, hub, monkeypatch):
    write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    monkeypatch.setenv("AUGREG_NB_OFFLINE", "1")
    with no_sockets(), pytest.raises(sources.SourceError) as info:
        _resolve(NAME)
    assert "offline mode (AUGREG_NB_OFFLINE=1)" in str(info.value)
    assert bucket.requests == [] and hub.requests == []


def test_not_mirrored_404_names_the_closest_mirrored_checkpoints(bucket, hub):
    with pytest.raises(sources.SourceError) as info:
        _resolve(B16_PETS)
    message = str(info.value)
    assert "404" in message and "not one of the 37 checkpoints" in message
    near = sources.closest_mirrored(B16_PETS)
    assert near[0].filename == B16_UP  # same model and same upstream run first
    assert all(parse_name(m.filename).model == "B/16" for m in near)


def test_closest_mirrored_prefers_same_model_then_same_upstream():
    want = ("S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0"
            "--cifar100-steps_2k-lr_0.01-res_384")
    near = sources.closest_mirrored(want, n=4)
    names = [parse_name(m.filename) for m in near]
    assert all(n.model == "S/16" for n in names)
    assert names[0].upstream == parse_name(want).upstream and names[0].resolution == 384
    assert len(sources.mirrored_checkpoints()) == 37


def test_bad_name_is_a_clear_value_error():
    with pytest.raises(ValueError, match="neither an existing file nor a checkpoint name"):
        _resolve("B_16-i21k-300ep-lr_0.001-aug_medium1")


def test_resolve_index_from_path_env_and_bucket(bucket, tmp_path, monkeypatch):
    table = tmp_path / "mine.csv"
    table.write_text(INDEX_HEADER + "\n")
    assert sources.resolve_index(table).source == "local"
    monkeypatch.setenv("AUGREG_NB_INDEX", str(table))
    assert sources.resolve_index().path == table
    monkeypatch.delenv("AUGREG_NB_INDEX")
    (bucket.root / "index.csv").write_text(INDEX_HEADER + "\n")
    r = sources.resolve_index(progress=False)
    assert (r.source, r.layout, r.path) == ("bucket-https", "csv", sources.index_cache_path())
    assert sources.resolve_index(progress=False).source == "cache"


def test_resolve_index_rejects_non_tables_and_lists_every_source(bucket, tmp_path):
    (bucket.root / "index.csv").write_text("<html>,sign in</html>\n")
    with pytest.raises(sources.SourceError) as info:
        sources.resolve_index(progress=False)
    message = str(info.value)
    assert "no 'filename' column" in message
    for label in LABELS:
        assert label in message
    assert not sources.index_cache_path().exists()
    bucket.set("index.csv", status=403)
    with pytest.raises(sources.SourceError, match="issues/321"):
        sources.resolve_index(progress=False)


def test_cli_fetch_and_cache(bucket, hub, capsys):
    data = write_partial_ti16_npz(bucket.root / f"{NAME}.npz")
    assert cli_main(["fetch", NAME, "--quiet"]) == 0
    out = capsys.readouterr().out
    path = dl.cache_dir() / "checkpoints" / f"{NAME}.npz"
    assert str(path) in out and "bucket, public HTTPS URL" in out
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert cli_main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert f"checkpoints/{NAME}.npz" in listing and dl.human_size(len(data)) in listing
    assert cli_main(["cache", "--remove", NAME]) == 0
    assert not path.exists()
    bucket.set(f"{B16_UP}.npz", status=403)
    assert cli_main(["fetch", B16_UP, "-q"]) == 1
    err = capsys.readouterr().err
    assert "issues/321" in err and "timm/vit_base_patch16_224.augreg_in21k" in err
    assert cli_main(["cache", "--clear"]) == 0
    assert not dl.cache_dir().exists()


class _FolderGCS:
    """Stands in for ``gcsfs.GCSFileSystem``: reads gs://vit_models/augreg/* from a folder."""

    def __init__(self, folder, refuse=()):
        self.folder, self.refuse, self.opened = folder, set(refuse), []

    def _file(self, url):
        name = url.removeprefix(sources.GCS_BUCKET + "/")
        if name in self.refuse:
            raise PermissionError(f"403 caller does not have storage.objects.get on {name}")
        if not (self.folder / name).is_file():
            raise FileNotFoundError(url)
        return self.folder / name

    def info(self, url):
        return {"size": self._file(url).stat().st_size}

    def open(self, url, mode="rb"):
        self.opened.append(url)
        return open(self._file(url), mode)


def test_bucket_with_credentials_is_used_when_a_client_and_credentials_exist(
        bucket, hub, tmp_path, monkeypatch):
    private = tmp_path / "private"
    data = write_partial_ti16_npz(private / f"{NAME}.npz")
    bucket.set(f"{NAME}.npz", status=403)
    with pytest.raises(sources.SourceError, match="no Google credentials found"):
        _resolve(NAME)
    adc = tmp_path / "gcloud" / "application_default_credentials.json"  # $CLOUDSDK_CONFIG
    adc.parent.mkdir()
    adc.write_text("{}")
    assert dl.gcloud_credentials_file() == adc
    fs = _FolderGCS(private, refuse={f"{B16_UP}.npz"})
    client = dl.GcsClient("gcsfs", lambda url: fs.info(url)["size"], fs.open)
    monkeypatch.setattr(dl, "gcs_client", lambda: (client, ""))
    part = dl.cache_dir() / "checkpoints" / f"{NAME}.npz.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data[:70_000])  # an interrupted earlier copy: resumed with seek
    r = _resolve(NAME)
    assert (r.source, r.layout) == ("bucket-gcs", "npz") and r.path.read_bytes() == data
    assert fs.opened == [f"{sources.GCS_BUCKET}/{NAME}.npz"]
    with pytest.raises(sources.SourceError) as info:
        _resolve(B16_UP)
    assert [a.status for a in info.value.attempts if a.source.startswith("bucket")] == [
        404, 403]
    assert "bucket-gcs: " in info.value.summary and "permission denied" in info.value.summary
