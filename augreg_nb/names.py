"""Checkpoint names of the AugReg release: parse, format and convert them.

Every published checkpoint is a file ``{filename}.npz`` in the bucket. Upstream
(pre-trained) files are named::

    Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0

and fine-tuned files append the fine-tuning run::

    Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--oxford_iiit_pet-steps_0k-lr_0.003-res_384

``steps_0k`` means 500 steps and ``steps_2k`` 2500 steps (the name keeps ``steps // 1000``).
One parser and one formatter handle both forms, and they round-trip exactly::

    >>> from augreg_nb.names import parse_name
    >>> n = parse_name("R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1"
    ...                "--imagenet2012-steps_20k-lr_0.03-res_224")
    >>> n.model, n.aug, n.aug_paper, n.adapt_steps
    ('R26+S/32', 'light0', 'light1', 20000)
    >>> str(n.upstream)
    'R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1'
    >>> n.timm_arch
    'vit_small_r26_s32_224'

Model names come in three spellings: the paper's (``R26+S/32``), the file prefix
(``R26_S_32``) and timm's architecture (``vit_small_r26_s32_224``); ``model_to_prefix``,
``prefix_to_model``, ``model_to_timm_arch``, ``timm_arch_to_model`` and ``normalize_model``
convert between them.

Augmentation names are shifted between the index/filenames and the paper: index ``light0``
is the paper's *light1* and index ``light1`` the paper's *light2*. ``AUGMENTATIONS`` holds
each setting with its RandAugment layers and magnitude and its Mixup alpha;
``index_to_paper_aug`` and ``paper_to_index_aug`` convert.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from dataclasses import dataclass

from augreg_nb.protocol import (  # noqa: F401 - the names' vocabulary, re-exported
    ADAPT_DATASETS,
    AUGMENTATIONS,
    MODELS,
    PAPER_MODELS,
    PRETRAIN_DATASETS,
    Augmentation,
)

#: Fine-tuning lengths the published names can express, and their ``steps_`` token.
STEPS_TOKENS: dict[int, str] = {500: "0k", 2500: "2k", 10000: "10k", 20000: "20k"}
_TOKEN_STEPS = {v: k for k, v in STEPS_TOKENS.items()}

# timm architecture stem per model; the full name appends ``_{resolution}``.
_TIMM_STEMS: dict[str, str] = {
    "Ti/16": "vit_tiny_patch16",
    "S/16": "vit_small_patch16",
    "S/32": "vit_small_patch32",
    "B/16": "vit_base_patch16",
    "B/32": "vit_base_patch32",
    "B/8": "vit_base_patch8",
    "L/16": "vit_large_patch16",
    "R+Ti/16": "vit_tiny_r_s16_p8",
    "R26+S/32": "vit_small_r26_s32",
    "R50+L/32": "vit_large_r50_s32",
}
# Resolutions at which timm defines each architecture (B/8 only at 224).
_TIMM_RESOLUTIONS: dict[str, tuple[int, ...]] = {m: (224, 384) for m in MODELS}
_TIMM_RESOLUTIONS["B/8"] = (224,)


#: Index augmentation names in the sweep's order.
AUG_NAMES: tuple[str, ...] = tuple(AUGMENTATIONS)
#: Paper augmentation names in the same order.
PAPER_AUG_NAMES: tuple[str, ...] = tuple(a.paper_name for a in AUGMENTATIONS.values())
_PAPER_TO_INDEX = {a.paper_name: a.index_name for a in AUGMENTATIONS.values()}
# Figure 4 of the paper labels the two strongest settings heavy1/heavy2.
_PAPER_TO_INDEX.update({"heavy1": "strong1", "heavy2": "strong2"})


def unknown_value_error(kind: str, value: object, choices) -> ValueError:
    """A ValueError for a value outside ``choices`` that suggests the closest one."""
    choices = list(choices)
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {kind} {value!r}{hint}; expected one of: {', '.join(choices)}")


#: Longest folder name a run-folder component may have (file systems allow 255 bytes).
MAX_FOLDER_NAME = 120
#: Longest piece of user text an error line quotes in full.
MAX_QUOTED = 80


def short_hash(text: str, length: int = 8) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text``: a stable short tag."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def safe_folder_name(text: str, *, max_len: int = MAX_FOLDER_NAME) -> str:
    """``text`` as one folder name that stays where it is put.

    Every character but ASCII letters, digits and ``._-`` becomes ``_``, so path
    separators, ``:`` and control characters cannot appear; runs of dots become ``_`` and
    leading dots are dropped, so the name is never ``.`` or ``..`` nor hidden. When that
    changed nothing but the name is longer than ``max_len``, or the text was empty, the
    name ends in ``-<hash>`` of the original text so that different long texts stay apart.
    """
    out = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in text)
    out = re.sub(r"\.{2,}", "_", out).lstrip(".")
    if out and len(out) <= max_len:
        return out
    tag = short_hash(text)
    return f"{out[:max_len - len(tag) - 1]}-{tag}" if out else f"_{tag}"


def shorten(text: object, limit: int = MAX_QUOTED, *, quote: bool = True) -> str:
    """``text`` for an error line: a string quoted as ``repr`` does (``quote``), anything
    else as its ``repr``; beyond about ``limit`` characters its head and tail with the
    total length named, so that a long input does not make a long message."""
    plain = isinstance(text, str)
    value = text if plain else repr(text)
    show = repr if plain and quote else str
    if len(value) <= limit:
        return show(value)
    head = limit * 2 // 3
    return (f"{show(value[:head])}...{show(value[-(limit - head - 10):])} "
            f"({len(value):,} characters)")


# ---------------------------------------------------------------------------------------
# model names


def model_to_prefix(model: str) -> str:
    """File prefix of a paper model name: ``"R26+S/32"`` -> ``"R26_S_32"``."""
    if model not in _TIMM_STEMS:
        raise unknown_value_error("model", model, MODELS)
    return model.replace("+", "_").replace("/", "_")


_PREFIX_TO_MODEL = {model_to_prefix(m): m for m in MODELS}


def prefix_to_model(prefix: str) -> str:
    """Paper model name of a file prefix: ``"R26_S_32"`` -> ``"R26+S/32"``."""
    try:
        return _PREFIX_TO_MODEL[prefix]
    except KeyError:
        raise unknown_value_error("model file prefix", prefix, _PREFIX_TO_MODEL) from None


def model_to_timm_arch(model: str, resolution: int = 224) -> str:
    """timm architecture of a model at a resolution: ``("R26+S/32", 384)`` ->
    ``"vit_small_r26_s32_384"``. The Hub repos are ``timm/{arch}.{tag}`` (e.g. tag
    ``augreg_in21k_ft_in1k``)."""
    model = normalize_model(model)
    if int(resolution) not in _TIMM_RESOLUTIONS[model]:
        allowed = ", ".join(map(str, _TIMM_RESOLUTIONS[model]))
        raise ValueError(
            f"timm defines {model} only at {allowed} px, not {resolution}; pass one of those"
        )
    return f"{_TIMM_STEMS[model]}_{int(resolution)}"


_TIMM_ARCH_RE = re.compile(r"^(?P<stem>vit_[a-z0-9_]+?)_(?P<res>\d+)(?:\.(?P<tag>[\w.]+))?$")


def timm_arch_to_model(arch: str) -> tuple[str, int]:
    """Paper model and resolution of a timm architecture (an optional ``.tag`` is ignored):
    ``"vit_tiny_r_s16_p8_384.augreg_in21k_ft_in1k"`` -> ``("R+Ti/16", 384)``."""
    m = _TIMM_ARCH_RE.match(arch)
    stems = {v: k for k, v in _TIMM_STEMS.items()}
    if not m or m["stem"] not in stems:
        raise unknown_value_error("timm architecture", arch, [f"{s}_224" for s in stems])
    model, res = stems[m["stem"]], int(m["res"])
    if res not in _TIMM_RESOLUTIONS[model]:
        raise ValueError(f"timm architecture {arch!r}: {model} has no {res} px variant")
    return model, res


def normalize_model(name: str) -> str:
    """The paper name for any spelling: paper name, file prefix or timm architecture."""
    if name in _TIMM_STEMS:
        return name
    if name in _PREFIX_TO_MODEL:
        return _PREFIX_TO_MODEL[name]
    if isinstance(name, str) and name.startswith("vit_"):
        return timm_arch_to_model(name)[0]
    raise unknown_value_error("model", name, MODELS)


# ---------------------------------------------------------------------------------------
# augmentation names


def index_to_paper_aug(aug: str) -> str:
    """Paper name of an index augmentation name: ``"light0"`` -> ``"light1"``."""
    if aug not in AUGMENTATIONS:
        raise unknown_value_error("index augmentation name", aug, AUG_NAMES)
    return AUGMENTATIONS[aug].paper_name


def paper_to_index_aug(aug: str) -> str:
    """Index name of a paper augmentation name: ``"light2"`` -> ``"light1"``.

    Figure 4's labels ``heavy1``/``heavy2`` are accepted for ``strong1``/``strong2``."""
    if aug not in _PAPER_TO_INDEX:
        raise unknown_value_error("paper augmentation name", aug, PAPER_AUG_NAMES)
    return _PAPER_TO_INDEX[aug]


