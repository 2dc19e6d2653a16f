"""A synthetic full index built from the paper's printed numbers (for tests and demos).

``paper_index()`` returns a DataFrame in the published index's 21-column schema whose
derived figures and tables reproduce the shipped paper tables to their printed rounding:
Figure 4's cells (max over weight decay of ``final_val``) and its "reg - noreg" column,
Figure 7, Table 3's fine-tuned ImageNet columns, i1k upstream column and img/s, and
Figure 5 (left, row-major reading). Values the paper does not print (the other weight
decay, the non-selected fine-tunes, runs without AugReg) are filled in deterministically
below the selected ones.
It is NOT the real index: use it only to check that the index path of
:mod:`augreg_nb.figures.tidy` reproduces the paper path.

    >>> from augreg_nb.figures.synthetic import paper_index
    >>> from augreg_nb.figures import table3_data
    >>> table3_data(paper_index())["i21k_300_384"]["B/16"]   # doctest: +SKIP
    85.49
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pandas as pd

from augreg_nb.figures import paper
from augreg_nb.figures.derive import INDEX_COLUMNS
from augreg_nb.names import AUG_NAMES, CheckpointName, model_to_prefix
from augreg_nb.protocol import SWEEP_RESOLUTIONS
from augreg_nb.resources import data_path

#: Pre-training learning rate and epochs per index ``ds``.
_DS_NAME = {"i1k": ("i1k", 300), "i21k_30": ("i21k", 30), "i21k": ("i21k", 300)}
#: Figure 5 tasks in the index: (adapt_ds, adapt_steps, base val, base test).
_TASKS = {
    "cifar100": (10000, 0.92, 0.90),
    "oxford_iiit_pet": (500, 0.94, 0.93),
    "resisc45": (2500, 0.96, 0.95),
    "kitti": (500, 0.85, 0.82),
}
_FIG5_TASK = {v: k for k, v in paper.FIG5_ADAPT_DS.items() if v is not None}


@cache
def _params(model: str) -> float:
    layout = json.loads(data_path("npz_layout", f"{model_to_prefix(model)}.json").read_text())
    return float(sum(int(np.prod(shape)) for shape in layout["keys"].values()))


def _offsets(c0: dict, c1: dict, d: dict, thin: float) -> dict:
    """Per augmentation, offsets (no reg, reg) inside each cell's rounding interval such
    that reg - noreg rounds to Figure 7's ``d`` and the best reg minus the best no-reg
    cell rounds to the thin column ``thin``; closest to Figure 7 where that is impossible.

    Works in tenths of a percent (integers) so that comparisons are exact."""
    t0 = {a: round(10 * v) for a, v in c0.items()}
    t1 = {a: round(10 * v) for a, v in c1.items()}
    grid = range(-4, 5)
    pairs = {}
    for aug in t0:
        target = round(10 * d[aug])
        ok = [(a0, a1) for a0 in grid for a1 in grid
              if abs(t1[aug] + a1 - t0[aug] - a0 - target) <= 4]
        if not ok:  # the rounded cells allow no such difference: get as close as possible
            e = int(np.clip(d[aug] - (c1[aug] - c0[aug]), -1, 1))
            ok = [(-4 * e, 4 * e)]
        pairs[aug] = ok
    chosen = None
    for m0 in sorted({t0[a] + p[0] for a in t0 for p in pairs[a]}):
        for m1 in sorted({t1[a] + p[1] for a in t1 for p in pairs[a]}):
            if abs(m1 - m0 - round(10 * thin)) > 4:
                continue
            choice = {}
            for aug, ok in pairs.items():
                fit = [p for p in ok if t0[aug] + p[0] <= m0 and t1[aug] + p[1] <= m1]
                if not fit:
                    break
                # Prefer the pair that reaches the maxima, then the smallest offsets.
                choice[aug] = max(fit, key=lambda p, a=aug: (
                    (t0[a] + p[0] == m0) + (t1[a] + p[1] == m1), -abs(p[0]) - abs(p[1])))
            else:
                if (any(t0[a] + p[0] == m0 for a, p in choice.items())
                        and any(t1[a] + p[1] == m1 for a, p in choice.items())):
                    chosen = choice
                    break
        if chosen:
            break
    if chosen is None:
        chosen = {a: min(ok, key=lambda p: abs(p[0]) + abs(p[1])) for a, ok in pairs.items()}
    return {a: {False: p[0] / 10, True: p[1] / 10} for a, p in chosen.items()}


def _upstreams() -> pd.DataFrame:
    """One row per upstream: 9 models x 3 data sets x 7 augs x {no reg, reg} x 2 wd."""
    cells = paper.fig4_cells().set_index(["ds", "model", "aug_index", "reg"])["val_acc"]
    fig7 = paper.fig7_cells().set_index(["ds", "model", "aug_index"])["value"]
    thin = paper.fig4_reg_column().set_index(["ds", "model"])["value"]
    rows, k = [], 0
    for ds in paper.DATASETS:
        for model in paper.PAPER_MODELS:
            c0 = {aug: cells[(ds, model, aug, False)] for aug in AUG_NAMES}
            c1 = {aug: cells[(ds, model, aug, True)] for aug in AUG_NAMES}
            d = {aug: fig7[(ds, model, aug)] for aug in AUG_NAMES}
            offsets = _offsets(c0, c1, d, thin[(ds, model)])
            for aug in AUG_NAMES:
                for reg, c in ((False, c0[aug]), (True, c1[aug])):
                    for wd, drop in ((0.1, 0.0), (0.03, 1.0)):
                        k += 1
                        val = (c + offsets[aug][reg] - drop) / 100 + 1e-7 * k  # unique max
                        rows.append({"name": model, "ds": ds, "aug": aug, "wd": wd,
                                     "do": 0.1 * reg, "sd": 0.1 * reg, "final_val": val})
    ups = pd.DataFrame(rows)
    ups["best_val"] = ups["final_val"]
    ups["lr"] = 0.001
    ups["epochs"] = ups["ds"].map(lambda d: float(_DS_NAME[d][1]))
    ups["params"] = ups["name"].map(_params)
    ups["filename"] = [_name(r).filename for r in ups.itertuples()]
    # Order within (model, ds) by final_val: rank 0 is the best upstream, 1 the runner-up.
    ups["rank"] = ups.groupby(["name", "ds"])["final_val"].rank(ascending=False) - 1
    best = ups[ups["rank"] == 0].set_index(["name", "ds"])["final_val"]
    ups["gap"] = [best[(r.name, r.ds)] - r.final_val for r in ups.itertuples()]
    t3 = paper.table3()
    up_test = t3["i1k_up_224"] / 100
    ups["final_test"] = [
        up_test[r.name] - r.gap if r.ds == "i1k" else np.nan for r in ups.itertuples()
    ]
    return ups


def _name(row, adapt=None) -> CheckpointName:
    ds, epochs = _DS_NAME[row.ds]
    name = CheckpointName(model=row.name, ds=ds, epochs=epochs, lr=0.001, aug=row.aug,
                          wd=row.wd, do=row.do, sd=row.sd)
    return name.finetuned(*adapt) if adapt else name


def _finetune_rows(ups: pd.DataFrame, fig5: pd.Series) -> list[dict]:
    t3 = paper.table3()
    rows = []
    for up in ups.itertuples():
        for res in SWEEP_RESOLUTIONS:
            top = t3[paper.TABLE3_COLUMNS[(up.ds, res)]][up.name] / 100
            val, test = top + 0.04 - up.gap, top - up.gap
            delta = fig5.get((up.name, "ImageNet-1k (minival)"), 0.0)
            if up.ds == "i21k" and res == 224 and up.rank == 1 and delta != 0:
                val, test = top + 0.05, top - delta / 100  # the expensive pick
            for lr, dv, dt in ((0.01, 0.0, 0.0), (0.03, -0.005, -0.004)):
                rows.append(_row(up, ("imagenet2012", 20000, lr, res), val + dv, test + dt,
                                 t3[f"img_sec_{res}"][up.name]))
        if up.ds != "i21k":
            continue
        for adapt_ds, (steps, base_val, base_test) in _TASKS.items():
            delta = fig5.get((up.name, _FIG5_TASK[adapt_ds]), 0.0)
            val, test = base_val - 0.02 - up.gap, base_test - 0.02 - up.gap
            if up.rank == 0:
                val, test = base_val, base_test
            elif up.rank == 1 and delta != 0:
                val, test = base_val + 0.01, base_test - delta / 100
            rows.append(_row(up, (adapt_ds, steps, 0.003, 224), val, test,
                             t3["img_sec_224"][up.name]))
    return rows


def _row(up, adapt, val, test, speed) -> dict:
    name = _name(up, adapt)
    row = {c: getattr(up, c) for c in ("name", "ds", "epochs", "lr", "aug", "wd", "do", "sd",
                                         "best_val", "final_val", "final_test", "params",
                                         "filename")}
    row.update(
        adapt_ds=adapt[0], adapt_steps=adapt[1], adapt_lr=adapt[2], adapt_resolution=adapt[3],
        adapt_final_val=val, adapt_final_test=test, infer_samples_per_sec=float(speed),
        adapt_filename=name.filename,
    )
    return row


def paper_index() -> pd.DataFrame:
    """The synthetic index (4,032 rows, 21 columns) built from the paper's numbers."""
    fig5 = paper.fig5_left("rowmajor").set_index(["model", "task"])["delta"]
    ups = _upstreams()
    df = pd.DataFrame(_finetune_rows(ups, fig5))[list(INDEX_COLUMNS)]
    return df.reset_index(drop=True)
