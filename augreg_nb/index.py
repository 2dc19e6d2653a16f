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
from pathlib import Path

import pandas as pd

from augreg_nb import catalogue, resources, sources
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
    IndexValidationError,
    find_problems,
    read_index_csv,
    validate_index,
)

__all__ = [
    "COLUMNS", "COLUMN_DOCS", "EXTRA_COLUMN_DOCS", "IndexValidationError", "availability",
    "best_finetune", "describe_provenance", "filter_index", "find_problems", "grid_summary",
    "is_complete", "load_index", "read_index_csv", "recommended_checkpoints",
    "recommended_table", "sort_checkpoints", "validate_index",
]  # fmt: skip

log = logging.getLogger(__name__)

CATALOGUE_NAMES = ("catalogue", "catalog", "offline")


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
    path = catalogue.catalogue_path()
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
        # Only this URL is tried: when it fails, SourceError says why (never another table).
        resolved = sources.resolve_index(text)
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
    cached = sources.index_cache_path()
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
            sources.dl.remove_file(cached)
        else:
            return _with_provenance(df, source=f"cached copy {cached}", kind="cache",
                                    path=str(cached), attempts=attempts)
    try:
        resolved = sources.resolve_index(None)
    except sources.SourceError as err:
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
