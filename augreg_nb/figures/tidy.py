"""Tidy data for each reproducible figure and table, from the paper or from a full index.

Every builder takes ``index=None`` (the numbers printed in the paper, shipped with the
package) or a full index DataFrame (``augreg_nb.index.load_index(path)``, 21 columns,
accuracies as fractions) and returns a long DataFrame in percent that the matching
``plot_*`` function draws. The docstrings say how each value is derived from index columns;
the selection rules are in :mod:`augreg_nb.figures.derive`.

    >>> from augreg_nb.figures import tidy
    >>> tidy.fig4_data().query("model == 'B/16' and ds == 'i21k'").head(3)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from augreg_nb.figures import derive, paper
from augreg_nb.names import PAPER_AUG_NAMES, index_to_paper_aug, paper_to_index_aug
from augreg_nb.protocol import SWEEP_RESOLUTIONS

#: The augmentations in the paper's column order (paper names).
AUGS = PAPER_AUG_NAMES
FIG1_MODELS = ("B/32", "B/16", "L/16")
FIG1_PRETRAIN = ("i1k", "i21k_30", "i21k", "jft300m")
FIG1_LABELS = {
    "i1k": "ImageNet-1k\n300ep",
    "i21k_30": "ImageNet-21k\n30ep",
    "i21k": "ImageNet-21k\n300ep",
    "jft300m": "JFT-300M",
}


def _model_order(models) -> list[str]:
    known = [m for m in paper.PAPER_MODELS if m in set(models)]
    return known + sorted(set(models) - set(known))


def table3_data(index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 3: ImageNet-1k top-1 (%) per model, columns as in the shipped table.

    From the index, per model:

    - ``i1k_300_224`` etc. (``{ds}_{res}``): take the best upstream of that ``ds`` (highest
      ``final_val``), then its ``imagenet2012`` fine-tune at that ``adapt_resolution`` with
      the highest ``adapt_final_val``; the cell is its ``adapt_final_test``.
    - ``i1k_up_224``: ``final_test`` of the best ``i1k`` upstream (evaluated without
      fine-tuning).
    - ``img_sec_224`` / ``img_sec_384``: median ``infer_samples_per_sec`` of the model's rows
      at that resolution.
    - ``i21k_v2_384`` (selection by ImageNetV2) and ``jft300m_384`` are not in the index: NaN.
    """
    if index is None:
        return paper.table3()
    index = derive.prepare(index)
    models = _model_order(index["name"].dropna().unique())
    out = pd.DataFrame(index=pd.Index(models, name="model"), columns=paper.table3().columns)
    out = out.astype(float)
    for res in SWEEP_RESOLUTIONS:
        out[f"img_sec_{res}"] = derive.throughput(index, res).reindex(models)
    for (ds, res), col in paper.TABLE3_COLUMNS.items():
        ups = derive.best_upstreams(index, ds)
        fts = derive.best_finetunes(index, ups["filename"], "imagenet2012", res)
        out[col] = (fts.set_index("name")["adapt_final_test"] * 100).reindex(models)
    ups = derive.best_upstreams(index, "i1k")
    out["i1k_up_224"] = (ups.set_index("name")["final_test"] * 100).reindex(models)
    return out


def table5_data(index: pd.DataFrame | None = None, *, own=None) -> pd.DataFrame:
    """Table 5 (VTAB top-1 on the full training sets, %), long form: pretrain, model,
    group, dataset, top1.

    The index holds no VTAB runs, so this always reads the paper; passing an index raises.
    ``own``: result rows of own full-VTAB runs (``augreg_nb.vtab_run``), added below the
    paper's rows by :func:`vtab_own_rows`.
    """
    if index is not None:
        raise ValueError(
            "Table 5 (VTAB) cannot be derived from the index: it holds no VTAB "
            "fine-tunes; call table5_data() without an index"
        )
    out = paper.table5_long()
    mine = vtab_own_rows(own)
    return pd.concat([out, mine], ignore_index=True) if len(mine) else out


