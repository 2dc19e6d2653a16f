"""The paper as data: what "How to train your ViT?" trained, published and swept, in one place.

Every other module imports these facts from here (the model registry, the name parser, the
task registry, the config presets, the index validation, the figures), and
``tests/test_protocol.py`` ties each of those registries back to this module, so a fact
cannot drift apart between two copies.

    >>> from augreg_nb import protocol
    >>> protocol.MODELS[:3], protocol.PRETRAIN_DATASETS
    (('Ti/16', 'S/16', 'S/32'), ('i1k', 'i21k', 'i21k_30'))
    >>> a = protocol.AUGMENTATIONS["medium2"]        # RandAugment l=2, m=15; Mixup 0.5
    >>> a.paper_name, a.randaug_layers, a.randaug_magnitude, a.mixup_alpha
    ('medium2', 2, 15, 0.5)
    >>> protocol.TRANSFER_SWEEP["imagenet2012"]      # the published fine-tunes of ImageNet
    Sweep(steps=(20000,), learning_rates=(0.01, 0.03))
    >>> protocol.warmup_steps(2500), protocol.SWEEP_RESOLUTIONS
    (200, (224, 384))

Sources: the paper (sections 3.3 and 4, Tables 3-5), the published ``index.csv`` and its
file names (see ``data/SOURCES.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------ models

#: The ten AugReg architectures, in the order the toolkit lists them (B/8 was published
#: after the paper).
MODELS: tuple[str, ...] = (
    "Ti/16", "S/16", "S/32", "B/16", "B/32", "B/8", "L/16", "R+Ti/16", "R26+S/32", "R50+L/32",
)
#: The nine models of the paper's tables (all of MODELS but B/8).
PAPER_MODELS: tuple[str, ...] = tuple(m for m in MODELS if m != "B/8")
#: The same nine in the order of the paper's figures (Figure 4's rows: by compute).
MODELS_BY_COMPUTE: tuple[str, ...] = (
    "R+Ti/16", "Ti/16", "S/32", "S/16", "B/32", "R26+S/32", "B/16", "L/16", "R50+L/32",
)

# ---------------------------------------------------------------------- pre-training

#: Pre-training datasets as the index names them: ImageNet-1k 300 epochs, ImageNet-21k 300
#: epochs, ImageNet-21k 30 epochs.
PRETRAIN_DATASETS: tuple[str, ...] = ("i1k", "i21k", "i21k_30")


@dataclass(frozen=True)
class Augmentation:
    """One of the seven augmentation settings of the pre-training sweep (section 3.3)."""

    index_name: str  # as in index.csv and filenames: none, light0, light1, ...
    paper_name: str  # as in the paper's text: none, light1, light2, ...
    randaug_layers: int  # RandAugment number of layers l
    randaug_magnitude: int  # RandAugment magnitude m
    mixup_alpha: float  # Mixup alpha (0: no Mixup)


#: Index augmentation name -> setting (paper section 3.3: (l, m, alpha)), in sweep order.
AUGMENTATIONS: dict[str, Augmentation] = {
    a.index_name: a
    for a in (
        Augmentation("none", "none", 0, 0, 0.0),
        Augmentation("light0", "light1", 2, 0, 0.0),
        Augmentation("light1", "light2", 2, 10, 0.2),
        Augmentation("medium1", "medium1", 2, 15, 0.2),
        Augmentation("medium2", "medium2", 2, 15, 0.5),
        Augmentation("strong1", "strong1", 2, 20, 0.5),
        Augmentation("strong2", "strong2", 2, 20, 0.8),
    )
}

#: Pre-training epochs per pre-training set.
PRETRAIN_EPOCHS: dict[str, int] = {"i1k": 300, "i21k": 300, "i21k_30": 30}
#: The pre-training recipe: Adam peak learning rate, batch, warm-up, gradient clipping.
PRETRAIN_LR = 0.001
PRETRAIN_BATCH = 4096
PRETRAIN_WARMUP_STEPS = 10_000
PRETRAIN_GRAD_CLIP = 1.0
#: The two weight decays of the pre-training sweep (multiplied by the learning rate).
PRETRAIN_WEIGHT_DECAYS: tuple[float, ...] = (0.1, 0.03)
#: Dropout = stochastic depth rates of the sweep: none, or 0.1 ("regularised").
PRETRAIN_REGULARISATION: tuple[float, ...] = (0.0, 0.1)

# -------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class Sweep:
    """The published fine-tuning grid of one task: run lengths x learning rates."""

    steps: tuple[int, ...]
    learning_rates: tuple[float, ...]


#: The learning rates of the published fine-tuning sweep (the index has all four for Pets;
#: Table 4 of the paper reports the first three).
LEARNING_RATES: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)
#: ImageNet-1k's published fine-tunes use two learning rates only (index and Table 4).
IMAGENET_LEARNING_RATES: tuple[float, ...] = (0.01, 0.03)
#: Task (TFDS name) -> its published sweep; the index holds exactly these runs.
TRANSFER_SWEEP: dict[str, Sweep] = {
    "cifar100": Sweep((2500, 10_000), LEARNING_RATES),
    "imagenet2012": Sweep((20_000,), IMAGENET_LEARNING_RATES),
    "kitti": Sweep((500, 2500), LEARNING_RATES),
    "oxford_iiit_pet": Sweep((500, 2500), LEARNING_RATES),
    "resisc45": Sweep((2500, 10_000), LEARNING_RATES),
}
#: Fine-tuning datasets (TFDS names) of the published sweep.
ADAPT_DATASETS: tuple[str, ...] = tuple(TRANSFER_SWEEP)
#: The sweep of the 19 VTAB tasks (VTAB-1k and full splits): lengths x LEARNING_RATES.
VTAB_SWEEP = Sweep((500, 2500), LEARNING_RATES)
#: Resolutions of every task's sweep.
SWEEP_RESOLUTIONS: tuple[int, ...] = (224, 384)
#: Warm-up steps per run length (paper, Table 4).
WARMUP_STEPS: dict[int, int] = {500: 100, 2500: 200, 10_000: 500, 20_000: 500}

#: The transfer recipe, the same for every task: SGD with momentum (kept in bfloat16),
#: global-norm clipping, no weight decay, batch 512, linear warm-up then cosine decay.
GLOBAL_BATCH = 512
MOMENTUM = 0.9
MOMENTUM_DTYPE = "bfloat16"
GRAD_CLIP = 1.0


def warmup_steps(total_steps: int) -> int:
    """Warm-up for a run of ``total_steps``: Table 4 of the paper for its run lengths.

    Other lengths take the warm-up of the longest table entry not above them; runs shorter
    than 500 steps warm up for a fifth of their length (as 500 -> 100 does).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    shorter = [n for n in WARMUP_STEPS if n <= total_steps]
    if not shorter:
        return max(1, total_steps // 5)
    return WARMUP_STEPS[max(shorter)]


# ----------------------------------------------------------------------------- index

#: The 21 columns of the published ``index.csv``, in its order, and what each means.
COLUMN_DOCS: dict[str, str] = {
    "name": "model as the paper names it: " + ", ".join(MODELS),
    "ds": "pre-training set: i1k (ImageNet-1k, 300 epochs), i21k (ImageNet-21k, 300 epochs), "
    "i21k_30 (ImageNet-21k, 30 epochs)",
    "epochs": "pre-training epochs (300 or 30)",
    "lr": "pre-training peak learning rate (0.001 for every checkpoint)",
    "aug": "augmentation, index name (" + ", ".join(AUGMENTATIONS) + "); light0/light1 are "
    "the paper's light1/light2, see protocol.AUGMENTATIONS",
    "wd": "pre-training weight decay (0.03 or 0.1)",
    "do": "pre-training dropout (0.0 or 0.1)",
    "sd": "pre-training stochastic depth (0.0 or 0.1)",
    "best_val": "best upstream validation accuracy during pre-training (fraction; minival "
    "split for ImageNet)",
    "final_val": "upstream validation accuracy at the end of pre-training (fraction); the "
    "recommended checkpoint per model is the i21k row with the highest final_val",
    "final_test": "upstream test accuracy at the end of pre-training (fraction; ImageNet's "
    "validation set for i1k), empty where there is none",
    "adapt_ds": "fine-tuning task (TFDS name): " + ", ".join(ADAPT_DATASETS),
    "adapt_lr": "fine-tuning learning rate (" + ", ".join(map(str, LEARNING_RATES)) + ")",
    "adapt_steps": "fine-tuning steps at batch 512 ("
    + ", ".join(str(n) for n in WARMUP_STEPS) + ")",
    "adapt_resolution": "fine-tuning image size in pixels (224 or 384)",
    "adapt_final_val": "validation accuracy after fine-tuning (fraction): choose runs by this",
    "adapt_final_test": "test accuracy after fine-tuning (fraction): report this",
    "params": "parameter count of the fine-tuned model (empty for B/8)",
    "infer_samples_per_sec": "inference throughput on a V100 at adapt_resolution, timm "
    "implementation (empty for B/8)",
    "filename": "upstream checkpoint file: {bucket}/{filename}.npz",
    "adapt_filename": "fine-tuned checkpoint file: {bucket}/{adapt_filename}.npz",
}
#: The index's columns, in order.
COLUMNS: tuple[str, ...] = tuple(COLUMN_DOCS)
#: Size of the complete published table: rows and distinct upstream checkpoints.
EXPECTED_ROWS = 51_509
EXPECTED_UPSTREAM = 759
