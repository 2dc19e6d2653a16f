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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from augreg_nb import download as dl
from augreg_nb.names import CheckpointName, parse_name
from augreg_nb.resources import ENV_CACHE, ENV_CHECKPOINT_DIR, ENV_INDEX, ENV_OFFLINE, data_path

logger = logging.getLogger(__name__)

#: Environment variable with the bucket's base URL (tests point it at a loopback server).
ENV_BUCKET_URL = "AUGREG_NB_BUCKET_URL"
DEFAULT_BUCKET_URL = "https://storage.googleapis.com/vit_models/augreg"
GCS_BUCKET = "gs://vit_models/augreg"
BUCKET_ISSUE_URL = "https://github.com/google-research/vision_transformer/issues/321"
HF_FILENAME = "model.safetensors"

LOCAL, CACHE, BUCKET_HTTPS, BUCKET_GCS, HF_MIRROR = (
    "local", "cache", "bucket-https", "bucket-gcs", "hf-mirror")
_LABELS = {
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
        return f"{_LABELS.get(self.source, self.source)}{where}: {self.reason}"


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


class SourceError(RuntimeError):
    """No source could provide the file; ``attempts`` holds every source and its reason."""

    def __init__(self, message: str, attempts: list[Attempt]):
        super().__init__(message)
        self.attempts = attempts

    @property
    def summary(self) -> str:
        """One line: each failed source and its reason, for logs and provenance records."""
        return "; ".join(f"{a.source}: {a.reason}" for a in self.attempts if not a.ok)


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


def _normalize_checkpoint_name(text: str) -> tuple[str, MirroredCheckpoint | None]:
    """(AugReg filename or timm-only name, mirror entry); ValueError for a bad name."""
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


def _try_download(source: str, url: str, dest: Path, attempts: list, offline: bool,
                  progress: bool, expected_size: int | None = None) -> Path | None:
    if offline:
        attempts.append(Attempt(source, url, f"skipped: {dl.offline_message('it')}"))
        return None
    if source == BUCKET_GCS:
        client, why = dl.gcs_client()
        if client is None:
            attempts.append(Attempt(source, url, f"skipped: {why}"))
            return None
    try:
        path = dl.download(url, dest, progress=progress, expected_size=expected_size)
    except dl.DownloadError as err:
        reason = str(err).removeprefix(f"{url}: ")
        if err.status == 403:
            reason += " (anonymous reads are refused; see below)"
        attempts.append(Attempt(source, url, reason, status=err.status))
        return None
    attempts.append(Attempt(source, url, "ok", ok=True))
    return path


def _try_cache(path: Path, attempts: list) -> bool:
    if not path.exists():
        attempts.append(Attempt(CACHE, str(path), "not cached"))
        return False
    problem = dl.verify_file(path)
    if problem is None:
        attempts.append(Attempt(CACHE, str(path), "ok", ok=True))
        return True
    logger.warning("cached file %s is corrupt (%s); removing it and fetching it again",
                   path, problem)
    dl.remove_file(path)
    attempts.append(Attempt(CACHE, str(path), f"corrupt ({problem}); removed"))
    return False


def _try_hf(mirror: MirroredCheckpoint | None, attempts: list, offline: bool,
            progress: bool) -> Path | None:
    if mirror is None:
        attempts.append(Attempt(HF_MIRROR, "", f"not one of the {len(mirrored_checkpoints())} "
                                               "checkpoints that timm re-hosts"))
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{(endpoint or 'https://huggingface.co').rstrip('/')}/{mirror.repo_id}"
    if offline:  # look in the Hub's cache only; the client is not even called
        path = try_to_load_from_cache(mirror.repo_id, HF_FILENAME)
        if not isinstance(path, str):
            attempts.append(Attempt(HF_MIRROR, where, f"skipped: {dl.offline_message('it')}, "
                                                       "and it is not in the Hub's cache"))
            return None
    else:
        kwargs = {}
        if not progress:
            from tqdm.auto import tqdm

            kwargs["tqdm_class"] = type("QuietTqdm", (tqdm,), {"__init__": _quiet_init})
        try:
            path = hf_hub_download(mirror.repo_id, HF_FILENAME, endpoint=endpoint, **kwargs)
        except Exception as err:  # any failure of this last source is a reason, not a crash
            reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
            attempts.append(Attempt(HF_MIRROR, where, reason))
            return None
    problem = dl.check_format(Path(path))
    if problem:
        attempts.append(Attempt(HF_MIRROR, where, f"downloaded file {path} is {problem}"))
        return None
    attempts.append(Attempt(HF_MIRROR, where, "ok", ok=True))
    return Path(path)


def _quiet_init(self, *args, **kwargs):
    from tqdm.auto import tqdm

    kwargs["disable"] = True
    tqdm.__init__(self, *args, **kwargs)


def resolve_checkpoint(name_or_path, *, offline: bool | None = None, folder=None,
                       progress: bool = True) -> Resolved:
    """Find checkpoint ``name_or_path`` (AugReg filename, timm name or a file) locally.

    ``folder`` (and ``$AUGREG_NB_CHECKPOINT_DIR``) are searched for ``{name}.npz`` first.
    ``offline`` defaults to ``$AUGREG_NB_OFFLINE``. Raises ValueError for a malformed name
    and :class:`SourceError` (listing every source and why it failed) when none works.
    """
    offline = dl.is_offline() if offline is None else bool(offline)
    text = os.fspath(name_or_path)
    attempts: list[Attempt] = []
    explicit = Path(text).expanduser()
    if explicit.is_dir():
        raise ValueError(f"{text!r} is a folder; pass a checkpoint name and folder={text!r}")
    looks_like_path = isinstance(name_or_path, os.PathLike) or "/" in text or os.sep in text
    if _is_url(text):  # an explicit URL of a .npz file: fetched into the cache
        name = text.rsplit("/", 1)[-1].removesuffix(".npz")
        got = _try_download(LOCAL, text, checkpoint_cache_path(name), attempts, offline,
                            progress)
        if got is not None:
            return Resolved(got, LOCAL, "npz", name, attempts)
        attempts[-1] = Attempt(LOCAL, text, f"{attempts[-1].reason}; looking for it by name",
                               status=attempts[-1].status)
    elif explicit.is_file():
        problem = dl.check_format(explicit)
        layout = "timm-safetensors" if explicit.suffix == ".safetensors" else "npz"
        if problem is None:
            attempts.append(Attempt(LOCAL, str(explicit), "ok", ok=True))
            return Resolved(explicit, LOCAL, layout, explicit.stem, attempts)
        attempts.append(Attempt(LOCAL, str(explicit), f"{problem}; looking for it by name"))
    elif looks_like_path:
        attempts.append(Attempt(LOCAL, str(explicit), "no such file; looking for it by name"))
    name, mirror = _normalize_checkpoint_name(text)
    timm_only = mirror is not None and mirror.filename is None

    folders = _local_folders(folder)
    for f in folders:
        candidate = f / f"{name}.npz"
        if candidate.is_file() and dl.check_format(candidate) is None:
            attempts.append(Attempt(LOCAL, str(candidate), "ok", ok=True))
            return Resolved(candidate, LOCAL, "npz", name, attempts)
        why = "not there" if not candidate.exists() else dl.check_format(candidate)
        attempts.append(Attempt(LOCAL, str(candidate), why))
    if not folders and not looks_like_path:
        attempts.append(Attempt(LOCAL, "", f"no file or folder given (pass a path, or set "
                                           f"{ENV_CHECKPOINT_DIR} to a folder of .npz files)"))

    if timm_only:
        for source in (CACHE, BUCKET_HTTPS, BUCKET_GCS):
            attempts.append(Attempt(source, "", f"{name} is timm's own run, only on the Hub"))
    else:
        dest = checkpoint_cache_path(name)
        if _try_cache(dest, attempts):
            return Resolved(dest, CACHE, "npz", name, attempts)
        for source, base in ((BUCKET_HTTPS, bucket_url()), (BUCKET_GCS, GCS_BUCKET)):
            got = _try_download(source, f"{base}/{name}.npz", dest, attempts, offline, progress)
            if got is not None:
                return Resolved(got, source, "npz", name, attempts)
    got = _try_hf(mirror, attempts, offline, progress)
    if got is not None:
        return Resolved(got, HF_MIRROR, "timm-safetensors", name, attempts)
    raise SourceError(_failure_message(f"checkpoint {name!r}", name, attempts, offline),
                      attempts)


def resolve_index(location=None, *, offline: bool | None = None,
                  progress: bool = True) -> Resolved:
    """Find the full ``index.csv``: ``location`` or ``$AUGREG_NB_INDEX`` (path or URL), the
    cache, the bucket's public URL, the bucket with credentials. Raises :class:`SourceError`
    when none works (``index.load_index`` then uses the shipped catalogue)."""
    offline = dl.is_offline() if offline is None else bool(offline)
    attempts: list[Attempt] = []
    location = location if location is not None else os.environ.get(ENV_INDEX) or None
    if location is None:
        attempts.append(Attempt(LOCAL, "", f"no path or URL given (pass one, or set {ENV_INDEX})"))
    elif _is_url(str(location)):
        url = str(location)
        digest = hashlib.sha1(url.encode()).hexdigest()[:10]
        dest = index_cache_path().with_name(f"index-{digest}.csv")
        got = _try_download(LOCAL, url, dest, attempts, offline, progress)
        if got is not None and _index_problem(got, attempts):
            dl.remove_file(got)
        elif got is not None:
            return Resolved(got, LOCAL, "csv", "index", attempts)
    else:
        path = Path(location).expanduser()
        if not path.is_file():
            attempts.append(Attempt(LOCAL, str(path), "no such file"))
        elif not _index_problem(path, attempts):
            return Resolved(path, LOCAL, "csv", "index", attempts)

    dest = index_cache_path()
    if _try_cache(dest, attempts):
        if not _index_problem(dest, attempts):
            return Resolved(dest, CACHE, "csv", "index", attempts)
        dl.remove_file(dest)
    for source, base in ((BUCKET_HTTPS, bucket_url()), (BUCKET_GCS, GCS_BUCKET)):
        got = _try_download(source, f"{base}/index.csv", dest, attempts, offline, progress)
        if got is not None:
            if not _index_problem(got, attempts):
                return Resolved(got, source, "csv", "index", attempts)
            dl.remove_file(got)
    attempts.append(Attempt(HF_MIRROR, "", "the Hub copies hold checkpoints only, no index"))
    raise SourceError(_failure_message("the index table (index.csv)", None, attempts, offline),
                      attempts)


def _index_problem(path: Path, attempts: list) -> bool:
    """Record and return True when ``path`` is not an index table (no ``filename`` column)."""
    problem = dl.check_format(path, ".csv")
    if problem is None:
        with open(path, encoding="utf-8") as f:
            header = [c.strip() for c in f.readline().split(",")]
        if "filename" not in header:
            problem = f"not an index table: no 'filename' column in {header[:5]}..."
    if problem:
        attempts[-1] = Attempt(attempts[-1].source, str(path), problem)
    return problem is not None


def _failure_message(what: str, name: str | None, attempts: list[Attempt],
                     offline: bool) -> str:
    lines = [f"Could not get {what}. Sources tried, in order:"]
    lines += [f"  {i}. {a}" for i, a in enumerate(attempts, 1)]
    if offline:
        lines.append(f"Offline mode is on ({ENV_OFFLINE}=1): no connection was opened; unset "
                     "it to download.")
    if any(a.status == 404 for a in attempts) and name is not None:
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


# --------------------------------------------------------------------------- command line


def register_cli(sub) -> None:
    p = sub.add_parser("fetch", help="resolve a checkpoint (or the index) to a local file",
                       description="Download a checkpoint or index.csv into the cache, or "
                                   "explain which sources failed and why.")
    p.add_argument("name", nargs="?", help="checkpoint filename (with or without .npz), timm "
                                           "name, or a path")
    p.add_argument("--index", action="store_true", help="fetch index.csv instead")
    p.add_argument("--dir", help=f"a local folder of .npz files (like ${ENV_CHECKPOINT_DIR})")
    p.add_argument("--offline", action="store_true", help="use local files and caches only")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fetch)

    c = sub.add_parser("cache", help="list or clear the download cache",
                       description="List cached checkpoints and index tables with their sizes.")
    c.add_argument("--clear", action="store_true", help="delete every cached file")
    c.add_argument("--remove", metavar="NAME", help="delete one cached checkpoint")
    c.set_defaults(func=_cmd_cache)


