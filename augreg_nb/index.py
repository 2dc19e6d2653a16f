"""The AugReg index table: load it from the best available source, check it, query it.

The published ``index.csv`` (51,509 rows) describes every checkpoint: one row per
fine-tuned checkpoint with its upstream checkpoint's configuration and metrics.
``load_index`` finds a copy in this order, unless ``source`` names one:

1. ``source`` (a path, a folder holding ``index.csv``, a URL, or ``"catalogue"``);
2. the ``AUGREG_NB_INDEX`` environment variable (path or URL);
3. the user's cached copy (``augreg-nb fetch`` / the download layer put it there);
4. the official bucket, through :func:`augreg_nb.sources.resolve_index`;
5. the shipped offline catalogue (``data/catalog/augreg_catalogue.csv``): every published
   real row plus the checkpoints known by name only; NOT the complete table.

The DataFrame says where it came from in ``df.attrs["provenance"]`` (``source``, ``kind``,
``complete``, ``rows``, ``attempts``) and ``describe_provenance(df)`` gives the one-line
summary that views show. Columns (see ``COLUMN_DOCS`` for each one's meaning)::

    >>> from augreg_nb import index
    >>> df = index.load_index()                       # falls back to the catalogue offline
    >>> print(index.describe_provenance(df))          # doctest: +SKIP
    index: shipped offline catalogue, 62 of 51,509 rows - incomplete; ...
    >>> index.recommended_checkpoints(df)             # doctest: +SKIP
    >>> index.filter_index(df, model="B/16", task="imagenet2012", resolution=384)  # doctest: +SKIP

From the command line: ``augreg-nb index`` (recommended checkpoints), ``augreg-nb index
--model R26+S/32 --task oxford_iiit_pet --resolution 384`` (a filter), ``--csv`` for
machine-readable output, ``--source PATH`` for a specific table.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pandas as pd

from augreg_nb import resources
from augreg_nb.index_queries import (
    availability,
    best_finetune,
    filter_index,
    grid_summary,
    is_complete,
    recommended_checkpoints,
    recommended_table,
    shape_is_complete,
    sort_checkpoints,
)
from augreg_nb.index_validate import (
    COLUMN_DOCS,
    COLUMNS,
    EXPECTED_ROWS,
    EXTRA_COLUMN_DOCS,
    READ_DTYPES,
    IndexValidationError,
    find_problems,
    validate_index,
)

__all__ = [
    "COLUMNS", "COLUMN_DOCS", "EXTRA_COLUMN_DOCS", "IndexValidationError", "availability",
    "best_finetune", "describe_provenance", "filter_index", "find_problems", "grid_summary",
    "is_complete", "load_index", "read_index_csv", "recommended_checkpoints",
    "recommended_table", "register_cli", "sort_checkpoints", "validate_index",
]  # fmt: skip

log = logging.getLogger(__name__)

CATALOGUE_NAMES = ("catalogue", "catalog", "offline")
_EXTRA_DTYPES = {"df_row_index": "Int64"}


def _sources():
    """The download layer, or None where it is not installed."""
    try:
        from augreg_nb import sources
    except ImportError:
        return None
    return sources


def read_index_csv(path: str | Path, *, strict: bool = True) -> pd.DataFrame:
    """Read and validate one index CSV file (no provenance beyond the path)."""
    path = Path(path)
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: t for c, t in {**READ_DTYPES, **_EXTRA_DTYPES}.items() if c in header}
    try:
        raw = pd.read_csv(path, dtype=dtypes)
    except (ValueError, TypeError):
        # A cell that is not a number: read everything as text so validation can say where.
        raw = pd.read_csv(path, dtype=str, keep_default_na=True)
    return validate_index(raw, strict=strict)


def _with_provenance(df: pd.DataFrame, **prov) -> pd.DataFrame:
    merged = dict(df.attrs.get("provenance", {}))
    merged.update(prov)
    merged["rows"] = len(df)
    merged["upstream"] = int(df["filename"].nunique())
    if "complete" not in prov:
        merged["complete"] = shape_is_complete(df)
    df.attrs["provenance"] = merged
    return df


def _catalogue(strict: bool, attempts: list[str]) -> pd.DataFrame:
    from augreg_nb.catalog import catalogue_path

    path = catalogue_path()
    df = read_index_csv(path, strict=strict)
    if attempts:
        log.warning(
            "Using the shipped offline catalogue (%d real rows, not the complete table): %s",
            len(df), "; ".join(attempts),
        )
    return _with_provenance(
        df, source=f"shipped offline catalogue ({path.name})", kind="catalogue",
        path=str(path), complete=False, attempts=attempts,
    )  # fmt: skip


def _load_named(location: str | os.PathLike, kind: str, strict: bool, attempts: list[str]):
    text = str(location)
    if text.lower() in CATALOGUE_NAMES:
        return _catalogue(strict, attempts)
    if "://" in text:
        src = _sources()
        if src is None:
            raise RuntimeError(
                f"reading the index from a URL ({text}) needs augreg_nb.sources, which is not "
                "installed here; download the file and pass its path instead"
            )
        # Only this URL is tried: when it fails, SourceError says why (never another table).
        resolved = src.resolve_index(text)
        df = read_index_csv(resolved.path, strict=strict)
        return _with_provenance(df, source=f"{text} ({kind})", kind=kind,
                                path=str(resolved.path), attempts=attempts)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "index.csv"
    if not path.is_file():
        what = "source" if kind == "explicit" else f"${resources.ENV_INDEX}"
        raise FileNotFoundError(
            f"index table not found: {path} (given as {what}). Pass the path of an index.csv, "
            f"a folder holding one, a URL, or 'catalogue' for the shipped offline catalogue"
        )
    df = read_index_csv(path, strict=strict)
    return _with_provenance(df, source=f"{path} ({kind})", kind=kind, path=str(path),
                            attempts=attempts)


def load_index(source: str | os.PathLike | None = None, *, strict: bool = True) -> pd.DataFrame:
    """The index table as a validated DataFrame, from the first source that works.

    ``source``: a path, a folder with ``index.csv``, a URL, or ``"catalogue"``; when given
    (or set in ``$AUGREG_NB_INDEX``) only that source is used and failures raise. Otherwise
    the cache, then the bucket, then the shipped catalogue (logging a warning that says
    why). ``strict=False`` drops rows that fail validation instead of raising
    :class:`IndexValidationError`; provenance records how many.
    """
    attempts: list[str] = []
    if source is not None:
        return _load_named(source, "explicit", strict, attempts)
    env = os.environ.get(resources.ENV_INDEX, "").strip()
    if env:
        return _load_named(env, "env", strict, attempts)
    src = _sources()
    if src is None:
        attempts.append("cache and bucket: the download layer (augreg_nb.sources) is missing")
        return _catalogue(strict, attempts)
    cached = src.index_cache_path()
    if cached.is_file():
        # A cached copy must pass in full (even with strict=False): a truncated or damaged
        # download is fetched again, never shown with rows silently missing.
        try:
            df = read_index_csv(cached, strict=True)
        except Exception as err:  # noqa: BLE001 - any failure makes the copy unusable
            why = " ".join(str(err).split())[:300]
            log.warning("the cached index %s fails validation (%s); fetching it again",
                        cached, why)
            attempts.append(f"cache ({cached}): fails validation ({why}); removed")
            src.dl.remove_file(cached)
        else:
            return _with_provenance(df, source=f"cached copy {cached}", kind="cache",
                                    path=str(cached), attempts=attempts)
    try:
        resolved = src.resolve_index(None)
    except src.SourceError as err:
        tried = getattr(err, "attempts", None) or [str(err)]
        attempts.extend(str(a) for a in tried)
        log.debug("resolve_index failed:\n%s", err)
        return _catalogue(strict, attempts)
    df = read_index_csv(resolved.path, strict=strict)
    return _with_provenance(df, source=f"{resolved.path} ({resolved.source})",
                            kind=resolved.source, path=str(resolved.path), attempts=attempts)


if load_index.__doc__:  # absent under python -OO
    load_index.__doc__ += "\n    Columns of the returned table:\n\n" + "\n".join(
        f"    - ``{name}``: {doc}" for name, doc in {**COLUMN_DOCS, **EXTRA_COLUMN_DOCS}.items()
    ) + "\n\n    The last five exist only in the shipped catalogue.\n"


def describe_provenance(df: pd.DataFrame) -> str:
    """One line for views: where the table came from and whether it is complete."""
    prov = df.attrs.get("provenance") or {}
    src = prov.get("source", "an in-memory table (no provenance)")
    loaded = int(prov.get("rows", len(df)))
    if is_complete(df):
        text = f"index: {src}, {loaded:,} rows - the complete published table"
    else:
        text = (
            f"index: {src}, {loaded:,} of {EXPECTED_ROWS:,} rows - incomplete; recommendations "
            "are the authors' published picks and rankings cover the known rows only"
        )
    if len(df) != loaded:
        text += f"; {len(df):,} shown after filtering"
    if prov.get("dropped_rows"):
        text += f"; {prov['dropped_rows']} invalid row(s) dropped"
    if df.attrs.get("synthetic"):
        text += "; SYNTHETIC values (testing only)"
    return text


# --------------------------------------------------------------------------- CLI


def register_cli(sub) -> None:
    p = sub.add_parser(
        "index",
        help="recommended checkpoints and filters over the index table",
        description="Without filters: the recommended checkpoint per model and its best "
        "ImageNet fine-tune. With filters: the matching rows, best first.",
    )
    p.add_argument("--source", help="index.csv path, folder, URL or 'catalogue'")
    p.add_argument("--model", action="append", help="paper name, file prefix or timm arch")
    p.add_argument("--ds", action="append", help="pre-training set: i1k, i21k, i21k_30")
    p.add_argument("--aug", action="append", help="augmentation, index name (light0, ...)")
    p.add_argument("--aug-paper", action="append", help="augmentation, paper name (light1, ...)")
    p.add_argument("--task", action="append", help="fine-tuning task, e.g. oxford_iiit_pet")
    p.add_argument("--resolution", type=int, action="append", help="224 or 384")
    p.add_argument("--sort", default="adapt_final_val", help="column to sort filtered rows by")
    p.add_argument("--top", type=int, default=20, help="rows to print (0: all)")
    p.add_argument("--where", action="store_true",
                   help="print where the listed checkpoints can be downloaded instead")
    p.add_argument("--csv", action="store_true", help="print CSV (machine-readable)")
    p.add_argument("--lenient", action="store_true", help="drop invalid rows instead of failing")
    p.set_defaults(func=_cmd_index)


def _cmd_index(args) -> int:
    df = load_index(args.source, strict=not args.lenient)
    criteria = {
        k: v
        for k, v in {
            "model": args.model, "ds": args.ds, "aug": args.aug, "aug_paper": args.aug_paper,
            "task": args.task, "resolution": args.resolution,
        }.items()
        if v
    }  # fmt: skip
    if criteria:
        out = sort_checkpoints(filter_index(df, **criteria), args.sort, top=args.top or None)
        cols = ["name", "ds", "aug", "wd", "do", "sd", "final_val", "adapt_ds", "adapt_steps",
                "adapt_lr", "adapt_resolution", "adapt_final_val", "adapt_final_test",
                "adapt_filename"]
    else:
        out = recommended_table(df)
        cols = ["model", "filename", "aug_paper", "final_val", "imagenet_finetune",
                "imagenet_top1"]
    selected_by = out.attrs.get("selected_by", "")
    if args.where:
        wanted = out["adapt_filename" if criteria else "imagenet_finetune"]
        out = availability(df[df["adapt_filename"].isin(wanted)])
        cols = ["filename", "kind", "hf_repo", "local_path", "bucket_url"]
    # With --csv, stdout carries only the table; the notes go to stderr.
    notes = sys.stderr if args.csv else sys.stdout
    print(f"# {describe_provenance(df)}", file=notes)
    if not criteria:
        print(f"# recommended checkpoints - {selected_by}", file=notes)
    if args.csv:
        out[cols].to_csv(sys.stdout, index=False)
    elif out.empty:
        print("no rows match")
    else:
        with pd.option_context("display.max_colwidth", 120, "display.width", 250):
            print(out[cols].to_string(index=False))
    return 0
