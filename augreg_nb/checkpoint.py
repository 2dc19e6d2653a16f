"""Read, check, adapt and write checkpoints in the published AugReg ``.npz`` layout.

    >>> from augreg_nb import checkpoint, models
    >>> params = checkpoint.load("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz",
    ...                          num_classes=37, resolution=384)   # doctest: +SKIP
    >>> model = models.create_model("Ti/16", num_classes=37)
    >>> logits = model.apply({"params": params}, images, train=False)  # doctest: +SKIP
    >>> name, params = checkpoint.load_pretrained(
    ...     "R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1")  # doctest: +SKIP
    >>> checkpoint.save(params, "my-finetune.npz")  # doctest: +SKIP

The published files are flat ``np.savez`` archives of float32 arrays named like
``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`` ("old" Flax
numbering inside a block: ``LayerNorm_0``, ``MultiHeadDotProductAttention_1``,
``LayerNorm_2``, ``MlpBlock_3``); hybrids store GroupNorm parameters as (1, 1, 1, C). The
loader also accepts the newer numbering (``MultiHeadDotProductAttention_0``, ``LayerNorm_1``,
``MlpBlock_0``, GroupNorm as (C,)) and the timm safetensors copies on the Hugging Face Hub
(see ``augreg_nb.timm_convert``). Files are never unpickled.

``load`` compares every name and shape with the model (inferred from the file when no name
is given) and explains a mismatch; it then adapts the tree to the task: a zero-initialised
head for a new class count, and the position embeddings resized for a new resolution by
corner-aligned bilinear interpolation of the grid (the authors' ``scipy.ndimage.zoom``
with ``order=1``), the class-token row kept. ``save`` writes the published layout.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_safetensors

from augreg_nb import npzfile, sources
from augreg_nb.atomic import atomic_write
from augreg_nb.models import (
    AUGREG_MODELS,
    TESTING_MODELS,
    ModelConfig,
    abstract_params,
    get_model_config,
)
from augreg_nb.timm_convert import timm_to_flat

logger = logging.getLogger(__name__)

#: Name of the position table in the flat tree.
POSEMB = "Transformer/posembed_input/pos_embedding"
#: Sub-module names inside an encoder block: newer Flax numbering -> published numbering.
NEW_TO_OLD_NUMBERING = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
#: Matches GroupNorm parameter names (stored as (1, 1, 1, C) in the published files).
GROUPNORM_PARAM = re.compile(r"(^|/)gn(_root|_proj|\d+)/(scale|bias)$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says why and what to do."""


