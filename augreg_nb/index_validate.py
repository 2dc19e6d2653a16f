"""The index table's schema and its validation (used by :func:`augreg_nb.index.load_index`).

Every check is vectorised over the whole table; problems are reported with the row number
(0-based data row, so CSV line = row + 2) and the column. ``validate_index(df,
strict=True)`` raises :class:`IndexValidationError` listing them; ``strict=False`` drops the
offending rows and records what it dropped in ``df.attrs["provenance"]``.

    >>> from augreg_nb.index_validate import validate_index, find_problems
    >>> clean = validate_index(raw_df, strict=False)          # doctest: +SKIP
    >>> find_problems(raw_df)[1]   # every problem: row, column, value, problem  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from augreg_nb import names, protocol
from augreg_nb.protocol import (  # noqa: F401 - re-exported with the validation
    COLUMN_DOCS,
    COLUMNS,
    EXPECTED_ROWS,
    EXPECTED_UPSTREAM,
)

log = logging.getLogger(__name__)

#: Columns the shipped catalogue adds (provenance per row); allowed next to the 21.
EXTRA_COLUMN_DOCS: dict[str, str] = {
    "source": "where the row was published (notebook output, README, timm's model list)",
    "filenames_reconstructed": "True when the printed filenames were truncated and rebuilt "
    "from the other columns with the documented pattern",
    "config_from_filename": "True when the configuration columns were read off the "
    "filename because the source printed only the filename",
    "published_pick": "True for the authors' own pick: the best i21k checkpoint per model and "
    "its best ImageNet fine-tune (vit_jax_augreg.ipynb)",
    "df_row_index": "the row's position in the published index.csv, where known",
}

CATEGORY_COLUMNS = ("name", "ds", "aug", "adapt_ds")
INT_COLUMNS = {"epochs": "int16", "adapt_steps": "int32", "adapt_resolution": "int16"}
FLOAT_COLUMNS = (
    "lr", "wd", "do", "sd", "best_val", "final_val", "final_test", "adapt_lr",
    "adapt_final_val", "adapt_final_test", "params", "infer_samples_per_sec",
)  # fmt: skip
ACCURACY_COLUMNS = (
    "best_val", "final_val", "final_test", "adapt_final_val", "adapt_final_test",
)  # fmt: skip
#: Columns every row must have (the configuration and the filenames).
REQUIRED_COLUMNS = (
    "name", "ds", "epochs", "lr", "aug", "wd", "do", "sd", "adapt_ds", "adapt_lr",
    "adapt_steps", "adapt_resolution", "filename", "adapt_filename",
)  # fmt: skip
#: dtypes for ``pandas.read_csv``.
READ_DTYPES: dict[str, object] = {
    **{c: "category" for c in (*CATEGORY_COLUMNS, "filename")},
    **{c: "float64" for c in (*FLOAT_COLUMNS, *INT_COLUMNS)},
}

#: Allowed values of the published sweep.
DOMAINS: dict[str, tuple] = {
    "name": names.MODELS,
    "ds": names.PRETRAIN_DATASETS,
    "aug": names.AUG_NAMES,
    "adapt_ds": names.ADAPT_DATASETS,
    "lr": (protocol.PRETRAIN_LR,),
    "wd": tuple(sorted(protocol.PRETRAIN_WEIGHT_DECAYS)),
    "do": protocol.PRETRAIN_REGULARISATION,
    "sd": protocol.PRETRAIN_REGULARISATION,
    "adapt_lr": protocol.LEARNING_RATES,
    "adapt_steps": tuple(names.STEPS_TOKENS),
    "adapt_resolution": protocol.SWEEP_RESOLUTIONS,
}
EPOCHS_BY_DS = protocol.PRETRAIN_EPOCHS


class IndexValidationError(ValueError):
    """The index table has problems; ``.problems`` lists each (row, column, value, problem)."""

    def __init__(self, message: str, problems: pd.DataFrame):
        super().__init__(message)
        self.problems = problems


def summarize_problems(problems: pd.DataFrame, limit: int = 12) -> list[str]:
    """One line per kind of problem: column, what is wrong, how many rows, the first rows."""
    lines = []
    for (col, what), grp in problems.groupby(["column", "problem"], sort=False):
        rows = grp["row"].tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        example = grp["value"].iloc[0]
        lines.append(
            f"column {col!r}: {what} - {len(rows)} row(s): {shown} (e.g. value {example!r})"
        )
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more kinds of problems"]
    return lines


def _problem_frame(records: list[tuple[np.ndarray, str, pd.Series | None, str]]) -> pd.DataFrame:
    parts = []
    for rows, col, values, what in records:
        if len(rows) == 0:
            continue
        vals = values.to_numpy()[rows] if values is not None else np.full(len(rows), None)
        parts.append(
            pd.DataFrame({"row": rows, "column": col, "value": pd.array(vals, dtype=object),
                          "problem": what})
        )
    if not parts:
        return pd.DataFrame({"row": pd.Series([], dtype="int64"), "column": [], "value": [],
                             "problem": []})
    return pd.concat(parts, ignore_index=True)


def _coerce_numeric(df: pd.DataFrame, records: list) -> pd.DataFrame:
    """Make numeric columns float64, recording cells that are not numbers."""
    for col in (*FLOAT_COLUMNS, *INT_COLUMNS):
        s = df[col]
        if pd.api.types.is_float_dtype(s.dtype) or pd.api.types.is_integer_dtype(s.dtype):
            if not pd.api.types.is_float_dtype(s.dtype):
                df[col] = s.astype("float64")
            continue
        num = pd.to_numeric(s.astype("object"), errors="coerce")
        bad = num.isna().to_numpy() & s.notna().to_numpy()
        records.append((np.flatnonzero(bad), col, s, "not a number"))
        df[col] = num.astype("float64")
    return df


def find_problems(
    df: pd.DataFrame, *, allow_extra: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check a raw index table; return (typed copy, problems).

    Raises IndexValidationError right away for missing columns (no row can be kept then).
    Extra columns other than the catalogue's provenance columns are problems of column
    kind (row -1) unless ``allow_extra``.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise IndexValidationError(
            f"the index table lacks column(s) {missing}; an index.csv has these 21 columns: "
            f"{', '.join(COLUMNS)}. Point load_index at the published index.csv.",
            _problem_frame([(np.array([-1]), c, None, "missing column") for c in missing]),
        )
    records: list = []
    extra = [c for c in df.columns if c not in COLUMN_DOCS and c not in EXTRA_COLUMN_DOCS]
    if extra and not allow_extra:
        for c in extra:
            records.append((np.array([-1]), c, None, "unexpected column"))
    df = df.copy()
    df.index = pd.RangeIndex(len(df))
    df = _coerce_numeric(df, records)

    for col in (*CATEGORY_COLUMNS, "filename"):
        if not isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype("category")
    for col in REQUIRED_COLUMNS:
        miss = df[col].isna().to_numpy()
        if miss.any():
            records.append((np.flatnonzero(miss), col, df[col], "empty (required)"))

    # Vocabularies: compare the few categories, then map to rows through the codes.
    for col in CATEGORY_COLUMNS:
        s = df[col]
        cats = s.cat.categories
        bad_cat = ~np.isin(np.asarray(cats, dtype=object), np.asarray(DOMAINS[col], dtype=object))
        if bad_cat.any():
            bad = np.isin(s.cat.codes.to_numpy(), np.flatnonzero(bad_cat))
            records.append(
                (np.flatnonzero(bad), col, s, f"unknown value (allowed: {', '.join(DOMAINS[col])})")
            )
    for col in ("lr", "wd", "do", "sd", "adapt_lr", "adapt_steps", "adapt_resolution"):
        v = df[col].to_numpy()
        bad = ~np.isin(v, np.asarray(DOMAINS[col], dtype="float64")) & ~np.isnan(v)
        allowed = ", ".join(map(str, DOMAINS[col]))
        records.append((np.flatnonzero(bad), col, df[col], f"outside the sweep ({allowed})"))
    ds_epochs = df["ds"].map(EPOCHS_BY_DS).astype("float64").to_numpy()
    bad = (df["epochs"].to_numpy() != ds_epochs) & ~np.isnan(ds_epochs)
    bad &= ~np.isnan(df["epochs"].to_numpy())
    records.append((np.flatnonzero(bad), "epochs", df["epochs"], "does not match ds"))
    for col in ACCURACY_COLUMNS:
        v = df[col].to_numpy()
        bad = (v < 0) | (v > 1)
        records.append((np.flatnonzero(bad), col, df[col], "accuracy outside [0, 1]"))
    for col in ("params", "infer_samples_per_sec"):
        v = df[col].to_numpy()
        records.append((np.flatnonzero(v <= 0), col, df[col], "must be positive"))
    _check_filenames(df, records)
    dup = df["adapt_filename"].duplicated().to_numpy() & df["adapt_filename"].notna().to_numpy()
    records.append((np.flatnonzero(dup), "adapt_filename", df["adapt_filename"],
                    "duplicate (each fine-tuned checkpoint has one row)"))
    return df, _problem_frame(records)


def _check_filenames(df: pd.DataFrame, records: list) -> None:
    """Filenames must parse and agree with their row (vectorised over unique values)."""
    fn = df["filename"]
    cats = list(fn.cat.categories)
    codes = fn.cat.codes.to_numpy()
    parsed: list[names.CheckpointName | None] = []
    unparsable = []
    for i, c in enumerate(cats):
        try:
            n = names.parse_name(c)
            if n.is_finetuned:
                raise ValueError("an upstream filename must not have a '--' fine-tuning part")
            parsed.append(n)
        except ValueError:
            parsed.append(None)
            unparsable.append(i)
    if unparsable:
        bad = np.isin(codes, unparsable)
        records.append((np.flatnonzero(bad), "filename", fn, "not a valid upstream filename "
                        "(see augreg_nb.names.parse_name for the reason)"))
    ok = np.array([p is not None for p in parsed] + [False])  # code -1 (NaN) -> last
    fields = {
        "name": [p.model if p else None for p in parsed],
        "ds": [p.pretraining if p else None for p in parsed],
        "epochs": [float(p.epochs) if p else np.nan for p in parsed],
        "lr": [p.lr if p else np.nan for p in parsed],
        "aug": [p.aug if p else None for p in parsed],
        "wd": [p.wd if p else np.nan for p in parsed],
        "do": [p.do if p else np.nan for p in parsed],
        "sd": [p.sd if p else np.nan for p in parsed],
    }
    row_ok = ok[codes]
    for col, vals in fields.items():
        expected = np.asarray(vals + [None], dtype=object)[codes]
        actual = df[col].to_numpy(dtype=object)
        if col in ("name", "ds", "aug"):
            differs = expected != actual
        else:
            differs = expected.astype("float64") != actual.astype("float64")
        differs &= row_ok & pd.notna(actual)
        records.append((np.flatnonzero(differs), "filename", fn,
                        f"disagrees with column {col!r}"))

    # adapt_filename must be filename + "--" + the suffix its adapt_* columns spell.
    keys = ["adapt_ds", "adapt_steps", "adapt_lr", "adapt_resolution"]
    group = df.groupby(keys, observed=True, sort=False, dropna=False).ngroup().to_numpy()
    firsts = pd.Series(np.arange(len(df))).groupby(group).first()
    suffixes: dict[int, str | None] = {}
    for g, first in firsts.items():
        ds, steps, lr, res = (df[k].iat[first] for k in keys)
        try:
            suffixes[g] = names.CheckpointName(
                "B/16", "i21k", 300, 0.001, "none", 0.1, 0.0, 0.0,
                adapt_ds=str(ds), adapt_steps=int(steps), adapt_lr=float(lr),
                adapt_resolution=int(res),
            ).adapt_suffix
        except (ValueError, TypeError):
            suffixes[g] = None
    suffix_arr = np.array([suffixes.get(g) for g in range(group.max() + 1)] if len(df) else [],
                          dtype=object)
    sfx = pd.Series(suffix_arr[group] if len(df) else [], dtype=object)
    expected = fn.astype(object) + "--" + sfx
    actual = df["adapt_filename"].astype(object)
    differs = (expected.to_numpy() != actual.to_numpy()) & expected.notna().to_numpy()
    differs &= actual.notna().to_numpy() & row_ok
    records.append((np.flatnonzero(differs), "adapt_filename", df["adapt_filename"],
                    "is not filename + '--' + the suffix its adapt_* columns spell"))


def finalize_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as small ints, categories in the toolkit's canonical order."""
    for col, dtype in INT_COLUMNS.items():
        if df[col].notna().all():
            df[col] = df[col].astype(dtype)
    for col in CATEGORY_COLUMNS:
        df[col] = df[col].cat.set_categories(list(DOMAINS[col]))
    return df