#: ``adapt_ds`` prefix of the VTAB-1k tasks (``augreg_nb.vtab``): 800 training examples,
#: never shown in Table 5, whose numbers come from the full training sets.
VTAB1K_PREFIX = "vtab1k/"
#: ``adapt_ds`` prefix of the full VTAB tasks: what Table 5 reports, so own rows of these
#: join it.
VTAB_PREFIX = "vtab/"


def vtab_own_rows(own) -> pd.DataFrame:
    """Own full-VTAB result rows as Table 5 rows: pretrain, model, group, dataset, top1 (%).

    ``own``: rows in the index schema (a DataFrame, dicts, or ``augreg-nb vtab``'s
    ``vtab.csv``); only rows whose ``adapt_ds`` is ``vtab/<task>`` are used (Table 5's
    numbers come from the full training sets; VTAB-1k rows, ``vtab1k/<task>``, are not
    comparable with them and are left out), one per
    upstream (``filename``) and task (the last one given wins). ``pretrain`` is
    "Own: " and the paper's label of the upstream's pre-training set (``ds``); ``model``
    is the row's ``name``. ``top1`` is 100 x ``adapt_final_test``. The group means
    (``Mean_<group>``) average the group's tasks as the paper does, and are only given when
    every task of the group is there.
    """
    from augreg_nb import vtab

    columns = ["pretrain", "model", "group", "dataset", "top1"]
    if own is None:
        return pd.DataFrame(columns=columns)
    rows = derive.as_rows(own)
    if len(rows) == 0:
        return pd.DataFrame(columns=columns)
    derive.check_index(rows, ("name", "ds", "adapt_ds", "adapt_final_test", "filename"))
    rows = rows[rows["adapt_ds"].astype(str).str.startswith(VTAB_PREFIX)]
    out = []
    for _, part in rows.groupby(["filename"], sort=False, dropna=False):
        first = part.iloc[0]
        ds = first["ds"]
        label = paper.DS_TABLE5.get(ds, ds if isinstance(ds, str) and ds else "unknown data")
        pretrain, model = f"Own: {label}", str(first["name"])
        top1 = {}
        for _, row in part.iterrows():
            task = str(row["adapt_ds"])[len(VTAB_PREFIX):]
            if task in vtab.SPECS:
                top1[task] = 100 * float(row["adapt_final_test"])
        for group in vtab.GROUPS:
            names = vtab.names(group)
            for name in names:
                if name in top1:
                    out.append([pretrain, model, group, vtab.SPECS[name].column, top1[name]])
            if all(n in top1 for n in names):
                mean = float(np.mean([top1[n] for n in names]))
                out.append([pretrain, model, group, f"Mean_{group}", mean])
    return pd.DataFrame(out, columns=columns)


def fig3_data(index: pd.DataFrame | None = None, *, own=None) -> pd.DataFrame:
    """Figure 3: VTAB group means against inference speed.

    Columns: ds, pretrain, model, group (natural/specialized/structured), vtab_mean (%),
    img_per_sec. ``vtab_mean`` is Table 5's printed group mean (the index has no VTAB
    runs); ``img_per_sec`` is Table 3's 224 px V100 img/s, or with an index the median
    ``infer_samples_per_sec`` of the model's 224 px rows. ``own``: own full-VTAB result rows
    (see :func:`vtab_own_rows`); their complete group means are added with ``ds`` "own"
    and the published speed of their model (NaN for a model the paper does not list).
    """
    speed = table3_data(index)["img_sec_224"] if index is not None else paper.table3()[
        "img_sec_224"]
    t5 = table5_data(own=own)
    t5 = t5[t5["dataset"].str.startswith("Mean_")]
    to_ds = {v: k for k, v in paper.DS_TABLE5.items()}
    out = pd.DataFrame(
        {
            "ds": t5["pretrain"].map(to_ds).fillna("own"),
            "pretrain": t5["pretrain"],
            "model": t5["model"],
            "group": t5["group"],
            "vtab_mean": t5["top1"].astype(float),
        }
    )
    out["img_per_sec"] = out["model"].map(speed)
    return out.reset_index(drop=True)