# ------------------------------------------------------------------------------ trees


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{"a/b/c": leaf} -> nested dict."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def canonicalize(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Published names (old numbering) and Linen shapes (GroupNorm as (C,)) for any variant.

    Accepts the old or the new Flax numbering and GroupNorm as (1, 1, 1, C) or (C,); strips
    an ``opt/target/`` prefix (checkpoints saved together with an optimizer state).
    """
    names = list(flat)
    if names and all(n.startswith("opt/target/") for n in names):
        flat = {n[len("opt/target/"):]: v for n, v in flat.items()}
    new_numbering = any(
        "/MultiHeadDotProductAttention_0/" in n or "/MlpBlock_0/" in n for n in flat
    )
    out: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split("/")
        if new_numbering and len(parts) > 2 and parts[1].startswith("encoderblock_"):
            parts[2] = NEW_TO_OLD_NUMBERING.get(parts[2], parts[2])
        name = "/".join(parts)
        if GROUPNORM_PARAM.search(name) and value.ndim == 4 and value.shape[:3] == (1, 1, 1):
            value = value.reshape(value.shape[-1])
        out[name] = value
    return out


# ---------------------------------------------------------------------------- reading


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size < 10**9 and head[8:9] == b"{"


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, float32, canonical names; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise CheckpointError(
            f"{path} is not an .npz archive (it does not start like a zip file); it is "
            "corrupt or of another format: delete it and fetch the checkpoint again"
        )
    headers = _npz_headers(path)
    try:
        flat = npzfile.read_arrays(path, headers)
    except npzfile.NpzError as err:
        raise CheckpointError(f"{err}: delete it and fetch the checkpoint again") from None
    return _as_float32(canonicalize(flat), path)


#: More bytes of arrays than any AugReg checkpoint holds (the largest, L/16 and R50+L/32 at
#: 384 px with the 21,843-class head, hold about 1.3 GB of float32).
MAX_CHECKPOINT_BYTES = 4 << 30
#: More classes than any head a checkpoint can sensibly have (ImageNet-21k has 21,843).
MAX_CLASSES = 1_000_000


def _npz_headers(path: Path) -> dict[str, npzfile.ArrayHeader]:
    """The arrays ``path`` declares, checked against the zip entries and the size bound,
    floating point only; nothing is inflated."""
    try:
        headers = npzfile.read_headers(path, max_bytes=MAX_CHECKPOINT_BYTES)
    except npzfile.NpzError as err:
        raise CheckpointError(f"{err}: delete it and fetch the checkpoint again") from None
    for name, h in headers.items():
        if not np.issubdtype(h.dtype, np.floating):
            raise CheckpointError(
                f"{path}: array {name!r} has dtype {h.dtype}, expected floating point; "
                "this is not an AugReg checkpoint"
            )
    return headers


def _check_npz_shapes(path: Path, model_name: str | None) -> None:
    """Refuse ``path`` when the shapes its headers declare do not describe ``model_name``
    (or, without one, any registered model): before a byte of its arrays is read."""
    placeholders = canonicalize({n: h.placeholder() for n, h in _npz_headers(path).items()})
    classes = _file_num_classes(placeholders)
    if classes is not None and classes > MAX_CLASSES:
        raise CheckpointError(f"{path} declares a head of {classes:,} classes (at most "
                              f"{MAX_CLASSES:,} make sense); the file is damaged or forged")
    if model_name is None:
        model_name = infer_model(placeholders)
    check_params(placeholders, get_model_config(model_name).name, where=str(path))


def _as_float32(flat: dict[str, Any], path: Any) -> dict[str, np.ndarray]:
    if not flat:
        raise CheckpointError(f"{path} holds no arrays; it is not an AugReg checkpoint")
    out = {}
    for name, value in flat.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(
                f"{path}: array {name!r} has dtype {value.dtype}, expected floating point; "
                "this is not an AugReg checkpoint"
            )
        out[name] = value.astype(np.float32, copy=False)
    return out


def read_timm_safetensors(path: str | os.PathLike, *, num_heads: int | None = None
                          ) -> dict[str, np.ndarray]:
    """A timm ``.safetensors`` file -> flat AugReg arrays (float32, canonical names)."""
    path = Path(path)
    try:
        state = load_safetensors(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it is truncated, corrupt "
            "or stored in a dtype numpy cannot read (bfloat16): fetch it again"
        ) from err
    try:
        flat = timm_to_flat(state, num_heads=num_heads)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return _as_float32(flat, path)


#: File layouts :func:`read_checkpoint` reads (the names ``augreg_nb.sources`` reports).
LAYOUTS = ("npz", "timm-safetensors")


def read_checkpoint(path: str | os.PathLike, *, model_name: str | None = None,
                    layout: str | None = None) -> dict[str, np.ndarray]:
    """Flat canonical arrays of an AugReg ``.npz`` or a timm ``.safetensors`` file.

    ``layout`` ("npz" or "timm-safetensors", as a resolved source reports it) skips
    looking at the file's first bytes to tell which it is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if layout is None:
        with open(path, "rb") as f:
            head = f.read(16)
        layout = "timm-safetensors" if _looks_like_safetensors(head) else (
            "npz" if head.startswith(b"PK\x03\x04") else None)
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "timm-safetensors":
        num_heads = get_model_config(model_name).num_heads if model_name else None
        return read_timm_safetensors(path, num_heads=num_heads)
    if layout == "npz":  # else read_npz says what the file is not
        _check_npz_shapes(path, model_name)
    return read_npz(path)


# ------------------------------------------------------------------- model comparison