def validate_index(df: pd.DataFrame, *, strict: bool = True) -> pd.DataFrame:
    """A typed, checked copy of an index table.

    ``strict=True`` raises IndexValidationError (a ValueError) that names each problem's
    column and rows; ``strict=False`` drops the rows with problems (and unknown columns),
    logs a warning and records the count and summary in ``attrs["provenance"]``.
    """
    attrs = dict(df.attrs)
    typed, problems = find_problems(df, allow_extra=not strict)
    extra = [c for c in typed.columns if c not in COLUMN_DOCS and c not in EXTRA_COLUMN_DOCS]
    if len(problems) and strict:
        raise IndexValidationError(
            "the index table has problems (rows count from 0; CSV line = row + 2):\n  "
            + "\n  ".join(summarize_problems(problems))
            + "\nFix the file, or load it with strict=False to drop these rows.",
            problems,
        )
    if len(problems) or extra:
        bad_rows = problems.loc[problems["row"] >= 0, "row"].unique()
        typed = typed.drop(index=bad_rows, columns=extra).reset_index(drop=True)
        prov = dict(attrs.get("provenance", {}))
        prov.update(dropped_rows=int(len(bad_rows)), dropped_columns=extra,
                    problems=summarize_problems(problems))
        attrs["provenance"] = prov
        if len(bad_rows):
            log.warning("dropped %d invalid index row(s): %s", len(bad_rows),
                        "; ".join(prov["problems"]))
    typed = finalize_dtypes(typed)
    typed.attrs = attrs
    return typed


#: Dtypes of the catalogue's extra columns when they are present.
_EXTRA_DTYPES = {"df_row_index": "Int64"}


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