def _cmd_fetch(args) -> int:
    offline = True if args.offline else None
    if args.index:
        r = resolve_index(args.name, offline=offline, progress=not args.quiet)
    elif args.name:
        r = resolve_checkpoint(args.name, offline=offline, folder=args.dir,
                               progress=not args.quiet)
    else:
        raise ValueError("name a checkpoint to fetch, or pass --index")
    for a in r.attempts:
        logger.debug("%s", a)
    print(f"{r.path}\n  source: {_LABELS[r.source]}, layout: {r.layout}")
    return 0


def _cmd_cache(args) -> int:
    root = dl.cache_dir()
    if args.clear:
        freed = dl.clear_cache(root)
        print(f"removed {root} ({dl.human_size(freed)})")
        return 0
    if args.remove:
        name, _ = _normalize_checkpoint_name(args.remove)
        path = checkpoint_cache_path(name)
        if not (path.exists() or path.with_name(path.name + dl.PART_SUFFIX).exists()):
            raise FileNotFoundError(f"{name}.npz is not in the cache {root}; "
                                    "`augreg-nb cache` lists what is")
        dl.remove_file(path)
        print(f"removed {path}")
        return 0
    entries = dl.list_cache(root)
    print(f"cache: {root}  (set ${ENV_CACHE} to move it)")
    for e in entries:
        note = "  (partial download; the next fetch resumes it)" if e.partial else ""
        print(f"  {dl.human_size(e.size):>10}  {e.path.relative_to(root)}{note}")
    total = sum(e.size for e in entries)
    print(f"  {len(entries)} file{'' if len(entries) == 1 else 's'}, {dl.human_size(total)}")
    print("Checkpoints from the Hugging Face Hub stay in the Hub's own cache: `hf cache ls`, "
          "`hf cache rm`.")
    return 0
