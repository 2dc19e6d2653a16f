"""Turn a checkpoint name (or the index table) into a verified local file.

The bucket ``gs://vit_models/augreg`` has refused anonymous reads since early 2026
(google-research/vision_transformer issue #321), so a checkpoint is looked for in these
sources, in order, and the reason each one failed is kept:

1. ``local``        an explicit file, or ``{name}.npz`` in a folder you pass or in
                    ``$AUGREG_NB_CHECKPOINT_DIR`` (e.g. a copy on a mounted Google Drive);
2. ``cache``        ``<cache>/checkpoints/{name}.npz`` (see :mod:`augreg_nb.download`);
3. ``bucket-https`` the bucket's public URL ``$AUGREG_NB_BUCKET_URL/{name}.npz``
                    (default ``https://storage.googleapis.com/vit_models/augreg``);
4. ``bucket-gcs``   ``gs://vit_models/augreg/{name}.npz`` with your Google credentials, via
                    gcsfs or TensorFlow when installed (skipped, with the reason, otherwise);
5. ``hf-mirror``    the Hugging Face Hub repo ``timm/<arch>.<tag>`` for the 37 checkpoints
                    timm re-hosts (``model.safetensors`` in timm's layout; honours
                    ``HF_ENDPOINT`` and the Hub's own cache).

Usage::

    from augreg_nb.sources import resolve_checkpoint, resolve_index
    r = resolve_checkpoint("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0")
    r.path, r.source, r.layout      # e.g. (.../model.safetensors, "hf-mirror", "timm-safetensors")
    resolve_index().path            # index.csv: explicit/$AUGREG_NB_INDEX, cache, bucket

When every source fails, :class:`SourceError` lists them all with their reasons; after a
403 it explains the bucket change and names the mirrored checkpoints closest to the one
asked for. ``AUGREG_NB_OFFLINE=1`` keeps to local files, the cache and the Hub's cache.
From a shell: ``augreg-nb fetch NAME`` and ``augreg-nb cache [--clear | --remove NAME]``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from augreg_nb import download as dl
from augreg_nb.index_validate import read_index_csv
from augreg_nb.names import CheckpointName, parse_name
from augreg_nb.resources import ENV_CHECKPOINT_DIR, ENV_INDEX, ENV_OFFLINE, data_path

logger = logging.getLogger(__name__)

#: Environment variable with the bucket's base URL (tests point it at a loopback server).
ENV_BUCKET_URL = "AUGREG_NB_BUCKET_URL"
DEFAULT_BUCKET_URL = "https://storage.googleapis.com/vit_models/augreg"
GCS_BUCKET = "gs://vit_models/augreg"
BUCKET_ISSUE_URL = "https://github.com/google-research/vision_transformer/issues/321"
HF_FILENAME = "model.safetensors"

LOCAL, CACHE, BUCKET_HTTPS, BUCKET_GCS, HF_MIRROR = (
    "local", "cache", "bucket-https", "bucket-gcs", "hf-mirror")
SOURCE_LABELS = {
    "generated": "made on request (e.g. a fake checkpoint for the smoke preset)",
    LOCAL: "given file, folder or URL",
    CACHE: "cache",
    BUCKET_HTTPS: "bucket, public HTTPS URL",
    BUCKET_GCS: "bucket with Google credentials",
    HF_MIRROR: "Hugging Face Hub mirror (timm)",
}


@dataclass(frozen=True)
class Attempt:
    """One source tried: where it looked, and why it failed (or ``"ok"``)."""

    source: str
    location: str
    reason: str
    ok: bool = False
    status: int | None = None

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"{SOURCE_LABELS.get(self.source, self.source)}{where}: {self.reason}"


@dataclass
class Resolved:
    """A verified local file and where it came from.

    ``layout`` is ``"npz"`` (the published AugReg tree), ``"timm-safetensors"`` (timm's
    PyTorch layout; :mod:`augreg_nb.checkpoint` converts it) or ``"csv"`` (the index).
    """

    path: Path
    source: str
    layout: str
    name: str
    attempts: list = field(default_factory=list)
    model_name: str | None = None  # the model, when the source knows it without a name

    @property
    def model(self) -> str | None:
        """The model of the checkpoint ("B/16"): the source's, else the one ``name``
        belongs to; None when neither says (then it is read off the file's shapes)."""
        if self.model_name is not None:
            return self.model_name
        try:
            return parse_name(self.name).model
        except ValueError:
            return None


#: Checkpoints made on request instead of fetched, by name prefix: prefix -> write(model,
#: path). ``augreg_nb.random_checkpoints`` registers "fake:" (random weights of a model in
#: the published layout), which the smoke preset fine-tunes.
GENERATED = "generated"
_GENERATORS: dict[str, Callable[[str, Path], object]] = {}


def register_generator(prefix: str, write: Callable[[str, Path], object]) -> None:
    """Make ``{prefix}{model}`` a checkpoint name: ``write(model, path)`` writes its .npz."""
    _GENERATORS[prefix] = write


def _generated(text: str) -> Resolved | None:
    for prefix, write in _GENERATORS.items():
        if text.startswith(prefix):
            model = text[len(prefix):]
            stem = f"{prefix.rstrip(':')}-" + "".join(
                c if c.isalnum() or c in "._-" else "_" for c in model)
            path = dl.cache_dir() / GENERATED / f"{stem}.npz"
            if not path.is_file():
                write(model, path)
            return Resolved(path, GENERATED, "npz", stem,
                            [Attempt(GENERATED, str(path), "ok", ok=True)], model_name=model)
    return None


class SourceError(RuntimeError):
    """No source could provide the file; ``attempts`` holds every source and its reason."""

    def __init__(self, message: str, attempts: list[Attempt]):
        super().__init__(message)
        self.attempts = attempts

    @property
    def summary(self) -> str:
        """One line: each failed source and its reason, for logs and provenance records."""
        return "; ".join(f"{a.source}: {a.reason}" for a in self.attempts if not a.ok)


#: ``on_attempt(k, n, description)``: called before source ``k`` of ``n`` is tried.
OnAttempt = Callable[[int, int, str], None]


class _Chain:
    """The sources of one request: counts them for ``on_attempt``, keeps the attempts, and
    remembers when the network turned out to be unreachable so that later network sources
    are skipped with that reason instead of each waiting for its own failure."""

    def __init__(self, n: int, on_attempt: OnAttempt | None):
        self.n = n
        self.k = 0
        self.on_attempt = on_attempt
        self.attempts: list[Attempt] = []
        self.no_network: str | None = None
        #: positions in ``attempts`` of the sources announced (the others were not tried)
        self.tried: set[int] = set()

    def trying(self, description: str) -> None:
        """Announce the next source (1-based) to ``on_attempt``."""
        self.k += 1
        self.tried.add(len(self.attempts))
        if self.on_attempt is not None:
            self.on_attempt(min(self.k, self.n), self.n, description)

    def add(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)


# --------------------------------------------------------------------------- the mirror


@dataclass(frozen=True)
class MirroredCheckpoint:
    """A checkpoint that timm re-hosts on the Hugging Face Hub."""

    timm_name: str  # e.g. "vit_base_patch16_224.augreg_in21k"
    filename: str | None  # the AugReg filename it was converted from (None: timm's own run)
    input_size: int
    num_classes: int

    @property
    def repo_id(self) -> str:
        return f"timm/{self.timm_name}"


@lru_cache(maxsize=1)
def mirrored_checkpoints() -> tuple[MirroredCheckpoint, ...]:
    """The 37 timm re-hosts listed in the shipped ``mirror/timm_augreg_checkpoints.csv``."""
    rows = []
    with open(data_path("mirror", "timm_augreg_checkpoints.csv"), newline="") as f:
        for row in csv.DictReader(f):
            up, suffix = row["upstream_filename"], row["adapt_suffix"]
            filename = (f"{up}--{suffix}" if suffix else up) or None
            rows.append(MirroredCheckpoint(row["timm_name"], filename, int(row["input_size"]),
                                           int(row["num_classes"])))
    return tuple(rows)


def mirror_for(name: str) -> MirroredCheckpoint | None:
    """The mirrored copy of an AugReg filename or timm name, or None."""
    for m in mirrored_checkpoints():
        if name in (m.filename, m.timm_name):
            return m
    return None


def closest_mirrored(name: str | CheckpointName, n: int = 3) -> list[MirroredCheckpoint]:
    """The mirrored checkpoints closest to ``name``: same model first, then the same upstream
    run, then the same fine-tuning task (else the upstream itself, to fine-tune yourself),
    then the same pre-training data and resolution."""
    want = name if isinstance(name, CheckpointName) else parse_name(name, any_task=True)
    scored = []
    for i, m in enumerate(mirrored_checkpoints()):
        if m.filename is None:
            continue
        have = parse_name(m.filename)
        score = (
            have.model == want.model,
            have.upstream == want.upstream,
            have.adapt_ds == want.adapt_ds,
            not have.is_finetuned,
            have.ds == want.ds,
            have.resolution == want.resolution,
        )
        scored.append((score, -i, m))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [m for _, _, m in scored[:n]]


# --------------------------------------------------------------------------- locations


def bucket_url() -> str:
    """The bucket's public base URL (``$AUGREG_NB_BUCKET_URL`` or the default)."""
    return (os.environ.get(ENV_BUCKET_URL) or DEFAULT_BUCKET_URL).rstrip("/")


def checkpoint_cache_path(name: str) -> Path:
    return dl.cache_dir() / "checkpoints" / f"{name}.npz"


def index_cache_path() -> Path:
    return dl.cache_dir() / "index" / "index.csv"


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "gs://"))