# ---------------------------------------------------------------------------------------
# checkpoint names


def format_float(x: float) -> str:
    """How numbers appear in filenames: the shortest repr of the float (``0.03``, ``0.0``)."""
    return repr(float(x))


def steps_token(steps: int) -> str:
    """The ``steps_`` token of a fine-tuning length: 500 -> ``"0k"``, 2500 -> ``"2k"``."""
    try:
        return STEPS_TOKENS[int(steps)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"fine-tuning length {steps!r} has no published filename form; "
            f"use one of {sorted(STEPS_TOKENS)} steps"
        ) from None


_TASK_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class CheckpointName:
    """A parsed checkpoint filename; ``str(name)`` gives the filename back exactly.

    Upstream fields: ``model`` (paper name), ``ds`` (``i1k``/``i21k``/``i21k_30``),
    ``epochs``, ``lr``, ``aug`` (index name), ``wd``, ``do``, ``sd``. Fine-tune fields
    (``None`` for an upstream checkpoint): ``adapt_ds``, ``adapt_steps``, ``adapt_lr``,
    ``adapt_resolution``.
    """

    model: str
    ds: str
    epochs: int
    lr: float
    aug: str
    wd: float
    do: float
    sd: float
    adapt_ds: str | None = None
    adapt_steps: int | None = None
    adapt_lr: float | None = None
    adapt_resolution: int | None = None

    def __post_init__(self) -> None:
        if self.model not in _TIMM_STEMS:
            raise unknown_value_error("model", self.model, MODELS)
        if self.ds not in PRETRAIN_DATASETS:
            raise unknown_value_error("pre-training dataset", self.ds, PRETRAIN_DATASETS)
        if self.aug not in AUGMENTATIONS:
            raise unknown_value_error("augmentation (index name)", self.aug, AUG_NAMES)
        if not isinstance(self.epochs, int) or self.epochs <= 0:
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        adapt = (self.adapt_ds, self.adapt_steps, self.adapt_lr, self.adapt_resolution)
        if any(v is None for v in adapt) and any(v is not None for v in adapt):
            raise ValueError(
                "a fine-tuned name needs all of adapt_ds, adapt_steps, adapt_lr and "
                f"adapt_resolution; got {adapt}"
            )
        if self.adapt_ds is not None:
            if not _TASK_RE.match(self.adapt_ds):
                raise ValueError(
                    f"fine-tuning dataset {self.adapt_ds!r} must be a TFDS-style name "
                    "(lower case letters, digits and '_')"
                )
            steps_token(self.adapt_steps)  # raises for lengths without a filename form
            if not isinstance(self.adapt_resolution, int) or self.adapt_resolution <= 0:
                raise ValueError(
                    f"adapt_resolution must be a positive int, got {self.adapt_resolution!r}"
                )

    # -- views --------------------------------------------------------------------------
    @property
    def is_finetuned(self) -> bool:
        return self.adapt_ds is not None

    @property
    def prefix(self) -> str:
        """File prefix of the model, e.g. ``R26_S_32``."""
        return model_to_prefix(self.model)

    @property
    def pretraining(self) -> str:
        """The index's ``ds`` value: ``i21k`` with 30 epochs counts as ``i21k_30``."""
        return "i21k_30" if self.ds == "i21k" and self.epochs == 30 else self.ds

    @property
    def aug_paper(self) -> str:
        """The augmentation's name in the paper (``light0`` -> ``light1``)."""
        return AUGMENTATIONS[self.aug].paper_name

    @property
    def augmentation(self) -> Augmentation:
        return AUGMENTATIONS[self.aug]

    @property
    def upstream(self) -> CheckpointName:
        """The pre-trained checkpoint this name starts from (itself when upstream)."""
        if not self.is_finetuned:
            return self
        return dataclasses.replace(
            self, adapt_ds=None, adapt_steps=None, adapt_lr=None, adapt_resolution=None
        )

    @property
    def upstream_filename(self) -> str:
        u = self.upstream
        return (
            f"{u.prefix}-{u.ds}-{u.epochs}ep-lr_{format_float(u.lr)}-aug_{u.aug}"
            f"-wd_{format_float(u.wd)}-do_{format_float(u.do)}-sd_{format_float(u.sd)}"
        )

    @property
    def adapt_suffix(self) -> str | None:
        """The part after ``--`` (``imagenet2012-steps_20k-lr_0.03-res_224``), or None."""
        if not self.is_finetuned:
            return None
        return (
            f"{self.adapt_ds}-steps_{steps_token(self.adapt_steps)}"
            f"-lr_{format_float(self.adapt_lr)}-res_{self.adapt_resolution}"
        )

    @property
    def filename(self) -> str:
        """The file's name without ``.npz``."""
        if not self.is_finetuned:
            return self.upstream_filename
        return f"{self.upstream_filename}--{self.adapt_suffix}"

    @property
    def resolution(self) -> int:
        """Image size the weights were last trained at (upstream: 224)."""
        return self.adapt_resolution if self.is_finetuned else 224

    @property
    def timm_arch(self) -> str:
        """timm architecture for this checkpoint's model and resolution."""
        return model_to_timm_arch(self.model, self.resolution)

    def finetuned(
        self, adapt_ds: str, adapt_steps: int, adapt_lr: float, adapt_resolution: int
    ) -> CheckpointName:
        """The name of a fine-tune of this (upstream) checkpoint."""
        return dataclasses.replace(
            self.upstream,
            adapt_ds=adapt_ds,
            adapt_steps=int(adapt_steps),
            adapt_lr=float(adapt_lr),
            adapt_resolution=int(adapt_resolution),
        )

    def __str__(self) -> str:
        return self.filename


