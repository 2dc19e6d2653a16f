"""Selections on a full index table that the paper's figures are built from.

The index has one row per fine-tuned checkpoint; the upstream (pre-training) columns repeat
on every fine-tune of the same upstream ``filename``. Accuracies are fractions; everything
returned here stays in the index's units (the builders convert to percent).

Selection rules (ties and missing values: the row that comes first in index order wins):

- best upstream per model and data set: highest ``final_val`` (upstream validation
  accuracy, ImageNet-1k minival for ``i1k``); for ``ds == "i21k"`` this is the authors'
  "recommended" checkpoint;
- best fine-tune of one upstream on a task at a resolution: highest ``adapt_final_val``;
  the reported number is its ``adapt_final_test``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from augreg_nb.protocol import COLUMNS

logger = logging.getLogger(__name__)

#: The 21 columns of the published index table.
INDEX_COLUMNS = COLUMNS
UPSTREAM_COLUMNS = (
    "name", "ds", "epochs", "lr", "aug", "wd", "do", "sd", "best_val", "final_val",
    "final_test", "params", "filename",
)


def check_index(index: pd.DataFrame, needed: tuple[str, ...] = INDEX_COLUMNS) -> pd.DataFrame:
    """Raise ValueError naming missing columns; return ``index`` unchanged otherwise."""
    if not isinstance(index, pd.DataFrame):
        raise ValueError(
            f"index must be a pandas DataFrame, got {type(index).__name__}; load one with "
            "augreg_nb.index.load_index(path)"
        )
    missing = [c for c in needed if c not in index.columns]
    if missing:
        raise ValueError(
            f"the index table lacks the column(s) {missing}; pass the full 21-column index.csv "
            "(augreg_nb.index.load_index(path)) or a fine-tune result row in the same schema"
        )
    return index


def as_rows(own) -> pd.DataFrame:
    """Own result rows as a DataFrame: accepts a DataFrame, one row as a dict (e.g.
    ``FinetuneResult.result_row``), an object with a ``result_row`` attribute (a
    ``FinetuneResult``), or a list of those."""
    if isinstance(own, pd.DataFrame):
        return own
    items = own if isinstance(own, list | tuple) else [own]
    rows = []
    for item in items:
        row = getattr(item, "result_row", item)
        if not isinstance(row, Mapping):
            raise ValueError(
                f"cannot read an own result row from {type(item).__name__}; pass a DataFrame "
                "in the index schema, a dict such as FinetuneResult.result_row, or a list"
            )
        rows.append(dict(row))
    return pd.DataFrame(rows)


def prepare(index: pd.DataFrame) -> pd.DataFrame:
    """Check ``index`` and return a copy with plain (non-categorical) columns.

    Logs a warning when the table says it is incomplete (``attrs["provenance"]``), e.g. the
    shipped catalogue: selections on it are not the paper's.
    """
    check_index(index)
    if index.attrs.get("figures_prepared"):
        return index
    prov = index.attrs.get("provenance") or {}
    if prov.get("complete") is False:
        logger.warning(
            "the index table from %s is incomplete: figures derived from it select among the "
            "rows it has, not among the paper's runs", prov.get("source", "?"))
    out = index.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(object)
    out.attrs["figures_prepared"] = True
    return out


def _first_max(df: pd.DataFrame, by: list[str], score: str) -> pd.DataFrame:
    """Per group of ``by``, the row with the highest ``score`` (first one on ties/NaN)."""
    if df.empty:
        return df
    order = df.reset_index(drop=True).reset_index(names="_pos")
    order["_score"] = order[score].fillna(-float("inf"))
    order = order.sort_values(["_score", "_pos"], ascending=[False, True], kind="stable")
    best = order.drop_duplicates(by, keep="first").sort_values("_pos")
    return best.drop(columns=["_pos", "_score"]).reset_index(drop=True)


def upstreams(index: pd.DataFrame) -> pd.DataFrame:
    """One row per upstream checkpoint (``filename``), with the upstream columns only."""
    check_index(index, UPSTREAM_COLUMNS)
    return index.drop_duplicates("filename")[list(UPSTREAM_COLUMNS)].reset_index(drop=True)


def best_upstreams(index: pd.DataFrame, ds: str) -> pd.DataFrame:
    """Per model, the upstream of data set ``ds`` with the highest ``final_val``."""
    ups = upstreams(index)
    return _first_max(ups[ups["ds"] == ds], ["name"], "final_val")


def best_finetunes(
    index: pd.DataFrame, filenames, adapt_ds: str, resolution: int | None
) -> pd.DataFrame:
    """Per upstream ``filename`` in ``filenames``, its fine-tune on ``adapt_ds`` with the
    highest ``adapt_final_val`` (at ``resolution``, or over all resolutions when None)."""
    check_index(index)
    rows = index[index["filename"].isin(list(filenames)) & (index["adapt_ds"] == adapt_ds)]
    if resolution is not None:
        rows = rows[rows["adapt_resolution"] == resolution]
    return _first_max(rows, ["filename"], "adapt_final_val")


def best_overall_finetunes(
    index: pd.DataFrame, ds: str, adapt_ds: str, resolution: int | None
) -> pd.DataFrame:
    """Per model, the fine-tune on ``adapt_ds`` with the highest ``adapt_final_val`` over
    every upstream of data set ``ds`` (the expensive selection of Figure 5)."""
    check_index(index)
    rows = index[(index["ds"] == ds) & (index["adapt_ds"] == adapt_ds)]
    if resolution is not None:
        rows = rows[rows["adapt_resolution"] == resolution]
    return _first_max(rows, ["name"], "adapt_final_val")


def throughput(index: pd.DataFrame, resolution: int) -> pd.Series:
    """Median ``infer_samples_per_sec`` (V100 img/s) per model at ``resolution``."""
    check_index(index)
    rows = index[index["adapt_resolution"] == resolution]
    return rows.groupby("name")["infer_samples_per_sec"].median()
