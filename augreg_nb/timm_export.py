"""Export a fine-tune (or any AugReg model) as a folder timm loads, and upload it to the Hub.

    from augreg_nb.timm_export import export_run, push_to_hub, read_timm_folder

    out = export_run("runs/pets", "export/pets-timm")  # a finetune run folder or a checkpoint
    out.folder, out.architecture  # export/pets-timm, vit_small_r26_s32_384
    back = read_timm_folder(out.folder)  # the package's own timm reader
    push_to_hub(out.folder, "me/r26-s32-pets")  # token: HF_TOKEN or the login

    augreg-nb export --format timm runs/pets --out export/pets-timm [--push-to-hub me/repo]

The folder holds what timm's own Hub repositories hold:

- ``model.safetensors``: timm's parameter names and layouts for the matching architecture
  (:func:`augreg_nb.timm_convert.flat_to_timm`; transposes and reshapes only, bit for bit);
  before writing, every name and shape is checked against timm's own list for that
  architecture, shipped in ``data/timm_layout/`` (:func:`reference_layout`);
- ``config.json``: ``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``label_names``, ``model_args`` (``img_size``) and ``pretrained_cfg``: the input size, the
  evaluation crop of :mod:`augreg_nb.preprocess` (``crop_pct`` = resolution / short side,
  ``interpolation="bilinear"``), and mean = std = 0.5, which maps [0, 1] pixels to
  the (-1, 1) range the AugReg models expect;
- ``README.md``: a model card (upstream checkpoint, task, recipe, val and test accuracy, the
  command that made it, how to load it).

The timm architecture of each model is :func:`augreg_nb.names.model_to_timm_arch` (one table,
``names._TIMM_STEMS``); a resolution timm does not name (e.g. 128 px) uses the 224 px
architecture with ``img_size`` in ``model_args``. Logits in timm match the JAX model's to
about 1e-3 (timm computes GELU exactly where the AugReg models use its tanh form, and its
GroupNorm and weight standardisation use other epsilons); the README gives measured figures.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from augreg_nb import checkpoint as ckpt
from augreg_nb import names
from augreg_nb.atomic import atomic_write, sweep_stale_temps, temp_path, write_json_atomic
from augreg_nb.models import get_model_config
from augreg_nb.preprocess import eval_resize_size
from augreg_nb.resources import data_path
from augreg_nb.timm_convert import flat_to_timm

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: The finetune run folder's result file (``augreg_nb.train.RESULT_FILE``).
RUN_RESULT_FILE = "result.json"
#: Mean and std that map timm's [0, 1] tensors to the AugReg input range: x / 127.5 - 1.
MEAN = STD = (0.5, 0.5, 0.5)
#: The evaluation resize of ``augreg_nb.preprocess`` is TensorFlow's area resize, which timm's
#: PIL transforms cannot reproduce exactly (they also floor the long side where the package
#: rounds it). Measured on photographs at 224 and 384 px, timm's bilinear resize comes
#: closest (mean pixel difference 0.013 to 0.029 of the 2.0 range; box 0.016 to 0.037,
#: bicubic 0.014 to 0.030).
INTERPOLATION = "bilinear"


@dataclass(frozen=True)
class TimmExport:
    """What :func:`export_timm` wrote."""

    folder: Path
    architecture: str  #: timm architecture, e.g. "vit_base_patch16_384"
    model_name: str  #: AugReg model, e.g. "B/16"
    num_classes: int
    resolution: int
    label_names: tuple[str, ...] | None  #: None: no names were known (see the log)
    config: dict  #: the content of config.json


@dataclass(frozen=True)
class TimmFolder:
    """An exported folder read back: the model, its flat AugReg arrays and config.json."""

    model_name: str
    flat: dict[str, np.ndarray]
    config: dict

    @property
    def params(self) -> dict:
        return ckpt.unflatten(self.flat)


# ------------------------------------------------------------------------ architecture


def timm_architecture(model_name: str, resolution: int) -> tuple[str, dict]:
    """(timm architecture, ``model_args``) for a model at a resolution.

    ``("B/16", 384)`` -> ``("vit_base_patch16_384", {"img_size": 384})``; a resolution timm
    does not name takes the 224 px architecture: ``("B/8", 128)`` ->
    ``("vit_base_patch8_224", {"img_size": 128})``.
    """
    model = names.normalize_model(model_name)
    try:
        arch = names.model_to_timm_arch(model, resolution)
    except ValueError:
        arch = names.model_to_timm_arch(model, 224)
    return arch, {"img_size": int(resolution)}


def reference_layout(model_name: str, num_classes: int, resolution: int
                     ) -> dict[str, tuple[int, ...]]:
    """timm's parameter names and shapes for a model, its head and resolution.

    Read from ``data/timm_layout/<prefix>.json`` (timm's own state dict at 224 px with 1000
    classes, see ``data/SOURCES.md``); the head and the position table follow
    ``num_classes`` and ``resolution``.
    """
    model = names.normalize_model(model_name)
    shipped = json.loads(data_path("timm_layout", f"{names.model_to_prefix(model)}.json")
                         .read_text())
    layout = {k: tuple(v) for k, v in shipped["keys"].items()}
    width = layout["cls_token"][-1]
    tokens = get_model_config(model).grid_size(int(resolution)) ** 2 + 1
    layout.update({"head.weight": (int(num_classes), width), "head.bias": (int(num_classes),),
                   "pos_embed": (1, tokens, width)})
    return layout


def export_layout(model_name: str, num_classes: int, resolution: int
                  ) -> dict[str, tuple[int, ...]]:
    """Names and shapes :func:`export_timm` writes for a model (computed without memory:
    the conversion runs on arrays of a zero-byte dtype)."""
    model = get_model_config(names.normalize_model(model_name)).name
    empty = np.dtype([])
    flat = {k: np.empty(s, empty) for k, s in
            ckpt.expected_shapes(model, int(num_classes), int(resolution)).items()}
    return {k: tuple(v.shape) for k, v in flat_to_timm(flat).items()}


def check_layout(state: Mapping[str, Any], model_name: str, num_classes: int,
                 resolution: int) -> None:
    """Raise ``ValueError`` unless ``state``'s names and shapes are exactly timm's."""
    want = reference_layout(model_name, num_classes, resolution)
    have = {k: tuple(np.shape(v)) for k, v in state.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(f"{k} {have[k]} (timm: {want[k]})" for k in set(want) & set(have)
                   if have[k] != want[k])
    if missing or extra or wrong:
        arch = timm_architecture(model_name, resolution)[0]
        parts = [f"{label} {items[:5]}" for label, items in
                 (("missing", missing), ("not in timm", extra), ("wrong shape", wrong)) if items]
        raise ValueError(f"the export does not match timm's {arch}: " + "; ".join(parts))


# ------------------------------------------------------------------------------ export


def pretrained_cfg(architecture: str, num_classes: int, resolution: int, first_conv: str
                   ) -> dict:
    """timm's ``pretrained_cfg`` for an AugReg model at a resolution (see the module doc);
    ``first_conv`` names the module that sees the pixels."""
    return {
        "architecture": architecture,
        "tag": "augreg_nb",
        "custom_load": False,
        "input_size": [3, int(resolution), int(resolution)],
        "fixed_input_size": True,
        "interpolation": INTERPOLATION,
        "crop_pct": int(resolution) / eval_resize_size(int(resolution)),
        "crop_mode": "center",
        "mean": list(MEAN),
        "std": list(STD),
        "num_classes": int(num_classes),
        "pool_size": None,
        "first_conv": first_conv,
        "classifier": "head",
        "license": "apache-2.0",
    }


def _save_weights(state: Mapping[str, np.ndarray], path: Path, metadata: dict) -> None:
    """Write a safetensors file atomically, streaming from the arrays (no second copy of a
    model of a billion bytes in memory): a temporary file, fsync, rename."""
    sweep_stale_temps(path.parent)
    tmp = temp_path(path)
    try:
        tmp.unlink(missing_ok=True)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, str(tmp),
                  metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _first_conv(state: Mapping[str, Any]) -> str:
    for name in ("patch_embed.backbone.stem.conv", "patch_embed.backbone.conv"):
        if f"{name}.weight" in state:
            return name
    return "patch_embed.proj"


def export_timm(params: Mapping, out_dir: str | os.PathLike, *, model_name: str | None = None,
                label_names: Sequence[str] | None = None, card: Mapping[str, Any] | None = None
                ) -> TimmExport:
    """Write ``params`` (a Linen tree or flat AugReg arrays) as a timm folder in ``out_dir``.

    ``model_name`` is read off the shapes when None; the head size and the resolution come
    from the parameters. ``label_names`` (one per class) go to config.json; ``card`` holds
    what the model card reports (keys of :func:`model_card`). Each file is written
    atomically, config.json last: a folder with a config.json is complete.
    """
    flat = ckpt.canonicalize({k: np.asarray(v, np.float32) for k, v in
                              ckpt.flatten(dict(params)).items()})
    if "embedding/kernel" not in flat:
        raise ckpt.CheckpointError("these parameters have no 'embedding/kernel'; pass the "
                                   "params tree of an AugReg model, not the variables dict")
    model = get_model_config(model_name).name if model_name else ckpt.infer_model(flat)
    if model not in names.MODELS:
        raise ValueError(f"timm has no architecture for {model!r} (a small model for tests); "
                         f"export one of the 10 AugReg models: {', '.join(names.MODELS)}")
    ckpt.check_params(flat, model, where="the parameters to export")
    ckpt.check_finite(flat, where="the parameters to export")
    if "head/bias" not in flat:
        raise ckpt.CheckpointError("these parameters have no head; timm's folder needs one")
    num_classes = int(flat["head/bias"].shape[0])
    resolution = ckpt.checkpoint_resolution(model, flat)
    labels = None if label_names is None else tuple(str(n) for n in label_names)
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} label names were given for a {num_classes}-class "
                         "head; pass one name per class")
    state = flat_to_timm(flat)
    check_layout(state, model, num_classes, resolution)
    arch, model_args = timm_architecture(model, resolution)
    config = {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": get_model_config(model).hidden_size,
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg(arch, num_classes, resolution, _first_conv(state)),
    }
    if labels is not None:
        config["label_names"] = list(labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # a folder without it is not trusted
    _save_weights(state, out / WEIGHTS_FILE, metadata={"format": "pt", "augreg_nb_model": model})
    text = model_card(arch, model, num_classes, resolution, labels, card or {})
    with atomic_write(out / CARD_FILE) as f:
        f.write(text.encode("utf-8"))
    write_json_atomic(out / CONFIG_FILE, config)
    if labels is None:
        logger.warning("%s: no class names are known for the %d-class head; config.json has "
                       "no label_names (pass label_names, e.g. a task name)", out, num_classes)
    return TimmExport(out, arch, model, num_classes, resolution, labels, config)


def read_timm_folder(folder: str | os.PathLike) -> TimmFolder:
    """Read an exported folder back through the package's timm reader, checking that
    config.json and the weights agree."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: it is not a complete timm "
                                "export (export it again)")
    config = json.loads(cfg_path.read_text())
    model, _ = names.timm_arch_to_model(config["architecture"])
    resolution = int(config.get("model_args", {}).get(
        "img_size", config["pretrained_cfg"]["input_size"][-1]))
    _, flat = ckpt.load_flat(folder / WEIGHTS_FILE, model_name=model)
    num_classes = int(flat["head/bias"].shape[0])
    if num_classes != int(config["num_classes"]):
        raise ckpt.CheckpointError(f"{folder}: config.json says {config['num_classes']} "
                                   f"classes, the weights have {num_classes}")
    if ckpt.checkpoint_resolution(model, flat) != resolution:
        raise ckpt.CheckpointError(f"{folder}: config.json says {resolution} px, the position "
                                   "table is for another resolution")
    return TimmFolder(model, flat, config)


