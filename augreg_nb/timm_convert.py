"""Convert between timm's PyTorch parameter layout and the AugReg tree, without PyTorch.

timm hosts 37 AugReg checkpoints on the Hugging Face Hub as ``model.safetensors``. Their
names and layouts differ from the published ``.npz`` files:

- ``cls_token``, ``pos_embed`` -> ``cls``, ``Transformer/posembed_input/pos_embedding``
- ``patch_embed.proj.weight`` (D, C, p, p) -> ``embedding/kernel`` (p, p, C, D)
- ``blocks.i.norm1`` / ``norm2`` -> ``Transformer/encoderblock_i/LayerNorm_0`` / ``LayerNorm_2``
- ``blocks.i.attn.qkv`` (3*D, D), fused -> ``MultiHeadDotProductAttention_1/query|key|value``
  kernels (D, heads, 64)
- ``blocks.i.attn.proj.weight`` (D, D) -> ``MultiHeadDotProductAttention_1/out/kernel``
  (heads, 64, D)
- ``blocks.i.mlp.fc1`` / ``fc2`` (out, in) -> ``MlpBlock_3/Dense_0`` / ``Dense_1`` (in, out)
- ``norm``, ``head`` -> ``Transformer/encoder_norm``, ``head``
- hybrids: ``patch_embed.backbone[.stem].conv`` / ``.norm`` -> ``conv_root`` / ``gn_root``;
  ``...stages.i.blocks.j.conv{r}`` / ``norm{r}`` -> ``block{i+1}/unit{j+1}/conv{r}`` /
  ``gn{r}``; ``...downsample.conv`` / ``.norm`` -> ``conv_proj`` / ``gn_proj``
  (convolutions (out, in, h, w) -> (h, w, in, out))

Weights are copied bit for bit (transposes and reshapes only):

    >>> from augreg_nb.checkpoint import read_timm_safetensors
    >>> flat = read_timm_safetensors("model.safetensors")  # doctest: +SKIP

Reading the file is :mod:`augreg_nb.checkpoint`'s job; this module only converts arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from augreg_nb.models import AUGREG_MODELS, TESTING_MODELS, get_model_config

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_STAGE = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_BLOCK_PARTS = {
    "norm1": "LayerNorm_0",
    "norm2": "LayerNorm_2",
    "mlp.fc1": "MlpBlock_3/Dense_0",
    "mlp.fc2": "MlpBlock_3/Dense_1",
}
_UNIT_PARTS = {**{f"conv{r}": f"conv{r}" for r in (1, 2, 3)},
               **{f"norm{r}": f"gn{r}" for r in (1, 2, 3)},
               "downsample.conv": "conv_proj", "downsample.norm": "gn_proj"}


def _conv(w: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, h, w) -> Flax (h, w, in, out)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _norm(leaf: str) -> str:
    return "scale" if leaf == "weight" else "bias"


def timm_to_flat(state: Mapping[str, np.ndarray], *, num_heads: int | None = None
                 ) -> dict[str, np.ndarray]:
    """timm state dict (numpy arrays) -> flat AugReg names with Linen shapes.

    ``num_heads`` splits the fused qkv projection into heads; timm's shapes do not record
    it, so by default it is hidden / 64 (every AugReg model) or taken from the registered
    model with the same width and depth.
    """
    state = {k.removeprefix("model.").removeprefix("module."): np.asarray(v)
             for k, v in state.items()}
    if "cls_token" not in state or "pos_embed" not in state:
        raise ValueError(
            "this safetensors file has no 'cls_token'/'pos_embed': it is not a timm Vision "
            f"Transformer state dict (first keys: {sorted(state)[:5]})"
        )
    hidden = state["cls_token"].shape[-1]
    heads = num_heads or _default_heads(state, hidden)
    depth = hidden // heads
    flat: dict[str, np.ndarray] = {}
    unknown = []
    stem = "patch_embed.backbone.stem." if any(
        k.startswith("patch_embed.backbone.stem.") for k in state) else "patch_embed.backbone."
    for key, w in state.items():
        if key == "cls_token":
            flat["cls"] = w
        elif key == "pos_embed":
            flat["Transformer/posembed_input/pos_embedding"] = w
        elif key == "patch_embed.proj.weight":
            flat["embedding/kernel"] = _conv(w)
        elif key == "patch_embed.proj.bias":
            flat["embedding/bias"] = w
        elif key in ("norm.weight", "norm.bias"):
            flat[f"Transformer/encoder_norm/{_norm(key.split('.')[-1])}"] = w
        elif key == "head.weight":
            flat["head/kernel"] = np.ascontiguousarray(w.T)
        elif key == "head.bias":
            flat["head/bias"] = w
        elif key == f"{stem}conv.weight":
            flat["conv_root/kernel"] = _conv(w)
        elif key in (f"{stem}norm.weight", f"{stem}norm.bias"):
            flat[f"gn_root/{_norm(key.split('.')[-1])}"] = w
        elif m := _STAGE.match(key):
            stage, unit, part, leaf = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            if part not in _UNIT_PARTS:
                unknown.append(key)
                continue
            name = f"block{stage + 1}/unit{unit + 1}/{_UNIT_PARTS[part]}"
            if "conv" in part:
                flat[f"{name}/kernel"] = _conv(w)
            else:
                flat[f"{name}/{_norm(leaf)}"] = w
        elif m := _BLOCK.match(key):
            _convert_block(flat, int(m.group(1)), m.group(2), w, heads, depth, unknown, key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} timm parameters have no AugReg counterpart: {unknown[:8]}; "
            "only timm's plain ViT and ResNet+ViT hybrids with a class token are supported"
        )
    return flat


def _default_heads(state: Mapping[str, np.ndarray], hidden: int) -> int:
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for name in AUGREG_MODELS + TESTING_MODELS:
        c = get_model_config(name)
        if c.hidden_size == hidden and c.num_layers == layers:
            return c.num_heads
    return max(hidden // 64, 1)


def _convert_block(flat, i, part, w, heads, depth, unknown, key):
    base = f"Transformer/encoderblock_{i}"
    attn = f"{base}/MultiHeadDotProductAttention_1"
    module, _, leaf = part.rpartition(".")
    if module in _BLOCK_PARTS:
        name = f"{base}/{_BLOCK_PARTS[module]}"
        if module.startswith("norm"):
            flat[f"{name}/{_norm(leaf)}"] = w
        else:
            flat[f"{name}/{'kernel' if leaf == 'weight' else 'bias'}"] = (
                np.ascontiguousarray(w.T) if leaf == "weight" else w)
    elif module == "attn.qkv":
        for j, name in enumerate(("query", "key", "value")):
            rows = w[j * heads * depth:(j + 1) * heads * depth]
            if leaf == "weight":  # (H*d, D) -> (D, H, d)
                flat[f"{attn}/{name}/kernel"] = np.ascontiguousarray(
                    rows.T.reshape(-1, heads, depth))
            else:
                flat[f"{attn}/{name}/bias"] = rows.reshape(heads, depth)
    elif module == "attn.proj":
        if leaf == "weight":  # (D, H*d) -> (H, d, D)
            flat[f"{attn}/out/kernel"] = np.ascontiguousarray(w.T.reshape(heads, depth, -1))
        else:
            flat[f"{attn}/out/bias"] = w
    else:
        unknown.append(key)


def flat_to_timm(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat AugReg names with Linen shapes -> timm state dict (the inverse of ``timm_to_flat``)."""
    hybrid_stages = any(k.startswith("block") for k in flat)
    stem = "patch_embed.backbone.stem." if hybrid_stages else "patch_embed.backbone."
    out: dict[str, np.ndarray] = {}

    def conv(w):
        return np.ascontiguousarray(np.asarray(w).transpose(3, 2, 0, 1))

    def leaf(x):
        return "weight" if x in ("scale", "kernel") else "bias"

    qkv: dict[int, dict[str, np.ndarray]] = {}
    for key, w in flat.items():
        w = np.asarray(w)
        parts = key.split("/")
        if key == "cls":
            out["cls_token"] = w
        elif key == "Transformer/posembed_input/pos_embedding":
            out["pos_embed"] = w
        elif key == "embedding/kernel":
            out["patch_embed.proj.weight"] = conv(w)
        elif key == "embedding/bias":
            out["patch_embed.proj.bias"] = w
        elif parts[:2] == ["Transformer", "encoder_norm"]:
            out[f"norm.{leaf(parts[2])}"] = w
        elif key == "head/kernel":
            out["head.weight"] = np.ascontiguousarray(w.T)
        elif key == "head/bias":
            out["head.bias"] = w
        elif key == "conv_root/kernel":
            out[f"{stem}conv.weight"] = conv(w)
        elif parts[0] == "gn_root":
            out[f"{stem}norm.{leaf(parts[1])}"] = w.reshape(-1)
        elif re.match(r"block\d+$", parts[0]):
            stage, unit = int(parts[0][5:]) - 1, int(parts[1][4:]) - 1
            timm_part = {v: k for k, v in _UNIT_PARTS.items()}[parts[2]]
            name = f"patch_embed.backbone.stages.{stage}.blocks.{unit}.{timm_part}"
            out[f"{name}.{leaf(parts[3])}"] = conv(w) if parts[3] == "kernel" else w.reshape(-1)
        elif parts[1].startswith("encoderblock_"):
            i = int(parts[1].split("_")[1])
            module = parts[2]
            if module == "MultiHeadDotProductAttention_1":
                if parts[3] == "out":
                    out[f"blocks.{i}.attn.proj.weight" if parts[4] == "kernel"
                        else f"blocks.{i}.attn.proj.bias"] = (
                        np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T)
                        if parts[4] == "kernel" else w)
                else:
                    qkv.setdefault(i, {})[f"{parts[3]}/{parts[4]}"] = w
            else:
                timm_module = {v: k for k, v in _BLOCK_PARTS.items()}[
                    "/".join(parts[2:-1])]
                out[f"blocks.{i}.{timm_module}.{leaf(parts[-1])}"] = (
                    np.ascontiguousarray(w.T) if parts[-1] == "kernel" else w)
        else:
            raise ValueError(f"parameter {key!r} has no timm counterpart")
    for i, d in qkv.items():
        names = ("query", "key", "value")
        out[f"blocks.{i}.attn.qkv.weight"] = np.ascontiguousarray(np.concatenate(
            [d[f"{n}/kernel"].reshape(d[f"{n}/kernel"].shape[0], -1).T for n in names]))
        out[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
            [d[f"{n}/bias"].reshape(-1) for n in names])
    return out