def _signature_of_file(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    def shape(name):
        return tuple(flat[name].shape) if name in flat else None

    emb = shape("embedding/kernel")
    blocks = {m.group(1) for n in flat if (m := re.match(r"Transformer/encoderblock_(\d+)/", n))}
    query = shape("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
    mlp = shape("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel")
    resnet = None
    if "conv_root/kernel" in flat:
        units: dict[int, int] = {}
        for n in flat:
            if m := re.match(r"block(\d+)/unit(\d+)/", n):
                b, u = int(m.group(1)), int(m.group(2))
                units[b] = max(units.get(b, 0), u)
        resnet = tuple(units[b] for b in sorted(units))
    return {
        "hidden_size": emb[3] if emb else None,
        "patch_size": emb[0] if emb else None,
        "num_layers": len(blocks),
        "num_heads": query[1] if query and len(query) == 3 else None,
        "mlp_dim": mlp[1] if mlp else None,
        "resnet_layers": resnet,
    }


def _signature_of_config(config: ModelConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in
            ("hidden_size", "patch_size", "num_layers", "num_heads", "mlp_dim", "resnet_layers")}


def _closest_models(flat: Mapping[str, np.ndarray]) -> list[tuple[int, str]]:
    sig = _signature_of_file(flat)
    scored = []
    for name in AUGREG_MODELS + TESTING_MODELS:
        ref = _signature_of_config(get_model_config(name))
        scored.append((sum(sig[k] == ref[k] for k in sig), name))
    return sorted(scored, key=lambda s: -s[0])


def infer_model(flat: Mapping[str, np.ndarray]) -> str:
    """The registered model whose architecture the file's shapes describe."""
    sig = _signature_of_file(flat)
    for name in AUGREG_MODELS + TESTING_MODELS:
        if _signature_of_config(get_model_config(name)) == sig:
            return name
    described = ", ".join(f"{k}={v}" for k, v in sig.items())
    closest = _closest_models(flat)[0][1]
    raise CheckpointError(
        f"the checkpoint's shapes ({described}) match no registered model (closest: "
        f"{closest}); it is not an AugReg checkpoint or it is damaged"
    )


def _file_num_classes(flat: Mapping[str, np.ndarray]) -> int | None:
    return int(flat["head/bias"].shape[0]) if "head/bias" in flat else None


def _file_grid(flat: Mapping[str, np.ndarray]) -> int:
    shape = tuple(flat[POSEMB].shape)
    rows = shape[1] - 1 if len(shape) == 3 else -1
    grid = math.isqrt(max(rows, 0))
    if len(shape) != 3 or grid * grid != rows:
        raise CheckpointError(
            f"position embeddings of shape {flat[POSEMB].shape} do not hold a class token "
            "plus a square grid; the file is damaged"
        )
    return grid


def expected_shapes(model_name: str, num_classes: int, resolution: int) -> dict[str, tuple]:
    """Flat names and shapes of the model's parameter tree (abstract evaluation, no memory)."""
    return dict(_expected_shapes(model_name, num_classes, resolution))


@functools.lru_cache(maxsize=32)
def _expected_shapes(model_name: str, num_classes: int, resolution: int
                     ) -> tuple[tuple[str, tuple], ...]:
    return tuple((k, tuple(v.shape)) for k, v in flatten(abstract_params(
        model_name, num_classes, resolution)).items())


def check_params(flat: Mapping[str, Any], model_name: str, *, where: str = "checkpoint"
                 ) -> None:
    """Raise ``CheckpointError`` unless names and shapes are exactly the model's.

    The head's class count and the position table's grid are taken from ``flat`` itself
    (both are adapted later); every other shape must match.
    """
    config = get_model_config(model_name)
    num_classes = _file_num_classes(flat) or 1
    grid = _file_grid(flat) if POSEMB in flat else config.grid_size(224)
    want = expected_shapes(model_name, num_classes, config.resolution_for_grid(grid))
    if "head/bias" not in flat:  # a file without head (timm with num_classes=0)
        want = {k: v for k, v in want.items() if not k.startswith("head/")}
    have = {k: tuple(v.shape) for k, v in flat.items()}
    # Shallow names first (cls, embedding, ...): they tell most about a mismatch.
    def order(keys):
        return sorted(keys, key=lambda k: (k.count("/"), k))

    missing = order(set(want) - set(have))
    extra = order(set(have) - set(want))
    wrong = order(k for k in set(want) & set(have) if want[k] != have[k])
    if not (missing or extra or wrong):
        return
    lines = [f"{where} does not fit model {model_name}:"]
    for title, keys, fmt in (
        ("missing", missing, lambda k: f"{k} {want[k]}"),
        ("unexpected", extra, lambda k: f"{k} {have[k]}"),
        ("wrong shape", wrong, lambda k: f"{k}: file {have[k]}, model {want[k]}"),
    ):
        if keys:
            shown = "\n    ".join(fmt(k) for k in keys[:12])
            more = f"\n    ... and {len(keys) - 12} more" if len(keys) > 12 else ""
            lines.append(f"  {len(keys)} {title}:\n    {shown}{more}")
    try:
        looks_like = infer_model(flat)
        lines.append(f"The file looks like a {looks_like} checkpoint: load it with "
                     f"model_name={looks_like!r} (or leave model_name out).")
    except CheckpointError:
        lines.append(f"The file matches no registered model (closest: "
                     f"{_closest_models(flat)[0][1]}); it may be damaged.")
    raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------- adapting


def _linear_axis(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Corner-aligned linear interpolation of ``a`` to ``size`` samples along ``axis``."""
    n = a.shape[axis]
    if n == size:
        return a
    if n == 1 or size == 1:
        return np.repeat(np.take(a, [0], axis=axis), size, axis=axis)
    pos = np.arange(size, dtype=np.float64) * ((n - 1) / (size - 1))
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    frac = pos - lo
    shape = [1] * a.ndim
    shape[axis] = size
    frac = frac.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - frac) + np.take(a, lo + 1, axis=axis) * frac


def resize_posemb(posemb: np.ndarray, grid: int) -> np.ndarray:
    """Position table (1, 1 + g*g, D) -> (1, 1 + grid*grid, D), class-token row kept.

    The grid part is resized bilinearly with corners aligned, as
    ``scipy.ndimage.zoom(table, (grid / g, grid / g, 1), order=1)`` does.
    """
    posemb = np.asarray(posemb)
    rows = posemb.shape[1] - 1
    old = math.isqrt(rows)
    if old * old != rows:
        raise CheckpointError(f"position table with {rows} grid rows is not square")
    table = posemb[0, 1:].reshape(old, old, -1).astype(np.float64)
    table = _linear_axis(_linear_axis(table, grid, 0), grid, 1)
    table = table.reshape(1, grid * grid, -1).astype(posemb.dtype)
    return np.concatenate([posemb[:, :1], table], axis=1)


def adapt(flat: dict[str, np.ndarray], model_name: str, *, num_classes: int | None = None,
          resolution: int | None = None) -> dict[str, np.ndarray]:
    """New zero head for ``num_classes`` (kept if equal) and posemb resized for ``resolution``."""
    flat = dict(flat)
    config = get_model_config(model_name)
    have_classes = _file_num_classes(flat)
    if num_classes is not None and int(num_classes) != have_classes:
        hidden = config.hidden_size
        logger.info("replacing the %s-class head by a zero-initialised %d-class head",
                    have_classes, num_classes)
        flat["head/kernel"] = np.zeros((hidden, int(num_classes)), np.float32)
        flat["head/bias"] = np.zeros((int(num_classes),), np.float32)
    elif have_classes is None:
        raise CheckpointError(
            "the checkpoint has no classification head; pass num_classes=N to add a "
            "zero-initialised one"
        )
    if resolution is not None:
        old, new = _file_grid(flat), config.grid_size(int(resolution))
        if old != new:
            logger.info("resizing position embeddings of %s from a %dx%d to a %dx%d grid "
                        "for %d px (bilinear, corners aligned)", model_name, old, old, new,
                        new, resolution)
            flat[POSEMB] = resize_posemb(flat[POSEMB], new)
    return flat


# ---------------------------------------------------------------------- public API


def check_finite(flat: Mapping[str, np.ndarray], *, where: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` when any array holds NaN or an infinity, naming them."""
    bad = {}
    for name, value in flat.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.inexact):
            count = int(value.size - np.count_nonzero(np.isfinite(value)))
            if count:
                bad[name] = (count, value.size)
    if bad:
        shown = "; ".join(f"{k}: {c:,} of {n:,} values" for k, (c, n) in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more arrays" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{where} holds NaN or infinite weights ({shown}{more}); it is damaged or comes "
            "from a run that diverged, and its predictions would be meaningless. Fetch the "
            "checkpoint again (or pick an earlier one); allow_nonfinite=True loads it anyway "
            "for inspection.")


def load_flat(path: str | os.PathLike, *, model_name: str | None = None,
              num_classes: int | None = None, resolution: int | None = None,
              allow_nonfinite: bool = False, layout: str | None = None
              ) -> tuple[str, dict[str, np.ndarray]]:
    """Like ``load`` but returns ``(model_name, flat arrays)``; ``layout`` as in
    :func:`read_checkpoint`."""
    flat = read_checkpoint(path, model_name=model_name, layout=layout)
    if model_name is None:
        model_name = infer_model(flat)
    else:
        model_name = get_model_config(model_name).name
    check_params(flat, model_name, where=str(path))
    if allow_nonfinite:
        try:
            check_finite(flat, where=str(path))
        except CheckpointError as err:
            logger.warning("loading anyway (allow_nonfinite=True): %s", err)
    else:
        check_finite(flat, where=str(path))
    return model_name, adapt(flat, model_name, num_classes=num_classes, resolution=resolution)


def load(path: str | os.PathLike, *, model_name: str | None = None,
         num_classes: int | None = None, resolution: int | None = None,
         allow_nonfinite: bool = False) -> dict:
    """Parameters of a checkpoint file as a Linen tree, checked and adapted to the task.

    Args:
      path: an AugReg ``.npz`` (old or new numbering) or a timm ``.safetensors`` file.
      model_name: "B/16", ...; inferred from the shapes when None.
      num_classes: class count of the task; a different count gives a zero head.
      resolution: input size in pixels; the position embeddings are resized to its grid.
      allow_nonfinite: load weights holding NaN or infinities (with a warning) instead of
        refusing them.
    """
    return unflatten(load_flat(path, model_name=model_name, num_classes=num_classes,
                               resolution=resolution, allow_nonfinite=allow_nonfinite)[1])


def checkpoint_resolution(model_name: str, params: Mapping) -> int:
    """The resolution a parameter tree's position table was made for (224, 384, ...)."""
    flat = flatten(params) if POSEMB not in params else params
    return get_model_config(model_name).resolution_for_grid(_file_grid(flat))


def save(params: Mapping, path: str | os.PathLike) -> Path:
    """Write ``params`` (Linen tree or flat dict) as a published-layout ``.npz`` (atomic).

    Names use the old numbering and GroupNorm parameters are stored as (1, 1, 1, C), so the
    file loads wherever AugReg checkpoints load.
    """
    flat = canonicalize({k: np.asarray(v) for k, v in flatten(dict(params)).items()})
    out = {}
    for name, value in flat.items():
        value = np.asarray(value, dtype=np.float32)
        if GROUPNORM_PARAM.search(name) and value.ndim == 1:
            value = value.reshape(1, 1, 1, -1)
        out[name] = value
    if "embedding/kernel" not in out:
        raise CheckpointError("these parameters have no 'embedding/kernel'; they are not a "
                              "ViT parameter tree (pass params, not the variables dict)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # the user's umask, no temp file left on failure
        np.savez(f, **out)
    return path


def load_pretrained(name_or_path: str | os.PathLike, *, model_name: str | None = None,
                    num_classes: int | None = None, resolution: int | None = None,
                    offline: bool | None = None, on_attempt=None) -> tuple[str, dict]:
    """Resolve a checkpoint name (or path) through the sources, load and adapt it.

    Returns ``(model_name, params)``. ``name_or_path`` is an AugReg filename without
    ``.npz`` (e.g. ``"Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"``), a local
    file, or anything else ``augreg_nb.sources.resolve_checkpoint`` understands;
    ``on_attempt(k, n, description)`` is passed on to it (called before each source).
    """
    resolved = sources.resolve_checkpoint(name_or_path, offline=offline, on_attempt=on_attempt)
    name, flat = load_resolved(resolved, model_name=model_name, num_classes=num_classes,
                               resolution=resolution)
    return name, unflatten(flat)


def load_resolved(resolved: sources.Resolved, *, model_name: str | None = None,
                  num_classes: int | None = None, resolution: int | None = None
                  ) -> tuple[str, dict[str, np.ndarray]]:
    """``load_flat`` of a file the resolver found, in the layout it found (no second look
    at the file) and for the model it names (None: read off the file's shapes)."""
    logger.info("loading %s from %s (%s)", resolved.name, resolved.path, resolved.source)
    return load_flat(resolved.path, model_name=model_name or resolved.model,
                     num_classes=num_classes, resolution=resolution, layout=resolved.layout)