def _local_folders(folder) -> list[Path]:
    folders = [Path(folder).expanduser()] if folder is not None else []
    env = os.environ.get(ENV_CHECKPOINT_DIR, "")
    folders += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return folders


#: The longest file name most file systems allow, in bytes (``{name}.npz.meta.json.part``
#: must fit too).
MAX_NAME_BYTES = 255 - len(".npz.meta.json.part")


def _check_name_length(text: str) -> None:
    """ValueError for a name whose cache files could not be created (over 255 bytes)."""
    stem = text.rsplit("/", 1)[-1]
    if len(stem.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ValueError(
            f"{text[:60]!r}... ({len(stem.encode('utf-8', 'surrogateescape'))} bytes) is not a "
            f"checkpoint name: names are at most {MAX_NAME_BYTES} bytes long (the published "
            "ones are under 120); `augreg-nb index` lists them")


def normalize_checkpoint_name(text: str) -> tuple[str, MirroredCheckpoint | None]:
    """(AugReg filename or timm-only name, mirror entry); ValueError for a bad name."""
    _check_name_length(text)
    stem = text.rsplit("/", 1)[-1]
    for suffix in (".npz", ".safetensors"):
        stem = stem.removesuffix(suffix)
    mirror = mirror_for(stem)
    if mirror is not None and mirror.filename is None:
        return stem, mirror  # timm's own run: only on the Hub
    name = mirror.filename if mirror is not None else stem
    try:
        parse_name(name, any_task=True)
    except ValueError as err:
        raise ValueError(
            f"{text!r} is neither an existing file nor a checkpoint name: {err}. "
            "Names look like 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'; "
            "`augreg-nb index` lists them, and timm names like "
            "'vit_base_patch16_224.augreg_in21k' are accepted for mirrored checkpoints"
        ) from None
    return name, mirror


# --------------------------------------------------------------------------- resolvers


def _try_download(chain: _Chain, source: str, url: str, dest: Path, offline: bool,
                  progress: bool, expected_size: int | None = None) -> Path | None:
    if (offline or chain.no_network is not None) and dest.is_file() \
            and dl.verify_file(dest) is None:  # fetched from this URL before: no connection
        chain.add(Attempt(source, url, f"ok (the copy fetched before, {dest})", ok=True))
        return dest
    if offline:
        chain.add(Attempt(source, url, f"skipped: {dl.offline_message('it')}"))
        return None
    if chain.no_network is not None:
        chain.add(Attempt(source, url, f"skipped: {chain.no_network}"))
        return None
    if source == BUCKET_GCS:
        client, why = dl.gcs_client()
        if client is None:
            chain.add(Attempt(source, url, f"skipped: {why}"))
            return None
    try:
        path = dl.download(url, dest, progress=progress, expected_size=expected_size)
    except dl.DownloadError as err:
        reason = str(err).removeprefix(f"{url}: ")
        if err.status == 403:
            reason += " (anonymous reads are refused; see below)"
        if err.no_network:
            chain.no_network = f"no network ({err.no_network} for an earlier source)"
            reason = f"{err.no_network}; this machine seems to have no network"
        chain.add(Attempt(source, url, reason, status=err.status))
        return None
    except Exception as err:  # noqa: BLE001 - an unforeseen failure is this source's reason
        logger.debug("%s failed", url, exc_info=True)
        chain.add(Attempt(source, url, f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"))
        return None
    chain.add(Attempt(source, url, "ok", ok=True))
    return path


def _try_cache(chain: _Chain, path: Path) -> bool:
    if not path.exists():
        chain.add(Attempt(CACHE, str(path), "not cached"))
        return False
    problem = dl.verify_file(path)
    if problem is None:
        chain.add(Attempt(CACHE, str(path), "ok", ok=True))
        return True
    logger.warning("cached file %s is corrupt (%s); removing it and fetching it again",
                   path, problem)
    dl.remove_file(path)
    chain.add(Attempt(CACHE, str(path), f"corrupt ({problem}); removed"))
    return False


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _try_hf(chain: _Chain, mirror: MirroredCheckpoint, offline: bool,
            progress: bool) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    where = f"{_hub_endpoint()}/{mirror.repo_id}"
    cached = try_to_load_from_cache(mirror.repo_id, HF_FILENAME)
    if isinstance(cached, str):
        path = cached
    elif offline:  # the Hub's cache only; the client is not even called
        chain.add(Attempt(HF_MIRROR, where, f"skipped: {dl.offline_message('it')}, "
                                            "and it is not in the Hub's cache"))
        return None
    elif chain.no_network is not None:
        chain.add(Attempt(HF_MIRROR, where, f"skipped: {chain.no_network}, and it is not in "
                                            "the Hub's cache"))
        return None
    else:
        try:
            path = _hub_download(mirror.repo_id, progress)
        except Exception as err:  # any failure of this last source is a reason, not a crash
            unreachable = dl.unreachable_reason(err, _hub_endpoint())
            if unreachable is not None:
                chain.no_network = f"no network ({unreachable})"
                reason = f"{unreachable}; this machine seems to have no network"
            else:
                reason = error_summary(err)
            chain.add(Attempt(HF_MIRROR, where, reason))
            return None
    problem = dl.check_format(Path(path))
    if problem:
        chain.add(Attempt(HF_MIRROR, where, f"downloaded file {path} is {problem}"))
        return None
    chain.add(Attempt(HF_MIRROR, where, "ok", ok=True))
    return Path(path)


def _hub_download(repo_id: str, progress: bool) -> str:
    """``hf_hub_download`` of the mirror's weights, failing fast without a network.

    The client retries a failed metadata request for about 20 s, logging "Retrying in 8s"
    on the way; this chain reports failures itself, so first the endpoint's host name is
    looked up (no connection) and the metadata is asked for once, without retries. Only
    when that answers does the client download (resuming into the Hub's cache)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = os.environ.get("HF_ENDPOINT") or None
    unreachable = dl.unreachable_host(_hub_endpoint())
    if unreachable is not None:
        raise dl.DownloadError(unreachable, no_network=unreachable)
    kwargs = {}
    if not progress:
        from tqdm.auto import tqdm

        kwargs["tqdm_class"] = type("QuietTqdm", (tqdm,), {"__init__": _quiet_init})
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # the client's retry messages are not ours to show
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, HF_FILENAME, endpoint=endpoint),
                             timeout=dl.DEFAULT_TIMEOUT[0])
        return hf_hub_download(repo_id, HF_FILENAME, endpoint=endpoint,
                               etag_timeout=dl.DEFAULT_TIMEOUT[0], **kwargs)
    finally:
        hub_logger.setLevel(level)


def _quiet_init(self, *args, **kwargs):
    from tqdm.auto import tqdm

    kwargs["disable"] = True
    tqdm.__init__(self, *args, **kwargs)


def resolve_checkpoint(name_or_path, *, offline: bool | None = None, folder=None,
                       progress: bool = True, on_attempt: OnAttempt | None = None) -> Resolved:
    """Find checkpoint ``name_or_path`` (AugReg filename, timm name or a file) locally.

    ``folder`` (and ``$AUGREG_NB_CHECKPOINT_DIR``) are searched for ``{name}.npz`` first.
    ``offline`` defaults to ``$AUGREG_NB_OFFLINE``. ``on_attempt(k, n, description)`` is
    called before each source is tried (``k`` counts from 1 to ``n``, the sources this
    request can use), e.g. to show "2/4 public bucket URL" while it downloads. Once a
    network source finds no network (a failed name look-up, a refused or unreachable
    connection) the remaining network sources are skipped with that reason. Raises
    ValueError for a malformed name and :class:`SourceError` (listing every source and
    why it failed) when none works.
    """
    offline = dl.is_offline() if offline is None else bool(offline)
    text = os.fspath(name_or_path)
    generated = _generated(text)
    if generated is not None:
        return generated
    _check_name_length(text)
    explicit = Path(text).expanduser()
    if explicit.is_dir():
        raise ValueError(f"{text!r} is a folder; pass a checkpoint name and folder={text!r}")
    looks_like_path = isinstance(name_or_path, os.PathLike) or "/" in text or os.sep in text
    is_url, is_file = _is_url(text), False
    if not is_url:
        is_file = explicit.is_file()
    try:
        name, mirror = normalize_checkpoint_name(text)
        bad_name = None
    except ValueError as err:
        name, mirror, bad_name = "", None, err
    timm_only = mirror is not None and mirror.filename is None
    folders = _local_folders(folder)
    n = int(is_url or is_file)
    if bad_name is None:
        n += len(folders) + (0 if timm_only else 3) + (mirror is not None)
    chain = _Chain(max(n, 1), on_attempt)

    if is_url:  # an explicit URL of a .npz file: fetched into the cache
        url_name = text.rsplit("/", 1)[-1].removesuffix(".npz")
        chain.trying(f"given URL {text}")
        got = _try_download(chain, LOCAL, text, checkpoint_cache_path(url_name), offline,
                            progress)
        if got is not None:
            return Resolved(got, LOCAL, "npz", url_name, chain.attempts)
        last = chain.attempts[-1]
        chain.attempts[-1] = Attempt(LOCAL, text, f"{last.reason}; looking for it by name",
                                     status=last.status)
    elif is_file:
        chain.trying(f"given file {explicit}")
        problem = dl.check_format(explicit)
        layout = "timm-safetensors" if explicit.suffix == ".safetensors" else "npz"
        if problem is None:
            chain.add(Attempt(LOCAL, str(explicit), "ok", ok=True))
            return Resolved(explicit, LOCAL, layout, explicit.stem, chain.attempts)
        chain.add(Attempt(LOCAL, str(explicit), f"{problem}; looking for it by name"))
    elif looks_like_path:
        chain.add(Attempt(LOCAL, str(explicit), "no such file; looking for it by name"))
    if bad_name is not None:
        raise bad_name

    for f in folders:
        candidate = f / f"{name}.npz"
        chain.trying(f"folder {f}")
        if candidate.is_file() and dl.check_format(candidate) is None:
            chain.add(Attempt(LOCAL, str(candidate), "ok", ok=True))
            return Resolved(candidate, LOCAL, "npz", name, chain.attempts)
        why = "not there" if not candidate.exists() else dl.check_format(candidate)
        chain.add(Attempt(LOCAL, str(candidate), why))
    if not folders and not looks_like_path:
        chain.add(Attempt(LOCAL, "", f"no file or folder given (pass a path, or set "
                                     f"{ENV_CHECKPOINT_DIR} to a folder of .npz files)"))

    if timm_only:
        for source in (CACHE, BUCKET_HTTPS, BUCKET_GCS):
            chain.add(Attempt(source, "", f"{name} is timm's own run, only on the Hub"))
    else:
        dest = checkpoint_cache_path(name)
        chain.trying("download cache")
        if _try_cache(chain, dest):
            return Resolved(dest, CACHE, "npz", name, chain.attempts)
        for source, base, label in ((BUCKET_HTTPS, bucket_url(), "public bucket URL"),
                                    (BUCKET_GCS, GCS_BUCKET, "bucket with Google credentials")):
            chain.trying(label)
            got = _try_download(chain, source, f"{base}/{name}.npz", dest, offline, progress)
            if got is not None:
                return Resolved(got, source, "npz", name, chain.attempts)
    if mirror is None:
        chain.add(Attempt(HF_MIRROR, "", f"not one of the {len(mirrored_checkpoints())} "
                                         "checkpoints that timm re-hosts"))
    else:
        chain.trying(f"Hugging Face Hub mirror {mirror.repo_id}")
        got = _try_hf(chain, mirror, offline, progress)
        if got is not None:
            return Resolved(got, HF_MIRROR, "timm-safetensors", name, chain.attempts)
    raise SourceError(_failure_message(f"checkpoint {name!r}", name, chain.attempts, offline,
                                       chain.tried), chain.attempts)


def resolve_index(location=None, *, offline: bool | None = None, progress: bool = True,
                  on_attempt: OnAttempt | None = None) -> Resolved:
    """Find the full ``index.csv``.

    With ``location`` (or ``$AUGREG_NB_INDEX``; a path or URL) only that source is used:
    when it fails, :class:`SourceError` says why (an explicit choice is never replaced by
    another table). Otherwise: the cache, the bucket's public URL, the bucket with
    credentials; :class:`SourceError` when none works (``index.load_index`` then uses the
    shipped catalogue). A cached or downloaded table must pass the index validation in
    full, so a truncated copy is never kept or reused. ``on_attempt`` as in
    :func:`resolve_checkpoint`.
    """
    offline = dl.is_offline() if offline is None else bool(offline)
    location = location if location is not None else os.environ.get(ENV_INDEX) or None
    if location is not None:
        chain = _Chain(1, on_attempt)
        if _is_url(str(location)):
            url = str(location)
            chain.trying(f"given URL {url}")
            digest = hashlib.sha1(url.encode()).hexdigest()[:10]
            dest = index_cache_path().with_name(f"index-{digest}.csv")
            got = _try_download(chain, LOCAL, url, dest, offline, progress)
            if got is not None and _index_problem(got, chain.attempts, full=True):
                dl.remove_file(got)
            elif got is not None:
                return Resolved(got, LOCAL, "csv", "index", chain.attempts)
        else:
            path = Path(location).expanduser()
            chain.trying(f"given file {path}")
            chain.add(Attempt(LOCAL, str(path), "ok", ok=True))  # replaced by a problem
            if not path.is_file():
                chain.attempts[-1] = Attempt(LOCAL, str(path), "no such file")
            elif not _index_problem(path, chain.attempts):
                return Resolved(path, LOCAL, "csv", "index", chain.attempts)
        lines = [f"Could not get the index table from {location} (given explicitly, so no "
                 "other table is used instead):"]
        lines += [f"  {a}" for a in chain.attempts]
        lines.append("Check the path or URL, or leave it out to use the cache, the bucket or "
                     "the shipped catalogue.")
        raise SourceError("\n".join(lines), chain.attempts)

    chain = _Chain(3, on_attempt)
    chain.add(Attempt(LOCAL, "", f"no path or URL given (pass one, or set {ENV_INDEX})"))
    dest = index_cache_path()
    chain.trying("download cache")
    if _try_cache(chain, dest):
        if not _index_problem(dest, chain.attempts, full=True):
            return Resolved(dest, CACHE, "csv", "index", chain.attempts)
        dl.remove_file(dest)
    for source, base, label in ((BUCKET_HTTPS, bucket_url(), "public bucket URL"),
                                (BUCKET_GCS, GCS_BUCKET, "bucket with Google credentials")):
        chain.trying(label)
        got = _try_download(chain, source, f"{base}/index.csv", dest, offline, progress)
        if got is not None:
            if not _index_problem(got, chain.attempts, full=True):
                return Resolved(got, source, "csv", "index", chain.attempts)
            dl.remove_file(got)
    chain.add(Attempt(HF_MIRROR, "", "the Hub copies hold checkpoints only, no index"))
    raise SourceError(_failure_message("the index table (index.csv)", None, chain.attempts,
                                       offline, chain.tried), chain.attempts)


def _index_problem(path: Path, attempts: list, *, full: bool = False) -> bool:
    """Record (in ``attempts[-1]``) and return True when ``path`` is not an index table.

    The quick check looks for the ``filename`` column; ``full=True`` (for copies this
    package stores) runs the complete validation, so a truncated or damaged download is
    refused instead of being kept and shown with fewer rows."""
    problem = dl.check_format(path, ".csv")
    if problem is None:
        with open(path, encoding="utf-8") as f:
            header = [c.strip() for c in f.readline().split(",")]
        if "filename" not in header:
            problem = f"not an index table: no 'filename' column in {header[:5]}..."
    if problem is None and full:
        try:
            read_index_csv(path, strict=True)
        except Exception as err:  # noqa: BLE001 - any failure makes the copy unusable
            text = " ".join(str(err).split())
            problem = f"fails the index validation ({text[:300]})"
    if problem:
        attempts[-1] = Attempt(attempts[-1].source, str(path), problem)
    return problem is not None


def error_summary(err: BaseException, limit: int = 300) -> str:
    """``Type: text`` of an error on one line, without request ids, and at most about
    ``limit`` characters cut after a whole sentence (or word), never inside a word."""
    text = " ".join(str(err).split())
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", text)
    if len(text) > limit:
        cut = text[:limit]
        end = max(cut.rfind(". "), cut.rfind("; "))
        text = (cut[:end + 1] if end >= limit // 3 else cut.rsplit(" ", 1)[0]) + " ..."
    return f"{type(err).__name__}: {text}"


def _failure_message(what: str, name: str | None, attempts: list[Attempt],
                     offline: bool, tried: set[int] | None = None) -> str:
    """The error of a failed chain: the sources tried, numbered as the progress counted
    them ("source k of n"), and the ones that did not apply, unnumbered."""
    lines = [f"Could not get {what}. Sources tried, in order:"]
    k = 0
    for i, a in enumerate(attempts):
        if tried is None or i in tried:
            k += 1
            lines.append(f"  {k}. {a}")
        else:
            lines.append(f"  -  {a} (not tried)")
    if offline:
        lines.append(f"Offline mode is on ({ENV_OFFLINE}=1): no connection was opened; unset "
                     "it to download.")
    elif any("no network" in a.reason for a in attempts):
        lines.append("This machine seems to have no network (any other network source was "
                     "skipped): use a local copy (pass its path, or set "
                     f"{ENV_CHECKPOINT_DIR if name else ENV_INDEX}), or set {ENV_OFFLINE}=1 "
                     "to skip network sources from the start.")
    if any(a.status == 404 for a in attempts) and name is not None:
        if bucket_url() != DEFAULT_BUCKET_URL:  # another bucket (smoke mode's loopback one)
            lines.append(f"The bucket at {bucket_url()} (set by {ENV_BUCKET_URL}) does not "
                         "serve this name, which is well-formed: that bucket holds other "
                         "files; unset the variable for the published bucket.")
        else:
            lines.append("The bucket has no file of this name: check the spelling "
                         "(`augreg-nb index` lists the published names).")
    if any(a.status == 403 for a in attempts):
        lines.append(
            "The bucket gs://vit_models/augreg has refused anonymous downloads since early "
            f"2026 ({BUCKET_ISSUE_URL}). Alternatives:")
        filename = f"{name}.npz" if name else "index.csv"
        lines.append(f"  - a local copy: pass its path, or put {filename} in a folder and set "
                     f"{ENV_CHECKPOINT_DIR if name else ENV_INDEX}="
                     f"{'that folder' if name else 'its path'}")
        lines.append("  - Google credentials with read access to the bucket: pip install gcsfs, "
                     "then in Colab `from google.colab import auth; auth.authenticate_user()`, "
                     "elsewhere `gcloud auth application-default login`")
        if name is not None:
            try:
                near = closest_mirrored(name)
            except ValueError:
                near = []
            if near:
                lines.append("  - a checkpoint that the Hugging Face Hub mirrors (timm layout), "
                             "closest first:")
                lines += [f"      {m.filename}  (hf.co/{m.repo_id})" for m in near]
    if name is None:
        lines.append("Without the full table, augreg_nb.index.load_index() uses the shipped "
                     "catalogue (the published rows that are known, and the mirrored "
                     "checkpoints).")
    return "\n".join(lines)