_FLOAT = r"\d+\.\d+"
_UPSTREAM_PARTS = (
    # (label, regex of the whole part, what it should look like)
    ("model prefix", re.compile(r"^(?P<v>[A-Za-z0-9_]+)$"), "e.g. 'B_16' or 'R26_S_32'"),
    ("pre-training dataset", re.compile(r"^(?P<v>i1k|i21k|i21k_30)$"), "i1k, i21k or i21k_30"),
    ("epochs", re.compile(r"^(?P<v>\d+)ep$"), "e.g. '300ep'"),
    ("learning rate", re.compile(rf"^lr_(?P<v>{_FLOAT})$"), "e.g. 'lr_0.001'"),
    ("augmentation", re.compile(r"^aug_(?P<v>[a-z0-9]+)$"), "e.g. 'aug_light0'"),
    ("weight decay", re.compile(rf"^wd_(?P<v>{_FLOAT})$"), "e.g. 'wd_0.03'"),
    ("dropout", re.compile(rf"^do_(?P<v>{_FLOAT})$"), "e.g. 'do_0.0'"),
    ("stochastic depth", re.compile(rf"^sd_(?P<v>{_FLOAT})$"), "e.g. 'sd_0.1'"),
)
_ADAPT_PARTS = (
    ("fine-tuning dataset", re.compile(r"^(?P<v>[a-z][a-z0-9_]*)$"), "e.g. 'oxford_iiit_pet'"),
    ("fine-tuning steps", re.compile(r"^steps_(?P<v>\d+k)$"), "steps_0k, _2k, _10k or _20k"),
    ("fine-tuning learning rate", re.compile(rf"^lr_(?P<v>{_FLOAT})$"), "e.g. 'lr_0.003'"),
    ("fine-tuning resolution", re.compile(r"^res_(?P<v>\d+)$"), "e.g. 'res_384'"),
)


