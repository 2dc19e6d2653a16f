"""The paper's printed numbers, read from the shipped tables, and the labels the figures use.

Every reader returns a fresh DataFrame in percent (as printed), so builders can combine
them freely::

    from augreg_nb.figures import paper
    paper.table3()                 # Table 3, one row per model, columns as printed
    paper.fig4_cells()             # Figure 4 cells (rounded %), index augmentation names too

Pre-training sets are named as in the index (``i1k``, ``i21k_30``, ``i21k``); ``DS_LABELS``
gives the paper's panel titles.
"""

from __future__ import annotations

import pandas as pd

from augreg_nb import protocol
from augreg_nb.names import index_to_paper_aug
from augreg_nb.resources import data_path

#: The 9 models of the paper's figures, in the order of Figure 4's rows (by compute).
PAPER_MODELS = protocol.MODELS_BY_COMPUTE
#: Pre-training sets as the index spells them, in the paper's panel order.
DATASETS = ("i1k", "i21k_30", "i21k")
#: Panel titles of Figures 4 and 7.
DS_LABELS = {
    "i1k": "ImageNet-1k, 300ep",
    "i21k_30": "ImageNet-21k, 30ep",
    "i21k": "ImageNet-21k, 300ep",
}
#: The ``pretrain`` labels of Table 5.
DS_TABLE5 = {
    "i1k": "ImageNet-1k (300ep)",
    "i21k_30": "ImageNet-21k (30ep)",
    "i21k": "ImageNet-21k (300ep)",
}
#: Table 3's fine-tuned ImageNet columns: (ds, resolution) -> column.
TABLE3_COLUMNS = {
    ("i1k", 224): "i1k_300_224",
    ("i21k_30", 224): "i21k_30_224",
    ("i21k", 224): "i21k_300_224",
    ("i1k", 384): "i1k_300_384",
    ("i21k_30", 384): "i21k_30_384",
    ("i21k", 384): "i21k_300_384",
}
#: Human-readable headers of Table 3's columns.
TABLE3_HEADERS = {
    "img_sec_224": "img/s 224",
    "i1k_up_224": "i1k up 224",
    "i1k_300_224": "i1k 300ep 224",
    "i21k_30_224": "i21k 30ep 224",
    "i21k_300_224": "i21k 300ep 224",
    "img_sec_384": "img/s 384",
    "i1k_300_384": "i1k 300ep 384",
    "i21k_30_384": "i21k 30ep 384",
    "i21k_300_384": "i21k 300ep 384",
    "i21k_v2_384": "i21k (v2 sel.) 384",
    "jft300m_384": "JFT-300M 384",
}
VTAB_GROUPS = ("natural", "specialized", "structured")
#: Figure 5's columns: the task on which the expensive selection is made.
FIG5_TASKS = (
    "INet-1k (v2 val)", "CIFAR-100", "Pets", "Resisc45", "Kitti", "ImageNet-1k (minival)",
)
#: Figure 5 column -> index ``adapt_ds`` (None: the index has no such column).
FIG5_ADAPT_DS = {
    "INet-1k (v2 val)": None,
    "CIFAR-100": "cifar100",
    "Pets": "oxford_iiit_pet",
    "Resisc45": "resisc45",
    "Kitti": "kitti",
    "ImageNet-1k (minival)": "imagenet2012",
}


def _read(name: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(data_path("paper", name), **kwargs)


def table3() -> pd.DataFrame:
    """Table 3 (ImageNet-1k top-1 in %, V100 img/s), indexed by model."""
    return _read("table3_imagenet1k_transfer.csv").set_index("model")


def table5_long() -> pd.DataFrame:
    """Table 5 in long form: pretrain, model, group, dataset, top1 (%), means included."""
    return _read("table5_vtab_long.csv")


def table5_wide() -> pd.DataFrame:
    """Table 5 as printed: one row per (pretrain, model), one column per VTAB task."""
    return _read("table5_vtab_wide.csv")


def fig4_cells() -> pd.DataFrame:
    """Figure 4 cells: ds, model, aug (paper name), aug_index, reg, val_acc (%).

    The printed figure labels the two strongest settings heavy1/heavy2; they are called
    strong1/strong2 here as in the paper's text (:mod:`augreg_nb.names`).
    """
    df = _read("fig4_upstream_val_acc_heatmap.csv")
    return pd.DataFrame(
        {
            "ds": df["index_ds"],
            "model": df["model"],
            "aug": df["aug_index_csv_inferred"].map(index_to_paper_aug),
            "aug_index": df["aug_index_csv_inferred"],
            "reg": df["dropout"] > 0,
            "val_acc": df["val_acc_pct_rounded"].astype(float),
        }
    )


def fig4_reg_column() -> pd.DataFrame:
    """Figure 4's thin column: ds, model, reg_minus_noreg (best reg minus best no-reg, %)."""
    df = _read("fig4_best_reg_minus_best_noreg.csv")
    return pd.DataFrame(
        {"ds": df["index_ds"], "model": df["model"], "value": df["reg_minus_noreg_pct"] * 1.0}
    )


def fig7_cells() -> pd.DataFrame:
    """Figure 7: ds, model, aug (paper name), aug_index, value (reg minus no-reg, %)."""
    df = _read("fig7_reg_minus_noreg_per_aug.csv")
    return pd.DataFrame(
        {
            "ds": df["index_ds"],
            "model": df["model"],
            "aug": df["aug_index_csv_inferred"].map(index_to_paper_aug),
            "aug_index": df["aug_index_csv_inferred"],
            "value": df["reg_minus_noreg_pct"] * 1.0,
        }
    )


def fig5_left(reading: str = "rowmajor") -> pd.DataFrame:
    """Figure 5 (left): model, task, delta (percentage points).

    The printed figure can be read two ways; ``reading="rowmajor"`` (the likely one) or
    ``"colmajor"``.
    """
    df = _read("fig5_left_upstream_vs_downstream_selection.csv", dtype=str)
    columns = {
        "rowmajor": "delta_rowmajor_reading(likely)",
        "colmajor": "delta_colmajor_reading(alternative)",
    }
    if reading not in columns:
        raise ValueError(f"reading={reading!r} is unknown; use 'rowmajor' or 'colmajor'")
    return pd.DataFrame(
        {
            "model": df["model"],
            "task": df["dataset"],
            "delta": df[columns[reading]].astype(float),
        }
    )
