"""Fine-tuning configurations: the paper's transfer recipe as a locked, documented config.

``get_config(preset)`` returns a locked :class:`ml_collections.ConfigDict`; every field is
explained where it is defined below. A misspelt field fails loudly with "did you mean".

    from augreg_nb.config import get_config, preset_for
    config = get_config("cifar100-2500-0.01-384")   # task-steps-lr-resolution, from the sweep
    config = preset_for("oxford_iiit_pet", steps=500, lr=0.003, resolution=224,
                        checkpoint="R26+S/32")
    config = get_config("smoke")                    # seconds on CPU: tiny model, fake
                                                     # checkpoint, tiny real-image dataset
    config.base_lr = 0.03                           # fields are typed and checked
    apply_overrides(config, ["micro_batches=4", "workdir=/tmp/run"])  # what --set does

The command line takes the same presets and overrides::

    augreg-nb finetune --preset cifar100-2500-0.01-384 --set micro_batches=16 --workdir runs/c100

The recipe itself (identical for every task, see ``data/``'s protocol notes): SGD with
momentum 0.9 (momentum kept in bfloat16), gradients clipped at global norm 1.0, no weight
decay, global batch 512, linear warm-up then cosine decay to zero, softmax cross-entropy,
zero-initialised head.
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Iterable
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from augreg_nb import preprocess, protocol
from augreg_nb.download import cache_dir
from augreg_nb.names import (
    AUG_NAMES,
    format_float,
    paper_to_index_aug,
    safe_folder_name,
    short_hash,
    shorten,
    unknown_value_error,
)
from augreg_nb.tasks import get_task, is_folder_task, list_tasks

#: Resolutions of the published sweep (the paper's facts live in augreg_nb.protocol).
SWEEP_RESOLUTIONS = protocol.SWEEP_RESOLUTIONS

#: Model used when ``checkpoint`` names no model ("B/16" = its recommended i21k upstream).
DEFAULT_CHECKPOINT = "B/16"
#: The checkpoint names of fakes: "fake:<model>" is a fake upstream checkpoint of the model in
#: the published layout, which the resolver writes on first use (the source is registered by
#: ``augreg_nb.random_checkpoints``); the smoke preset fine-tunes "fake:testing".
FAKE_CHECKPOINT_PREFIX = "fake:"
#: The model whose fake checkpoints the notebooks' smoke mode serves (the smallest AugReg one).
SMOKE_MODEL = "Ti/16"
#: The tiny real-image task of the smoke preset (the digits shipped in augreg_nb.digits).
SMOKE_TASK = "digits"
#: Training recipes: the paper's fine-tuning ("transfer") and its pre-training ("augreg").
RECIPES = ("transfer", "augreg")
#: The losses a run can use ("auto": softmax for transfer, sigmoid for augreg).
LOSSES = ("auto", "softmax", "sigmoid")
#: What a run does when its workdir holds a run of another config (augreg_nb.run_folder).
IF_DIFFERENT = ("refuse", "new_folder")
#: ``checkpoint`` values that mean "random initialisation" (train from scratch).
SCRATCH_CHECKPOINTS = ("", "scratch")


def index_aug(aug: str) -> str:
    """The index name of an ``aug`` value: an index name as in checkpoint names (``none``,
    ``light0``, ``light1``, ``medium1``, ``medium2``, ``strong1``, ``strong2``), a paper name
    that is no index name (``light2``, ``heavy1``, ``heavy2``) or ``paper:<paper name>``
    (``paper:light1`` is index ``light0``; a bare ``light1`` is the index name)."""
    text = str(aug).strip()
    if text in AUG_NAMES:
        return text
    try:
        return paper_to_index_aug(text.removeprefix("paper:"))
    except ValueError:
        raise unknown_value_error(
            "augmentation setting (aug)", aug,
            AUG_NAMES + ("light2", "paper:light1", "heavy1", "heavy2")) from None


def is_scratch(checkpoint) -> bool:
    """Whether ``checkpoint`` asks for a random initialisation ("" or "scratch")."""
    return str(checkpoint or "").strip() in SCRATCH_CHECKPOINTS


def warmup_for(total_steps: int) -> int:
    """Warm-up steps the paper uses for a run of ``total_steps`` (Table 4).

    See ``augreg_nb.protocol.warmup_steps`` for lengths outside the table.
    """
    return protocol.warmup_steps(total_steps)


def slug(text: str) -> str:
    """``text`` with every character but letters, digits and ``._-`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def task_folder_name(task: str) -> str:
    """The task's part of a run folder's name, safe whatever the task string holds
    (:func:`augreg_nb.names.safe_folder_name`): a folder of images is named by its base name
    and a short hash of its full path, so two folders called ``photos`` stay apart."""
    text = str(task)
    if is_folder_task(text):
        full = Path(text).expanduser().resolve()
        return f"{safe_folder_name(full.name, max_len=40)}-{short_hash(str(full))}"
    return safe_folder_name(text, max_len=80)


def run_name(config, *, in_sweep: bool = False) -> str:
    """The one rule that names a run's folder, from the fields that make the run:

    ``<checkpoint>--<task>-steps_<n>-lr_<lr>-res_<px>-seed_<seed>`` (checkpoint: its file
    stem, or the model name; ``scratch_<model>`` from random initialisation; task: see
    :func:`task_folder_name`), followed by :func:`settings_suffix` for runs with AugReg
    settings. Inside a sweep's folder, which already names the checkpoint and task, only
    the grid point: ``steps_<n>-lr_<lr>-res_<px>`` and the same suffix (``in_sweep=True``).
    Every part is a safe folder name (no separators, no ``..``), and a name longer than
    :data:`augreg_nb.names.MAX_FOLDER_NAME` is cut and ends in a hash of the whole.
    """
    point = f"steps_{config.total_steps}-lr_{config.base_lr}-res_{config.resolution}"
    if in_sweep:
        return safe_folder_name(point + settings_suffix(config))
    if is_scratch(config.checkpoint):
        stem = f"scratch_{config.model}"
    else:
        stem = Path(str(config.checkpoint)).name.removesuffix(".npz").removesuffix(
            ".safetensors")
    return safe_folder_name(
        f"{safe_folder_name(stem, max_len=80)}--{task_folder_name(config.task)}-{point}"
        f"-seed_{config.seed}{settings_suffix(config)}")


def uses_augreg(config) -> bool:
    """Whether a run uses the upstream recipe or any AugReg setting (aug, do, sd)."""
    return (config.get("recipe", "transfer") == "augreg" or config.get("aug", "none") != "none"
            or bool(config.get("do", 0.0)) or bool(config.get("sd", 0.0)))


def settings_suffix(config) -> str:
    """``-augreg-aug_<aug>-wd_<wd>-do_<do>-sd_<sd>`` for the augreg recipe (the settings by
    the names checkpoints carry, aug as its index name), the same without ``-augreg`` for a
    transfer run with augmentation or regularisation, else "" (plain fine-tuning)."""
    if not uses_augreg(config):
        return ""
    f = format_float
    head = "-augreg" if config.get("recipe", "transfer") == "augreg" else ""
    return (f"{head}-aug_{index_aug(config.aug)}-wd_{f(float(config.wd))}"
            f"-do_{f(float(config.do))}-sd_{f(float(config.sd))}")


def default_workdir(config) -> Path:
    """``<cache>/runs/<run_name>``: where a run goes when ``config.workdir`` is None."""
    return cache_dir() / "runs" / run_name(config)


def default_sweep_root(config) -> Path:
    """``<cache>/runs/sweep-<checkpoint>--<task>``: where a sweep's runs go by default."""
    return cache_dir() / "runs" / safe_folder_name(
        f"sweep-{safe_folder_name(str(config.checkpoint), max_len=80)}"
        f"--{task_folder_name(config.task)}")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to fine-tune. A model name ("B/16": its recommended i21k upstream from the
    # index), an upstream or fine-tuned AugReg filename, a path to a .npz / timm
    # .safetensors file, or "fake:<model>" for a fake checkpoint in the published layout.
    c.checkpoint = DEFAULT_CHECKPOINT
    # Model architecture ("B/16", "R26+S/32", "testing", ...). None: inferred from the
    # checkpoint's name.
    c.model = config_dict.placeholder(str)
    # Task to fine-tune on: a TFDS name of the sweep (cifar100, oxford_iiit_pet, resisc45,
    # kitti, imagenet2012) or another name known to augreg_nb.tasks.get_task.
    c.task = "cifar100"
    # Training and evaluation image side in pixels (224 or 384 in the sweep).
    c.resolution = 384
    # Peak learning rate after warm-up (sweep: 0.001, 0.003, 0.01, 0.03; ImageNet 0.01, 0.03).
    c.base_lr = 0.01
    # Number of optimiser steps; each sees global_batch images.
    c.total_steps = 2500
    # Linear warm-up steps before the cosine decay (Table 4: 500->100, 2500->200, 10k->500).
    c.warmup_steps = 200
    # Images per optimiser step, summed over all devices, hosts and micro-batches (512).
    c.global_batch = protocol.GLOBAL_BATCH
    # Gradient-accumulation steps per optimiser step: each device processes
    # global_batch / (devices * micro_batches) images at a time. Raise it to fit memory;
    # the result does not depend on it. global_batch must divide by devices * micro_batches.
    c.micro_batches = 8
    # Seed of the data order and augmentation; batch k is a function of (seed, k) only.
    c.seed = 0
    # Evaluate on val and test every this many steps (0: only at the end).
    c.eval_every = 500
    # Save the full training state (params, momentum, step) every this many steps (0: only
    # at the end and when stopped); a rerun with the same workdir resumes from it.
    c.checkpoint_every = 500
    # Record training loss, learning rate and speed every this many steps.
    c.log_every = 10
    # Folder of the run (state, metrics history, exported .npz). None: a folder under the
    # cache named after the run.
    c.workdir = config_dict.placeholder(str)
    # Compute dtype of activations ("float32" or "bfloat16"); parameters stay float32.
    c.dtype = "float32"
    # Dtype of the SGD momentum buffer: "bfloat16" as in the reference, or "float32".
    c.momentum_dtype = protocol.MOMENTUM_DTYPE
    # SGD momentum.
    c.momentum = protocol.MOMENTUM
    # Clip the (accumulated) gradient to this global L2 norm (0: no clipping).
    c.grad_clip = protocol.GRAD_CLIP
    # Parameter placement over the device mesh: "replicated" (data parallel) or "sharded"
    # (large arrays split over devices along their largest divisible axis, for models that
    # do not fit one device).
    c.param_sharding = "replicated"
    # Train-time crop (augreg_nb.preprocess says exactly what each does): "inception_crop"
    # (big_vision, default), "resize_random_crop" (big_vision's resize to 448/384 x resolution
    # then random crop), "random_crop" (vit_jax's random 5%-100% area crop, float resize),
    # "resize" or "resize_flip" (the whole image; VTAB tasks whose label a crop would
    # change). A task that names its own (Task.train_preprocess) must be trained with it;
    # preset_for sets it.
    c.train_preprocess = "inception_crop"
    # Eval-time resize: "resize_crop" (short side to 448/384 x resolution, centre crop)
    # or "resize" (plain resize, vit_jax).
    c.eval_preprocess = "resize_crop"
    # Images per evaluation batch over all devices (the last batch is padded and masked).
    c.eval_batch = 256
    # Shuffle buffer of encoded training images.
    c.shuffle_buffer = 50_000
    # TFDS data folder. None: TFDS's default (or TFDS_DATA_DIR).
    c.data_dir = config_dict.placeholder(str)
    # Write the final parameters as {adapt_filename}.npz in the published layout.
    c.export = True
    # Training recipe: "transfer" (the paper's fine-tuning: SGD with momentum, softmax, no
    # augmentation) or "augreg" (the paper's upstream recipe: Adam with decoupled weight
    # decay ``wd``, RandAugment + Mixup ``aug``, dropout ``do``, stochastic depth ``sd``).
    c.recipe = "transfer"
    # AugReg augmentation by the names checkpoints carry: none, light0, light1, medium1,
    # medium2, strong1, strong2 (index names), or the paper's light1/light2 given as
    # paper names through augreg_nb.names.paper_to_index_aug. Both recipes accept it.
    c.aug = "none"
    # Weight decay in the paper's convention (multiplied by the learning rate; AdamW), only
    # with recipe="augreg": 0.1 or 0.03 in the paper.
    c.wd = 0.0
    # Dropout rate after the MLP and embedding (AugReg "do": 0.0 or 0.1).
    c.do = 0.0
    # Stochastic depth of the last block (AugReg "sd": 0.0 or 0.1), rising linearly.
    c.sd = 0.0
    # Loss: "auto" (softmax for transfer; the upstream sigmoid loss for augreg, with the head
    # bias initialised to -log(classes)), "softmax" or "sigmoid".
    c.loss = "auto"
    # When the workdir holds a run of another config (it records the config that produced
    # it, augreg_nb.run_folder): "refuse" (say which fields differ) or "new_folder" (run in
    # <workdir>-<hash of the config> instead). Never changes what a run computes.
    c.if_different = "refuse"
    return c


def preset_for(
    task: str,
    steps: int,
    lr: float,
    resolution: int,
    *,
    checkpoint: str = DEFAULT_CHECKPOINT,
    micro_batches: int = 8,
) -> ml_collections.ConfigDict:
    """The config of one run of the paper's sweep (warm-up from Table 4), locked."""
    c = _base()
    c.task = task
    use_task_preprocess(c)
    c.total_steps = int(steps)
    c.warmup_steps = warmup_for(int(steps))
    c.base_lr = float(lr)
    c.resolution = int(resolution)
    c.checkpoint = checkpoint
    c.micro_batches = int(micro_batches)
    c.eval_every = max(1, int(steps) // 5)
    c.checkpoint_every = c.eval_every
    c.lock()
    return c


def _smoke() -> ml_collections.ConfigDict:
    # About 10-20 s on 2 CPU cores; reaches about 65-70% test accuracy on the 10 digit classes
    # (chance: 10%) from a fake (random, well-scaled) checkpoint of the "testing" ViT.
    c = _base()
    c.checkpoint = FAKE_CHECKPOINT_PREFIX + "testing"
    c.model = "testing"
    c.task = SMOKE_TASK
    c.resolution = 32
    c.base_lr = 0.1
    c.total_steps = 300
    c.warmup_steps = 30
    c.global_batch = 64
    c.micro_batches = 1
    c.eval_every = 100
    c.checkpoint_every = 100
    c.log_every = 10
    c.train_preprocess = "resize_random_crop"  # a 5%-area crop of a 32 px digit is noise
    c.eval_batch = 128
    c.shuffle_buffer = 2000
    c.lock()
    return c


def augreg_preset(
    task: str,
    *,
    checkpoint: str = "scratch",
    model: str | None = "Ti/16",
    recipe: str = "augreg",
    aug: str = "medium2",
    wd: float = 0.1,
    do: float = 0.0,
    sd: float = 0.0,
    steps: int = 2000,
    lr: float = 0.001,
    resolution: int = 224,
    batch: int = 128,
    micro_batches: int = 1,
) -> ml_collections.ConfigDict:
    """A locked config for an AugReg run: the upstream recipe (or the transfer recipe with
    ``recipe="transfer"``, then ``wd`` must be 0) with augmentation and regularisation by the
    checkpoints' names, from scratch (``checkpoint="scratch"``) or from a checkpoint."""
    c = _base()
    c.task, c.checkpoint, c.model, c.recipe = task, checkpoint, model, recipe
    c.aug, c.wd, c.do, c.sd = aug, float(wd), float(do), float(sd)
    c.total_steps, c.base_lr, c.resolution = int(steps), float(lr), int(resolution)
    c.warmup_steps = max(1, int(steps) // 10)
    c.global_batch, c.micro_batches = int(batch), int(micro_batches)
    c.eval_every = max(1, int(steps) // 5)
    c.checkpoint_every = c.eval_every
    c.lock()
    return c


def _augreg_smoke() -> ml_collections.ConfigDict:
    # A tiny ViT from scratch on the 8x8 digits (upscaled to 32 px) with medium2 (RandAugment
    # 2 layers at magnitude 15, Mixup 0.5), dropout = stochastic depth = 0.1, weight decay
    # 0.1. Measured on 2 CPU cores shared with other jobs (600 steps of 128, 110 s with the
    # dataset prepared, where 300 steps of 64 took 136 s): test accuracy 43% (val 46%; chance
    # 10%); 300 steps of 64 reached 17-22%, 1200 of 64 41%.
    # RandAugment's translate and cutout are fractions of the picture (the authors' pixels
    # at 224 px, augreg_nb.augment.GEOMETRIES). Softmax, not the upstream sigmoid: on 10
    # classes from scratch the sigmoid loss learned far slower here (test 13% vs 27% at 300
    # steps; 66% vs 71% without augmentation).
    c = augreg_preset(SMOKE_TASK, checkpoint="scratch", model="testing", aug="medium2",
                      wd=0.1, do=0.1, sd=0.1, steps=600, lr=0.003, resolution=32, batch=128)
    c.unlock()
    c.loss = "softmax"
    c.warmup_steps = 30
    c.eval_every = c.checkpoint_every = 150
    c.train_preprocess = "resize_random_crop"  # a 5%-area crop of a 32 px digit is noise
    c.eval_batch = 128
    c.shuffle_buffer = 2000
    c.lock()
    return c


#: The AugReg presets by name. The Pets grid (37 classes, 3680 training images) fits a
#: Colab GPU (T4): from scratch Ti/16 at 224 px, 2000 steps of 128 (about 70 epochs) takes
#: about 25-35 min per run on a T4 (bfloat16 roughly halves it); the transfer run from the
#: recommended AugReg Ti/16 checkpoint (500 steps of 128 with the transfer recipe, the
#: paper's 0.003) about 5-8 min. Both take --set aug=... wd=... do=... sd=... to form a grid.
AUGREG_PRESETS = {
    "augreg-smoke": _augreg_smoke,
    "augreg-pets-scratch": lambda: augreg_preset("oxford_iiit_pet"),
    "augreg-pets-transfer": lambda: augreg_preset(
        "oxford_iiit_pet", checkpoint="Ti/16", model=None, recipe="transfer", wd=0.0,
        steps=500, lr=0.003),
}


def presets() -> list[str]:
    """Names accepted by :func:`get_config`: "smoke", the AugReg presets and every run of
    the published sweep."""
    names = ["smoke", *AUGREG_PRESETS]
    for name in list_tasks():
        task = get_task(name)
        names += [f"{name}-{steps}-{lr}-{res}" for steps in task.sweep_steps
                  for lr in task.learning_rates for res in SWEEP_RESOLUTIONS]
    return names


def get_config(preset: str = "smoke") -> ml_collections.ConfigDict:
    """A locked config for ``preset``: "smoke" or "{task}-{steps}-{lr}-{resolution}".

    Example: ``get_config("oxford_iiit_pet-500-0.003-224")``.
    """
    if preset == "smoke":
        return _smoke()
    if preset in AUGREG_PRESETS:
        return AUGREG_PRESETS[preset]()
    parts = preset.rsplit("-", 3)
    if len(parts) == 4:
        task, steps, lr, res = parts
        try:
            return preset_for(task, int(steps), float(lr), int(res))
        except ValueError:
            pass
    raise ValueError(
        f"unknown preset {preset!r}: use 'smoke', one of {', '.join(AUGREG_PRESETS)} or "
        "'<task>-<steps>-<lr>-<resolution>', "
        "e.g. 'cifar100-2500-0.01-384' or 'oxford_iiit_pet-500-0.003-224'"
    )


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def use_task_preprocess(config: ml_collections.ConfigDict, keep: Iterable[str] = ()) -> None:
    """Give ``config`` its task's own label-safe pre-processing (``Task.train_preprocess`` /
    ``eval_preprocess``, e.g. a plain resize for the structured VTAB tasks) where the
    registered task has one; the fields named in ``keep`` stay as they are."""
    if str(config.task).lower() not in list_tasks(None):
        return
    own = get_task(config.task)
    for field in ("train_preprocess", "eval_preprocess"):
        mode = getattr(own, field)
        if mode and field not in keep:
            config[field] = mode


def apply_overrides(config: ml_collections.ConfigDict, items: Iterable[str]):
    """Apply ``key=value`` strings (the CLI's ``--set``) to a locked config, in place.

    Values are read as Python literals when possible (``0.03``, ``8``, ``True``, ``None``)
    and as plain strings otherwise; the field's type decides (an int given for a float
    field is converted; a string for a number field is an error). A new ``task`` brings its
    own label-safe pre-processing (:func:`use_task_preprocess`) unless the same overrides
    name one.
    """
    items = list(items)
    keys = {item.split("=", 1)[0].strip() for item in items}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {shorten(item)} is not key=value, e.g. "
                             "--set base_lr=0.03")
        key, text = item.split("=", 1)
        key, text = key.strip(), text.strip()
        if key not in config:
            close = difflib.get_close_matches(key, list(config.keys()), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown config field {shorten(key)} in override "
                             f"{shorten(item)}.{hint}")
        value = _parse_value(text)
        if isinstance(config[key], str) or config[key] is None:  # text fields stay text
            value = None if text == "None" else text
        try:
            config[key] = value
        except TypeError as err:
            why = (f"{key} must be {FIELD_RULES[key][1]}" if key in FIELD_RULES
                   else shorten(str(err), 200, quote=False))
            raise ValueError(f"override {shorten(item)}: {why}") from None
        if key in FIELD_RULES and not FIELD_RULES[key][0](config[key]):
            raise ValueError(f"override {shorten(item)}: {key} must be {FIELD_RULES[key][1]}")
    if "task" in keys:
        use_task_preprocess(config, keep=keys)
    return config


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _text_or_none(v) -> bool:
    return v is None or (isinstance(v, str) and v.strip() != "")


#: What each field must be: (test of its value, the rule in words for the message).
FIELD_RULES = {
    "checkpoint": (lambda v: isinstance(v, str) and (v == "" or v.strip() != ""),
                   "a model name, checkpoint name or file, e.g. 'B/16', or '' / 'scratch'"),
    "recipe": (lambda v: v in RECIPES, f"one of {RECIPES}"),
    "aug": (lambda v: isinstance(v, str) and v.strip() != "",
            "an augmentation name: none, light0, light1, medium1, medium2, strong1, strong2 "
            "(index names) or a paper name light2, heavy1, heavy2, paper:light1"),
    "loss": (lambda v: v in LOSSES, f"one of {LOSSES}"),
    "if_different": (lambda v: v in IF_DIFFERENT, f"one of {IF_DIFFERENT}"),
    "model": (_text_or_none, "None or a model name such as 'B/16'"),
    "task": (lambda v: isinstance(v, str) and v.strip() != "", "a task name, e.g. 'cifar100'"),
    "resolution": (lambda v: _is_int(v) and 16 <= v <= 4096,
                   "an image side in pixels between 16 and 4096 (the sweep: 224 or 384)"),
    "base_lr": (lambda v: _is_number(v) and v > 0, "a positive learning rate, e.g. 0.01"),
    "total_steps": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "global_batch": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1 (the paper: 512)"),
    "micro_batches": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "a whole number from 0 to 2**32 - 1"),
    "eval_every": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0 (0: at the end)"),
    "checkpoint_every": (lambda v: _is_int(v) and v >= 0,
                         "a whole number >= 0 (0: at the end)"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "workdir": (_text_or_none, "None or a folder path"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1) (the paper: 0.9)"),
    "grad_clip": (lambda v: _is_number(v) and v >= 0,
                  "a number >= 0 (0: no clipping; the paper: 1.0)"),
    "eval_batch": (lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "shuffle_buffer": (lambda v: _is_int(v) and v >= 1,
                       "a whole number >= 1 (1: no shuffling)"),
    "data_dir": (_text_or_none, "None or a folder path"),
    "export": (lambda v: isinstance(v, bool), "True or False"),
    "wd": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (the paper: 0.1 or 0.03)"),
    "do": (lambda v: _is_number(v) and 0 <= v < 1, "a rate in [0, 1) (the paper: 0 or 0.1)"),
    "sd": (lambda v: _is_number(v) and 0 <= v < 1, "a rate in [0, 1) (the paper: 0 or 0.1)"),
}


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Raise ValueError naming the field and the fix when ``config`` cannot run."""
    for field, (ok, rule) in FIELD_RULES.items():
        if field in config and not ok(config[field]):
            raise ValueError(f"config field {field}={shorten(config[field])} is invalid: it "
                             f"must be "
                             f"{rule} (set it with --set {field}=...)")
    if config.total_steps < 1:
        raise ValueError(f"total_steps={config.total_steps} must be >= 1")
    if not 0 <= config.warmup_steps <= config.total_steps:
        raise ValueError(
            f"warmup_steps={config.warmup_steps} must be between 0 and total_steps="
            f"{config.total_steps}"
        )
    if config.micro_batches < 1:
        raise ValueError(f"micro_batches={config.micro_batches} must be >= 1")
    per_step = num_devices * config.micro_batches
    if config.global_batch % per_step:
        good = [m for m in range(1, config.global_batch + 1)
                if config.global_batch % (m * num_devices) == 0]
        raise ValueError(
            f"global_batch={config.global_batch} does not split into micro_batches="
            f"{config.micro_batches} on {num_devices} device(s): it must divide by "
            f"devices x micro_batches = {per_step}. Valid micro_batches here: {good[:12]}"
        )
    if config.eval_batch % num_devices:
        raise ValueError(
            f"eval_batch={config.eval_batch} must divide by the number of devices "
            f"({num_devices}); set eval_batch to a multiple of {num_devices}"
        )
    for field, allowed in (
        ("dtype", ("float32", "bfloat16")),
        ("momentum_dtype", ("float32", "bfloat16")),
        ("param_sharding", ("replicated", "sharded")),
        ("train_preprocess", preprocess.TRAIN_MODES),
        ("eval_preprocess", preprocess.EVAL_MODES),
    ):
        if config[field] not in allowed:
            raise ValueError(f"{field}={config[field]!r} is not one of {allowed}")
    index_aug(config.aug)
    if is_scratch(config.checkpoint) and not config.model:
        raise ValueError(
            f"checkpoint={config.checkpoint!r} trains from scratch and needs a model: set "
            "--set model=Ti/16 (or another name of augreg_nb.models)")
    if config.recipe == "transfer" and config.wd:
        raise ValueError(
            f"wd={config.wd} needs recipe=augreg (the transfer recipe has no weight decay); "
            "set --set recipe=augreg or wd=0")