_EXAMPLES = {
    "upstream": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "fine-tuning": "oxford_iiit_pet-steps_2k-lr_0.003-res_384",
}


def _split_parts(s: str, text: str, specs, where: str) -> list[str]:
    parts = text.split("-")
    # A dataset name may itself contain '_' but never '-', so the split is unambiguous.
    if len(parts) != len(specs):
        raise ValueError(
            f"checkpoint name {s!r}: the {where} part {text!r} has {len(parts)} '-'-separated "
            f"fields, expected {len(specs)} like {_EXAMPLES[where]!r}"
        )
    values = []
    for i, (part, (label, rx, like)) in enumerate(zip(parts, specs, strict=True)):
        m = rx.match(part)
        if not m:
            raise ValueError(
                f"checkpoint name {s!r}: {where} field {i + 1} ({label}) is {part!r}; "
                f"expected {like}"
            )
        values.append(m["v"])
    return values


def parse_name(s: str, *, any_task: bool = False) -> CheckpointName:
    """Parse an upstream or fine-tuned checkpoint filename into a :class:`CheckpointName`.

    Accepts the bare filename, or a path/URL ending in ``{filename}.npz`` (the folder and
    extension are dropped; ``str()`` of the result is the bare filename). The fine-tuning
    dataset must be one of ``ADAPT_DATASETS`` unless ``any_task=True`` (names of your own
    fine-tunes). Raises ValueError that names the malformed part.
    """
    if not isinstance(s, str) or not s.strip():
        raise ValueError(f"checkpoint name must be a non-empty string, got {s!r}")
    text = s.strip().rsplit("/", 1)[-1]
    if text.endswith(".npz"):
        text = text[: -len(".npz")]
    head, sep, tail = text.partition("--")
    if "--" in tail:
        raise ValueError(f"checkpoint name {s!r} has more than one '--' separator")
    up = _split_parts(s, head, _UPSTREAM_PARTS, "upstream")
    prefix, ds, epochs, lr, aug, wd, do, sd = up
    if prefix not in _PREFIX_TO_MODEL:
        err = unknown_value_error("model prefix", prefix, _PREFIX_TO_MODEL)
        raise ValueError(f"checkpoint name {s!r}: {err}")
    if aug not in AUGMENTATIONS:
        hint = ""
        if aug in _PAPER_TO_INDEX:
            hint = f" ({aug!r} is a paper name; files use 'aug_{_PAPER_TO_INDEX[aug]}')"
        raise ValueError(
            f"checkpoint name {s!r}: augmentation 'aug_{aug}' is unknown{hint}; "
            f"expected one of {', '.join(AUG_NAMES)}"
        )
    kwargs: dict = dict(
        model=_PREFIX_TO_MODEL[prefix],
        ds=ds,
        epochs=int(epochs),
        lr=float(lr),
        aug=aug,
        wd=float(wd),
        do=float(do),
        sd=float(sd),
    )
    if sep:
        task, steps, alr, res = _split_parts(s, tail, _ADAPT_PARTS, "fine-tuning")
        if not any_task and task not in ADAPT_DATASETS:
            err = unknown_value_error("fine-tuning dataset", task, ADAPT_DATASETS)
            raise ValueError(
                f"checkpoint name {s!r}: {err} (pass any_task=True for your own tasks)"
            )
        if steps not in _TOKEN_STEPS:
            raise ValueError(
                f"checkpoint name {s!r}: fine-tuning steps 'steps_{steps}' is not one of "
                f"{', '.join('steps_' + t for t in _TOKEN_STEPS)}"
            )
        kwargs.update(
            adapt_ds=task,
            adapt_steps=_TOKEN_STEPS[steps],
            adapt_lr=float(alr),
            adapt_resolution=int(res),
        )
    name = CheckpointName(**kwargs)
    if name.filename != text:
        given = text.replace("--", "-").split("-")
        canonical = name.filename.replace("--", "-").split("-")
        bad = [f"{a!r} (canonical {b!r})" for a, b in zip(given, canonical, strict=False)
               if a != b]
        raise ValueError(
            f"checkpoint name {s!r} is not in the published form: {', '.join(bad)}; "
            f"numbers are written like 0.001, 0.03, 0.0 and epochs without leading zeros"
        )
    return name


def is_valid_name(s: str) -> bool:
    """True when ``s`` parses as a checkpoint name of the published sweep."""
    try:
        parse_name(s)
    except ValueError:
        return False
    return True
