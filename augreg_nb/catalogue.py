"""The shipped offline catalogue: every AugReg checkpoint the public record names.

When the full ``index.csv`` is out of reach, :func:`augreg_nb.index.load_index` falls back
to ``data/catalog/augreg_catalogue.csv``. It is derived from the shipped source files by
:func:`build_catalogue` and holds, in the index's 21 columns plus provenance columns:

* the real published index rows (``data/index/index_csv_known_rows_union.csv``): rows
  printed in the authors' notebook and in a public model-selector notebook;
* the authors' own picks (``published_pick``): the best i21k checkpoint per model and its
  best ImageNet fine-tune (the source of the README's recommended checkpoints);
* the checkpoints timm re-hosts on the Hugging Face Hub (``data/mirror/``) and the README's
  recommended checkpoints, where not already present, known by name only.

No number is invented: configuration columns may be read off a filename (marked
``config_from_filename``), but metrics (accuracies, params, throughput) are only ever the
published values, and empty for checkpoints known by name only.

Rebuild the shipped file after changing a source file::

    python -m augreg_nb.catalogue   # rewrites data/catalog/augreg_catalogue.csv
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from augreg_nb import names, resources
from augreg_nb.index_validate import COLUMNS, EXTRA_COLUMN_DOCS

log = logging.getLogger(__name__)

CATALOGUE_FILE = ("catalog", "augreg_catalogue.csv")
#: The authors' notebook output: best i21k checkpoint per model and its best ImageNet run.
PICKS_FILE = "vit_jax_augreg_nb_cell21_best_i21k_per_model_imagenet2012.csv"
_CONFIG_COLUMNS = ("name", "ds", "epochs", "lr", "aug", "wd", "do", "sd")
_ADAPT_CONFIG = ("adapt_ds", "adapt_lr", "adapt_steps", "adapt_resolution")


def _config_from_name(adapt_filename: str) -> dict:
    n = names.parse_name(adapt_filename)
    return {
        "name": n.model, "ds": n.pretraining, "epochs": float(n.epochs), "lr": n.lr,
        "aug": n.aug, "wd": n.wd, "do": n.do, "sd": n.sd, "adapt_ds": n.adapt_ds,
        "adapt_lr": n.adapt_lr, "adapt_steps": float(n.adapt_steps),
        "adapt_resolution": float(n.adapt_resolution), "filename": n.upstream_filename,
        "adapt_filename": n.filename,
    }  # fmt: skip


def _name_only_row(adapt_filename: str, source: str) -> dict:
    row = {c: np.nan for c in COLUMNS}
    row.update(_config_from_name(adapt_filename))
    row.update(source=source, filenames_reconstructed=False, config_from_filename=True,
               published_pick=False, df_row_index=np.nan)
    return row


def build_catalogue() -> pd.DataFrame:
    """Merge the shipped source files into the catalogue (21 columns + provenance)."""
    known = pd.read_csv(resources.data_path("index", "index_csv_known_rows_union.csv"))
    known["filenames_reconstructed"] = known["filenames_reconstructed"].str.startswith("yes")
    # Rows that printed only the filenames get their configuration from the filename.
    config_cols = [*_CONFIG_COLUMNS, *_ADAPT_CONFIG]
    gaps = known[config_cols].isna().any(axis=1)
    known["config_from_filename"] = gaps
    for i in np.flatnonzero(gaps.to_numpy()):
        cfg = _config_from_name(known.at[i, "adapt_filename"])
        for col in config_cols:
            if pd.isna(known.at[i, col]):
                known.at[i, col] = cfg[col]
            elif known.at[i, col] != cfg[col]:
                raise ValueError(
                    f"index_csv_known_rows_union.csv row {i}: column {col!r} is "
                    f"{known.at[i, col]!r} but the filename says {cfg[col]!r}"
                )

    picks = pd.read_csv(resources.data_path("index", PICKS_FILE))
    known["published_pick"] = known["adapt_filename"].isin(picks["adapt_filename"])
    if known["published_pick"].sum() != len(picks):
        missing = set(picks["adapt_filename"]) - set(known["adapt_filename"])
        raise ValueError(f"published picks missing from the known rows: {sorted(missing)}")

    extra: list[dict] = []
    seen = set(known["adapt_filename"])
    mirror = pd.read_csv(resources.data_path("mirror", "timm_augreg_checkpoints.csv"))
    for row in mirror.itertuples(index=False):
        if pd.isna(row.upstream_filename) or pd.isna(row.adapt_suffix):
            continue
        fn = f"{row.upstream_filename}--{row.adapt_suffix}"
        if fn not in seen:
            seen.add(fn)
            extra.append(_name_only_row(fn, f"timm mirror list ({row.source})"))
    rec = pd.read_csv(resources.data_path("index", "recommended_checkpoints.csv"))
    for row in rec.itertuples(index=False):
        fn = names.parse_name(row.finetuned_checkpoint).filename
        if fn not in seen:
            seen.add(fn)
            extra.append(_name_only_row(fn, f"recommended checkpoints ({row.source})"))

    cat = pd.concat([known, pd.DataFrame(extra)], ignore_index=True)
    cat = cat[[*COLUMNS, *EXTRA_COLUMN_DOCS]]
    cat["df_row_index"] = cat["df_row_index"].astype("Int64")
    # Every upstream checkpoint that timm mirrors must be the upstream of some row.
    ups = set(mirror["upstream_filename"].dropna())
    lost = ups - set(cat["filename"])
    if lost:
        raise ValueError(f"mirrored upstream checkpoints with no catalogue row: {sorted(lost)}")
    order = {m: i for i, m in enumerate(names.MODELS)}
    cat = cat.assign(_m=cat["name"].map(order)).sort_values(
        ["_m", "ds", "filename", "adapt_ds", "adapt_resolution", "adapt_steps", "adapt_lr"],
        kind="stable",
    )
    return cat.drop(columns="_m").reset_index(drop=True)


def write_catalogue(path: str | Path | None = None) -> Path:
    """Write :func:`build_catalogue` to ``path`` (default: the shipped location)."""
    if path is None:
        path = resources.data_dir().joinpath(*CATALOGUE_FILE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cat = build_catalogue()
    for col in ("epochs", "adapt_steps", "adapt_resolution"):
        cat[col] = cat[col].astype("int64")
    tmp = path.with_name(path.name + ".tmp")
    cat.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
    return path


def catalogue_path() -> Path:
    """Path of the shipped catalogue CSV."""
    return resources.data_path(*CATALOGUE_FILE)


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    print(write_catalogue())