# ------------------------------------------------------------------------------ sources


def export_run(run_or_checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
               label_names: Any = None, model_name: str | None = None,
               command: str | None = None) -> TimmExport:
    """Export a finetune run folder (its ``result.json`` and exported ``.npz``), a checkpoint
    file, or a checkpoint name the sources resolve, as a timm folder.

    ``label_names``: names, a task name, or None for the run's task (ImageNet names for a
    1000-class head of a checkpoint; none when the task's names cannot be had, with a
    warning). ``command`` is what the card says made the export (default: this call).
    """
    from augreg_nb.inference import resolve_label_names

    source = Path(run_or_checkpoint).expanduser()
    card: dict[str, Any] = {"command": command or (
        f"augreg_nb.timm_export.export_run({str(run_or_checkpoint)!r}, {str(out_dir)!r})")}
    explicit = label_names is not None
    if source.is_dir():
        if not (source / RUN_RESULT_FILE).is_file():
            raise FileNotFoundError(
                f"{source} is a folder without {RUN_RESULT_FILE}: not a finished finetune run "
                "(let the run finish, or pass its exported .npz file)")
        row = json.loads((source / RUN_RESULT_FILE).read_text())["result_row"]
        npz = source / f"{row['adapt_filename']}.npz"  # where finetune exports it
        if not npz.is_file():
            raise FileNotFoundError(
                f"run folder {source} has no exported weights ({npz.name}); run the finetune "
                "again with config.export = True (it reuses the finished run) and retry")
        if model_name is None and row.get("name") in names.MODELS:
            model_name = row["name"]
        model, flat = ckpt.load_flat(npz, model_name=model_name)
        card.update(row=row, source=str(source))
        if not explicit:
            label_names = row.get("adapt_ds")
    else:
        try:
            is_file = source.is_file()
        except OSError:  # e.g. a name longer than a file name can be: a checkpoint name
            is_file = False
        if is_file:
            model, flat = ckpt.load_flat(source, model_name=model_name)
        else:
            model, tree = ckpt.load_pretrained(str(run_or_checkpoint), model_name=model_name)
            flat = ckpt.flatten(tree)
        card.update(source=str(run_or_checkpoint))
    num_classes = int(flat["head/bias"].shape[0]) if "head/bias" in flat else 0
    try:
        labels = resolve_label_names(label_names, num_classes)
    except Exception as err:  # names the user did not ask for are optional
        if explicit:
            raise
        logger.warning("no class names for task %r (%s); exporting without them",
                       label_names, err)
        labels = None
    return export_timm(flat, out_dir, model_name=model, label_names=labels, card=card)