def fig4_data(index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Figure 4: upstream validation accuracy per model, augmentation and regularisation.

    Columns: ds, model, aug (paper name), reg (bool), measure, value (%).
    ``measure == "val_acc"``: one heat-map cell. From the index: the maximum over weight
    decay (``wd``) of ``final_val`` among upstreams with that ``name``, ``ds``, ``aug`` and
    regularisation (``reg`` is ``do > 0``, i.e. dropout = stochastic depth = 0.1).
    ``measure == "reg_minus_noreg"`` (``aug == "best"``, ``reg`` True): the thin column,
    the best regularised cell minus the best unregularised cell over all augmentations.
    The paper's cells are rounded to whole percent.
    """
    if index is None:
        cells = paper.fig4_cells().drop(columns="aug_index")
        cells = cells.rename(columns={"val_acc": "value"}).assign(measure="val_acc")
        thin = paper.fig4_reg_column().assign(aug="best", reg=True, measure="reg_minus_noreg")
    else:
        ups = derive.upstreams(derive.prepare(index))
        ups = ups[ups["ds"].isin(paper.DATASETS)].assign(reg=ups["do"] > 0)
        cells = (ups.groupby(["ds", "name", "aug", "reg"])["final_val"].max() * 100).reset_index()
        cells = cells.rename(columns={"name": "model", "final_val": "value"})
        cells["aug"] = cells["aug"].map(index_to_paper_aug)
        cells["measure"] = "val_acc"
        best = cells.groupby(["ds", "model", "reg"])["value"].max().unstack("reg")
        thin = (best[True] - best[False]).rename("value").reset_index()
        thin = thin.assign(aug="best", reg=True, measure="reg_minus_noreg")
    out = pd.concat([cells, thin], ignore_index=True)
    return _sorted(out, aug=True)


def fig7_data(index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Figure 7: regularised minus unregularised upstream validation accuracy per aug.

    Columns: ds, model, aug (paper name), value (percentage points). From the index:
    Figure 4's cell with ``reg`` minus the cell without, both the maximum over weight decay
    of ``final_val`` (unrounded, then in percent).
    """
    if index is None:
        return _sorted(paper.fig7_cells().drop(columns="aug_index"), aug=True)
    cells = fig4_data(index)
    cells = cells[cells["measure"] == "val_acc"]
    wide = cells.pivot_table(index=["ds", "model", "aug"], columns="reg", values="value")
    out = (wide[True] - wide[False]).rename("value").reset_index()
    return _sorted(out, aug=True)


def fig5_data(
    index: pd.DataFrame | None = None, *, ds: str = "i21k", resolution: int | None = 224,
    reading: str = "rowmajor",
) -> pd.DataFrame:
    """Figure 5 (left): test accuracy when choosing by upstream instead of downstream val.

    Columns: model, task, delta (percentage points; positive: choosing the checkpoint by
    its upstream validation accuracy gave the higher test accuracy).
    From the index, per model and task (``adapt_ds``), among the upstreams of ``ds`` and
    fine-tunes at ``resolution`` (all resolutions when None):
    cheap = the best upstream (highest ``final_val``), then its fine-tune with the highest
    ``adapt_final_val``; expensive = the fine-tune with the highest ``adapt_final_val`` over
    all upstreams; delta = 100 * (cheap ``adapt_final_test`` - expensive
    ``adapt_final_test``). "INet-1k (v2 val)" needs ImageNetV2 scores, which the index does
    not have: NaN. The paper path returns the printed values (``reading`` chooses between the
    two readings of the printed figure, see :func:`paper.fig5_left`).
    """
    if index is None:
        return paper.fig5_left(reading)
    index = derive.prepare(index)
    rows = []
    ups = derive.best_upstreams(index, ds)
    for task in paper.FIG5_TASKS:
        adapt_ds = paper.FIG5_ADAPT_DS[task]
        if adapt_ds is None:
            cheap = expensive = pd.Series(dtype=float)
        else:
            cheap = derive.best_finetunes(index, ups["filename"], adapt_ds, resolution)
            cheap = cheap.set_index("name")["adapt_final_test"]
            expensive = derive.best_overall_finetunes(index, ds, adapt_ds, resolution)
            expensive = expensive.set_index("name")["adapt_final_test"]
        for model in _model_order(ups["name"]):
            delta = 100 * (cheap.get(model, np.nan) - expensive.get(model, np.nan))
            rows.append({"model": model, "task": task, "delta": delta})
    return pd.DataFrame(rows)


def fig6_data(index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Figure 6: ImageNet-1k top-1 against inference speed, every model, pre-training set
    and resolution.

    Columns: ds, model, resolution, img_per_sec, top1 (%). These are Table 3's fine-tuned
    columns and its img/s (see :func:`table3_data` for the derivation from the index).
    """
    t3 = table3_data(index)
    rows = []
    for (ds, res), col in paper.TABLE3_COLUMNS.items():
        for model, row in t3.iterrows():
            rows.append(
                {"ds": ds, "model": model, "resolution": res,
                 "img_per_sec": row[f"img_sec_{res}"], "top1": row[col]}
            )
    return pd.DataFrame(rows).dropna(subset=["top1"]).reset_index(drop=True)


def fig1_data(index: pd.DataFrame | None = None, *, resolution: int = 384) -> pd.DataFrame:
    """Figure 1: ImageNet-1k top-1 of B/32, B/16, L/16 against pre-training data, with and
    without AugReg.

    Columns: model, pretrain (i1k, i21k_30, i21k, jft300m), augreg (bool), resolution,
    top1 (%).
    With AugReg: Table 3's cell at ``resolution`` (best upstream by ``final_val``, then best
    ``imagenet2012`` fine-tune by ``adapt_final_val``, its ``adapt_final_test``). Without:
    the same, restricted to upstreams with ``aug == "none"`` and ``do == sd == 0`` (best
    over weight decay by ``final_val``). JFT-300M: Table 3's printed ``jft300m_384``
    (``augreg`` True). Needs the full index: the paper never printed the runs without AugReg.
    """
    if index is None:
        raise ValueError(
            "Figure 1 needs the full index table (the paper does not print the runs without "
            "AugReg); load one with augreg_nb.index.load_index(path) or set AUGREG_NB_INDEX, "
            "then call fig1_data(index)"
        )
    index = derive.prepare(index)
    t3 = table3_data(index)
    plain = index[(index["aug"] == paper_to_index_aug("none")) & (index["do"] == 0)
                  & (index["sd"] == 0)]
    rows = []
    for ds in paper.DATASETS:
        col = paper.TABLE3_COLUMNS[(ds, resolution)]
        ups = derive.best_upstreams(plain, ds)
        fts = derive.best_finetunes(plain, ups["filename"], "imagenet2012", resolution)
        plain_top1 = fts.set_index("name")["adapt_final_test"] * 100
        for model in FIG1_MODELS:
            rows.append({"model": model, "pretrain": ds, "augreg": True,
                         "top1": t3[col].get(model, np.nan)})
            rows.append({"model": model, "pretrain": ds, "augreg": False,
                         "top1": plain_top1.get(model, np.nan)})
    jft = paper.table3()["jft300m_384"]
    for model in FIG1_MODELS:
        rows.append({"model": model, "pretrain": "jft300m", "augreg": True, "top1": jft[model]})
    return pd.DataFrame(rows).assign(resolution=resolution)


def _sorted(df: pd.DataFrame, *, aug: bool = False) -> pd.DataFrame:
    """Rows in panel order, then model order (and augmentation order)."""
    keys = {
        "ds": {d: i for i, d in enumerate(paper.DATASETS)},
        "model": {m: i for i, m in enumerate(paper.PAPER_MODELS)},
    }
    if aug:
        keys["aug"] = {a: i for i, a in enumerate((*AUGS, "best"))}
    by = [k for k in keys if k in df.columns]
    if "reg" in df.columns:
        by.insert(by.index("aug") if "aug" in by else len(by), "reg")
    sort = df.assign(**{f"_{k}": df[k].map(v).fillna(99) for k, v in keys.items()})
    order = [f"_{k}" if k in keys else k for k in by]
    sort = sort.sort_values(order, kind="stable")
    return sort.drop(columns=[f"_{k}" for k in keys]).reset_index(drop=True)
