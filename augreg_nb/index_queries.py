"""Questions users ask of the index table: pure functions on the DataFrame.

All of them take the DataFrame :func:`augreg_nb.index.load_index` returns (categorical
columns, provenance in ``attrs``) and are re-exported by :mod:`augreg_nb.index`::

    >>> from augreg_nb import index
    >>> df = index.load_index()
    >>> index.recommended_checkpoints(df)[["name", "filename", "selected_by"]]   # doctest: +SKIP
    >>> up = index.recommended_checkpoints(df).loc["B/16", "filename"]            # doctest: +SKIP
    >>> index.best_finetune(df, up, "imagenet2012", 384)["adapt_final_test"]      # doctest: +SKIP
    >>> index.filter_index(df, model="R26+S/32", aug_paper="light2", task="kitti")  # doctest: +SKIP
    >>> index.grid_summary(df, "downstream")                                      # doctest: +SKIP

On an incomplete table (the shipped catalogue) the selection rules cannot be applied
honestly: ``recommended_checkpoints`` and ``best_finetune`` then use the authors' published
picks and say so in their ``selected_by`` field.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from augreg_nb import catalogue, names, resources, sources
from augreg_nb.download import gcloud_credentials_file
from augreg_nb.index_validate import (
    COLUMNS,
    DOMAINS,
    EXPECTED_ROWS,
    EXPECTED_UPSTREAM,
    EXTRA_COLUMN_DOCS,
)

#: Public bucket URL used when the download layer (which honours $AUGREG_NB_BUCKET_URL) is
#: not installed.

RULE = "rule: highest final_val among the model's i21k checkpoints (paper section 4.5)"
PUBLISHED = (
    "published: the authors' pick (this table is incomplete, so the rule cannot be applied)"
)
FT_RULE = "rule: highest adapt_final_val among the fine-tunes for this task and resolution"
FT_KNOWN = "best adapt_final_val among the {n} known rows only (this table is incomplete)"

# criterion aliases -> column
ALIASES = {
    "model": "name",
    "task": "adapt_ds",
    "resolution": "adapt_resolution",
    "steps": "adapt_steps",
    "upstream": "filename",
    "pretraining": "ds",
}


def is_complete(df: pd.DataFrame) -> bool:
    """Whether ``df`` is (or was filtered from) the complete published table.

    Uses ``attrs["provenance"]["complete"]`` when present (set by ``load_index`` and kept
    by pandas through filtering), otherwise the table's shape (:func:`shape_is_complete`).
    """
    prov = df.attrs.get("provenance")
    if prov is not None and "complete" in prov:
        return bool(prov["complete"])
    return shape_is_complete(df)


def shape_is_complete(df: pd.DataFrame) -> bool:
    """True when ``df`` has the published table's size: 759 upstream checkpoints and
    51,509 rows (or more)."""
    return len(df) >= EXPECTED_ROWS and df["filename"].nunique() >= EXPECTED_UPSTREAM


def _published_picks() -> pd.DataFrame:
    picks = pd.read_csv(resources.data_path("index", catalogue.PICKS_FILE))
    return picks[["name", "filename", "adapt_filename"]]


def _upstream_view(df: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    cols = ["name", "ds", "aug", "wd", "do", "sd", "best_val", "final_val", "filename"]
    out = df.iloc[rows][cols].copy()
    out.insert(3, "aug_paper", out["aug"].map(names.index_to_paper_aug).astype(object))
    return out


def recommended_checkpoints(df: pd.DataFrame, *, method: str = "auto") -> pd.DataFrame:
    """The recommended upstream checkpoint per model, indexed by model name.

    ``method="rule"`` applies the paper's rule (section 4.5: the ``ds == "i21k"`` row with
    the highest ``final_val``); ``"published"`` returns the authors' published picks;
    ``"auto"`` (default) uses the rule on a complete table and the published picks
    otherwise. The ``selected_by`` column and ``attrs["selected_by"]`` say which was used.
    """
    if method not in ("auto", "rule", "published"):
        raise ValueError(f"method must be 'auto', 'rule' or 'published', not {method!r}")
    if method == "auto":
        method = "rule" if is_complete(df) else "published"
    if method == "rule":
        i21k = df[(df["ds"] == "i21k") & df["final_val"].notna()]
        if i21k.empty:
            raise ValueError("no i21k rows with final_val: the rule needs the complete table")
        pos = pd.Series(np.arange(len(df)), index=df.index)
        best = i21k.groupby("name", observed=True, sort=False)["final_val"].idxmax()
        out = _upstream_view(df, pos[best.to_numpy()].to_numpy())
        note = RULE
    else:
        picks = _published_picks()
        first = ~df["filename"].duplicated().to_numpy()
        known = df.iloc[np.flatnonzero(first & df["filename"].isin(picks["filename"]).to_numpy())]
        rows = []
        for p in picks.itertuples(index=False):
            n = names.parse_name(p.filename)
            hit = known[known["filename"] == p.filename]
            rows.append({
                "name": n.model, "ds": n.pretraining, "aug": n.aug, "aug_paper": n.aug_paper,
                "wd": n.wd, "do": n.do, "sd": n.sd,
                "best_val": hit["best_val"].iat[0] if len(hit) else np.nan,
                "final_val": hit["final_val"].iat[0] if len(hit) else np.nan,
                "filename": p.filename,
            })  # fmt: skip
        out = pd.DataFrame(rows)
        note = PUBLISHED
    order = {m: i for i, m in enumerate(names.MODELS)}
    out = out.assign(_o=out["name"].astype(object).map(order)).sort_values("_o")
    out = out.drop(columns="_o").set_index(out["name"].astype(object).rename("model"))
    out["selected_by"] = note
    out.attrs = {"provenance": df.attrs.get("provenance", {}), "selected_by": note}
    return out


def best_finetune(
    df: pd.DataFrame,
    upstream_filename: str | names.CheckpointName,
    task: str = "imagenet2012",
    resolution: int = 384,
) -> pd.Series:
    """The best fine-tune of an upstream checkpoint for a task and resolution.

    Chosen by ``adapt_final_val``; report its ``adapt_final_test``. Accepts an upstream
    or fine-tuned name (its upstream is used). The returned row has a ``selected_by`` entry:
    the rule on a complete table; on an incomplete one the authors' published pick when
    there is one, else the best of the known rows (and it says so). Raises LookupError when
    the table has no such fine-tune.
    """
    up = names.parse_name(str(upstream_filename)).upstream_filename
    if task not in names.ADAPT_DATASETS:
        raise names.unknown_value_error("task", task, names.ADAPT_DATASETS)
    fn = df["filename"]
    mask = (
        (fn == up).to_numpy()
        & (df["adapt_ds"] == task).to_numpy()
        & (df["adapt_resolution"] == resolution).to_numpy()
    )
    cand = df.iloc[np.flatnonzero(mask)]
    if cand.empty:
        have = df.loc[(fn == up).to_numpy(), ["adapt_ds", "adapt_resolution"]].drop_duplicates()
        what = ", ".join(f"{a}@{r}" for a, r in have.itertuples(index=False)) or "none"
        raise LookupError(
            f"no {task} fine-tune at {resolution} px of {up} in this table "
            f"(fine-tunes present: {what}); {describe_short(df)}"
        )
    complete = is_complete(df)
    if not complete and "published_pick" in cand.columns and cand["published_pick"].any():
        row = cand[cand["published_pick"].astype(bool)].iloc[0].copy()
        row["selected_by"] = "published: the authors' pick (vit_jax_augreg.ipynb)"
        return row
    val = cand["adapt_final_val"].to_numpy(dtype=float)
    if np.isnan(val).all():
        raise LookupError(
            f"the {len(cand)} known {task}@{resolution} fine-tune(s) of {up} have no "
            f"adapt_final_val to choose by; {describe_short(df)}"
        )
    row = cand.iloc[int(np.nanargmax(val))].copy()
    n_known = int((~np.isnan(val)).sum())
    row["selected_by"] = FT_RULE if complete else FT_KNOWN.format(n=n_known)
    return row


def describe_short(df: pd.DataFrame) -> str:
    prov = df.attrs.get("provenance") or {}
    src = prov.get("source", "an index table of unknown origin")
    return f"table: {src} ({'complete' if is_complete(df) else 'incomplete'})"


def _normalize_values(col: str, value):
    """Translate user spellings (model names, paper aug names) for one column."""
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if col == "name":
        return [names.normalize_model(v) for v in values]
    if col == "aug":
        for v in values:
            if v not in names.AUGMENTATIONS:
                if v in names.PAPER_AUG_NAMES or v in ("heavy1", "heavy2"):
                    raise ValueError(
                        f"aug={v!r}: 'aug' takes the index's names; {v!r} is a paper name "
                        f"(use aug_paper={v!r} or aug={names.paper_to_index_aug(v)!r})"
                    )
                raise names.unknown_value_error("augmentation (index name)", v, names.AUG_NAMES)
    if col in ("ds", "adapt_ds"):
        for v in values:
            if v not in DOMAINS[col]:
                raise names.unknown_value_error(col, v, DOMAINS[col])
    if col == "filename":
        return [names.parse_name(str(v)).upstream_filename for v in values]
    return values


def filter_index(df: pd.DataFrame, **criteria) -> pd.DataFrame:
    """Rows matching every criterion (column=value).

    Keys: any column, plus ``model`` (= name; paper name, file prefix or timm arch),
    ``task`` (= adapt_ds), ``resolution`` (= adapt_resolution), ``steps``
    (= adapt_steps), ``upstream`` (= filename), ``pretraining`` (= ds) and ``aug_paper``
    (the paper's augmentation names: light1 = index light0, light2 = index light1).
    ``aug`` takes index names. Values: a value, a list/tuple/set of values, a ``slice(lo,
    hi)`` for an inclusive numeric range, or a function of the column returning a mask.

        filter_index(df, model="B/16", ds="i21k", aug_paper=["light2", "medium1"])
    """
    mask = np.ones(len(df), dtype=bool)
    for key, value in criteria.items():
        col = ALIASES.get(key, key)
        if key == "aug_paper":
            col = "aug"
            vals = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            value = [names.paper_to_index_aug(v) for v in vals]
        if col not in df.columns:
            known = [*COLUMNS, *EXTRA_COLUMN_DOCS, *ALIASES, "aug_paper"]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown filter {key!r}{hint}; use a column name or {list(ALIASES)}")
        s = df[col]
        if callable(value):
            m = np.asarray(value(s), dtype=bool)
        elif isinstance(value, slice):
            v = s.to_numpy(dtype=float)
            lo = -np.inf if value.start is None else value.start
            hi = np.inf if value.stop is None else value.stop
            m = (v >= lo) & (v <= hi)
        else:
            vals = _normalize_values(col, value)
            m = (s == vals[0]).to_numpy() if len(vals) == 1 else s.isin(vals).to_numpy()
        mask &= m
    return df.iloc[np.flatnonzero(mask)]


def sort_checkpoints(
    df: pd.DataFrame,
    by: str | Iterable[str] = "adapt_final_val",
    *,
    ascending: bool = False,
    top: int | None = None,
) -> pd.DataFrame:
    """Rows sorted by one or more columns (missing values last), optionally the first ``top``."""
    by = [by] if isinstance(by, str) else list(by)
    bad = [b for b in by if b not in df.columns]
    if bad:
        raise ValueError(f"cannot sort by {bad}: not columns of the table")
    out = df.sort_values(by, ascending=ascending, na_position="last", kind="stable")
    return out.head(top) if top is not None else out


_GRIDS = {
    "upstream": (["ds", "name", "wd"], ["aug", "sd", "do"]),
    "downstream": (["adapt_resolution", "adapt_ds"], ["adapt_steps", "adapt_lr"]),
}


def grid_summary(df: pd.DataFrame, kind: str = "upstream", *, tidy: bool = False) -> pd.DataFrame:
    """Row counts over the upstream or downstream grid, like the authors' notebook.

    ``kind="upstream"``: rows (ds, name, wd) x columns (aug, sd, do), each cell the number
    of fine-tunes of that checkpoint (68 in the complete table). ``"downstream"``: rows
    (adapt_resolution, adapt_ds) x columns (adapt_steps, adapt_lr), each cell the number of
    upstream checkpoints fine-tuned that way (759 or 756). ``tidy=True`` returns the long
    form with a ``count`` column.
    """
    if kind not in _GRIDS:
        raise ValueError(f"kind must be 'upstream' or 'downstream', not {kind!r}")
    rows, cols = _GRIDS[kind]
    counts = df.groupby(rows + cols, observed=True).size().rename("count")
    if tidy:
        return counts.reset_index()
    return counts.unstack(cols).astype("Int64")


def _mirror_map() -> dict[str, str]:
    """AugReg filename -> Hugging Face repo (``timm/{timm_name}``) for mirrored files."""
    out: dict[str, str] = {}
    for m in sources.mirrored_checkpoints():
        if m.filename:
            out.setdefault(m.filename, m.repo_id)
    return out


def _local_files() -> dict[str, str]:
    """Checkpoint files present locally: AUGREG_NB_CHECKPOINT_DIR and the cache."""
    folder, cached = _local_and_cached()
    return {**cached, **folder}


def _local_and_cached() -> tuple[dict[str, str], dict[str, str]]:
    """(files in ``$AUGREG_NB_CHECKPOINT_DIR``, files in the cache): name -> path."""
    found: list[dict[str, str]] = [{}, {}]
    roots: list[tuple[int, Path]] = []
    folder = os.environ.get(resources.ENV_CHECKPOINT_DIR)
    if folder:
        roots.append((0, Path(folder).expanduser()))
    roots.append((1, sources.checkpoint_cache_path("x").parent))
    for i, root in roots:
        if root.is_dir():
            for p in root.glob("*.npz"):
                found[i].setdefault(p.stem, str(p))
    return found[0], found[1]


#: How the bucket answers this user, as far as can be known without opening a connection.
BUCKET_OPEN, BUCKET_CREDENTIALS, BUCKET_REFUSED, OFFLINE = (
    "open", "credentials", "refused", "offline")


def bucket_access() -> str:
    """How the checkpoint bucket will answer this user now, decided without a connection.

    ``"offline"``: ``$AUGREG_NB_OFFLINE`` is set, no network source is tried.
    ``"open"``: ``$AUGREG_NB_BUCKET_URL`` points at another server (a mirror you set up, a
    test server); it is assumed to serve its files. ``"credentials"``: the public bucket,
    with Google credentials on this machine (reads work if they grant access).
    ``"refused"``: the public bucket without credentials, which has refused anonymous reads
    since early 2026 (the documented state; no request is made to find out).
    """
    if resources.env_flag(resources.ENV_OFFLINE):
        return OFFLINE
    if sources.bucket_url() != sources.DEFAULT_BUCKET_URL.rstrip("/"):
        return BUCKET_OPEN
    return BUCKET_CREDENTIALS if gcloud_credentials_file() is not None else BUCKET_REFUSED


#: Label of each way to get a file, best first; the flag says whether it works now.
WHERE_LOCAL, WHERE_CACHED, WHERE_HF, WHERE_BUCKET = (
    "local", "cached", "HF mirror (free)", "bucket")
WHERE_BUCKET_CREDENTIALS = "bucket (your credentials)"
WHERE_NEEDS_ACCESS = "bucket: needs access"
WHERE_NEEDS_NETWORK = "needs network (offline)"


def _lookup(files: pd.Series, table: dict[str, str]) -> pd.Series:
    """``table[f]`` for each file, "" where absent (only the few hits are looked up)."""
    out = pd.Series("", index=files.index, dtype=files.dtype)
    if table:
        hit = files.isin(list(table)).to_numpy()
        out[hit] = [table[f] for f in files[hit]]
    return out


def availability(df: pd.DataFrame, *, include_upstream: bool = True,
                 access: str | None = None,
                 bucket_files: Iterable[str] | None = None,
                 hf_mirror: bool = True) -> pd.DataFrame:
    """Where each checkpoint of ``df`` can be obtained, for this user now.

    One row per fine-tuned row of ``df`` and, unless ``include_upstream=False``, first one
    per distinct upstream checkpoint: ``filename``, ``kind``, ``model``, ``bucket_url`` (the
    bucket's public URL; anonymous reads may be refused), ``hf_repo`` (the Hugging Face repo
    when timm re-hosts the file, else empty), ``local_path`` (a copy in the cache or in
    ``$AUGREG_NB_CHECKPOINT_DIR``, else empty), ``where`` (the best source now: ``local``,
    ``cached``, ``HF mirror (free)``, ``bucket``, ``bucket (your credentials)``, else
    ``bucket: needs access`` or, offline, ``needs network (offline)``) and ``fetchable``
    (whether a fetch can succeed now). Nothing is downloaded and no connection is opened:
    ``access`` defaults to :func:`bucket_access`; ``bucket_files``, when given, are the only
    names the bucket serves (a test or demo server); ``hf_mirror=False``: the Hub endpoint
    serves nothing (smoke mode's empty loopback Hub).
    """
    base = sources.bucket_url()
    access = bucket_access() if access is None else access
    files = df["adapt_filename"].astype("str").reset_index(drop=True)
    models = df["name"].reset_index(drop=True)
    kinds = ["fine-tuned"] * len(files)
    if include_upstream:
        ups = df.drop_duplicates("filename")
        files = pd.concat([ups["filename"].astype("str"), files], ignore_index=True)
        models = pd.concat([ups["name"], models], ignore_index=True)
        kinds = ["upstream"] * len(ups) + kinds
    folder, cached = _local_and_cached()
    hf = _lookup(files, _mirror_map())
    in_folder = (_lookup(files, folder) != "").to_numpy()
    in_cache = (_lookup(files, cached) != "").to_numpy()
    on_hf = (hf != "").to_numpy() & hf_mirror
    online = access != OFFLINE
    if access in (BUCKET_OPEN, BUCKET_CREDENTIALS):
        in_bucket = (files.isin(list(bucket_files)).to_numpy() if bucket_files is not None
                     else np.ones(len(files), dtype=bool))
    else:
        in_bucket = np.zeros(len(files), dtype=bool)
    open_bucket = in_bucket & (access == BUCKET_OPEN)
    fallback = WHERE_NEEDS_NETWORK if not online else WHERE_NEEDS_ACCESS
    # In the order a fetch tries them; a bucket that needs credentials after the free mirror.
    where = np.select(
        [in_folder, in_cache, open_bucket, online & on_hf, in_bucket],
        [WHERE_LOCAL, WHERE_CACHED, WHERE_BUCKET, WHERE_HF, WHERE_BUCKET_CREDENTIALS],
        default=fallback)
    out = pd.DataFrame({
        "filename": files,
        "kind": pd.Categorical(kinds, categories=["upstream", "fine-tuned"]),
        "model": models,
        "bucket_url": base + "/" + files + ".npz",
        "hf_repo": hf,
        "local_path": _lookup(files, {**cached, **folder}),
        "where": where.astype(object),
        "fetchable": in_folder | in_cache | (online & (on_hf | in_bucket)),
    })  # fmt: skip
    out.attrs = {"provenance": df.attrs.get("provenance", {}), "bucket_access": access}
    return out


#: ImageNet fine-tunes are compared at 384 px; B/8 was only fine-tuned at 224 px.
_IMAGENET_RESOLUTION = {"B/8": 224}


def recommended_table(df: pd.DataFrame) -> pd.DataFrame:
    """Recommended upstream checkpoint per model, its best ImageNet fine-tune and sources.

    Columns: ``model``, ``filename``, ``aug_paper``, ``final_val``, ``selected_by``,
    ``imagenet_finetune`` (best ``adapt_final_val`` among the model's ImageNet fine-tunes at
    384 px, 224 px for B/8), ``imagenet_top1`` (its ``adapt_final_test``), ``hf_repo`` (the
    Hugging Face copy when timm re-hosts the upstream file) and ``bucket_url``.
    """
    rec = recommended_checkpoints(df)
    avail = availability(df).drop_duplicates("filename").set_index("filename")
    rows = []
    for model, r in rec.iterrows():
        try:
            ft = best_finetune(df, r["filename"], "imagenet2012",
                               _IMAGENET_RESOLUTION.get(model, 384))
            ft_name, ft_top1 = ft["adapt_filename"], ft["adapt_final_test"]
        except LookupError:
            ft_name, ft_top1 = "", float("nan")
        where = avail.loc[r["filename"]] if r["filename"] in avail.index else None
        rows.append({
            "model": model,
            "filename": r["filename"],
            "aug_paper": r["aug_paper"],
            "final_val": r["final_val"],
            "selected_by": r["selected_by"],
            "imagenet_finetune": ft_name,
            "imagenet_top1": ft_top1,
            "hf_repo": "" if where is None else where["hf_repo"],
            "bucket_url": "" if where is None else where["bucket_url"],
        })  # fmt: skip
    out = pd.DataFrame(rows)
    out.attrs["selected_by"] = rec.attrs["selected_by"]
    return out