# ------------------------------------------------------------------------------- card


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if v != v else f"{100 * v:.2f} %"


def model_card(architecture: str, model_name: str, num_classes: int, resolution: int,
               label_names: Sequence[str] | None, info: Mapping[str, Any]) -> str:
    """The README.md (Hub model card) of an export.

    ``info`` may hold ``row`` (the run's index row: upstream ``filename``, ``adapt_ds``,
    ``adapt_steps``, ``adapt_lr``, ``aug``, ``wd``, ``do``, ``sd``, ``adapt_final_val``,
    ``adapt_final_test``, ``adapt_filename``), ``source`` and ``command``.
    """
    row = dict(info.get("row") or {})
    title = row.get("adapt_filename") or Path(str(info.get("source", architecture))).name
    task = row.get("adapt_ds") or "-"
    lines = [
        "---", "library_name: timm", "license: apache-2.0", "pipeline_tag: image-classification",
        "tags:", "- image-classification", "- timm", "- augreg", "---", "",
        f"# {title}", "",
        f"A {model_name} Vision Transformer from \"How to train your ViT?\" (Steiner et al., "
        f"2022) in timm's `{architecture}` layout, {resolution} px, {num_classes} classes.",
        "Exported with augreg_nb.", "",
        "| | |", "|---|---|",
        f"| upstream checkpoint | `{row.get('filename') or info.get('source', '-')}` |",
        f"| task | {task} ({num_classes} classes) |",
    ]
    if row:
        recipe = (f"SGD with momentum, {row.get('adapt_steps')} steps, learning rate "
                  f"{row.get('adapt_lr')}, {resolution} px")
        if all(row.get(k) not in (None, "") for k in ("aug", "wd", "do", "sd")):
            recipe += (f"; upstream aug {row['aug']}, wd {row['wd']}, dropout {row['do']}, "
                       f"stochastic depth {row['sd']}")
        lines += [f"| recipe | {recipe} |",
                  f"| val accuracy | {_pct(row.get('adapt_final_val'))} |",
                  f"| test accuracy | {_pct(row.get('adapt_final_test'))} |"]
    if info.get("command"):
        lines.append(f"| made by | `{info['command']}` |")
    try:  # a fine-tune of the published grid: the command that trains it again
        if row.get("adapt_filename") and names.parse_name(row["adapt_filename"]).is_finetuned:
            lines.append(f"| fine-tuned by | `augreg-nb reproduce {row['adapt_filename']}` |")
    except ValueError:
        pass
    names_line = (", ".join(label_names[:10]) + (", ..." if len(label_names) > 10 else "")
                  if label_names else "not recorded (class indices only)")
    lines += [
        f"| classes | {names_line} |", "",
        "## Use in timm", "",
        "```python",
        "import timm, torch",
        "model = timm.create_model(\"hf-hub:REPO_ID\", pretrained=True).eval()",
        "# or from this folder: timm.create_model(\"local-dir:FOLDER\", pretrained=True)",
        "# or by architecture and file:",
        f"# timm.create_model(\"{architecture}\", pretrained=True, num_classes={num_classes},",
        f"#                   img_size={resolution}, pretrained_cfg_overlay=dict(",
        f"#                       file=\"FOLDER/model.safetensors\", num_classes={num_classes}))",
        "cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**cfg)  # centre crop, mean = std = 0.5",
        "names = model.pretrained_cfg.get(\"label_names\")",
        "```", "",
        "Inputs are in the (-1, 1) range (mean = std = 0.5). timm computes GELU exactly where "
        "the JAX model uses its tanh approximation, and GroupNorm and weight standardisation "
        "with other epsilons: logits agree to about 1e-3, predictions are the same.", "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- Hub


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None,
                private: bool = False, commit_message: str | None = None) -> str:
    """Upload an exported folder to the Hugging Face Hub (created when missing); returns
    the commit's URL. The token comes from ``token``, ``HF_TOKEN`` or ``hf auth login``;
    ``HF_ENDPOINT`` points at another Hub."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    read_timm_folder(folder)  # never upload a folder that does not read back
    card = folder / CARD_FILE
    if card.is_file():  # the card's loading example names this repository
        text = re.sub(r'"hf-hub:[^"]*"', f'"hf-hub:{repo_id}"', card.read_text())
        with atomic_write(card) as f:
            f.write(text.encode("utf-8"))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder),
        allow_patterns=[WEIGHTS_FILE, CONFIG_FILE, CARD_FILE],
        commit_message=commit_message or "Upload an AugReg model exported by augreg_nb")
    return str(getattr(info, "commit_url", info))
