"""Checkpoints with random weights in the exact published layouts: the ``fake:`` source.

``fake:<model>`` (e.g. ``fake:testing``, ``fake:Ti/16``) names an upstream checkpoint of the
model with seeded random, well-scaled weights and a 1000-class head, written by the resolver
into ``<cache>/generated/`` on first use (``sources.register_generator``). The smoke preset
fine-tunes one: it shows that the pipeline learns, not transfer. Tests and the notebooks'
smoke mode write such files directly::

    >>> from augreg_nb.random_checkpoints import write_fake_checkpoint
    >>> path = write_fake_checkpoint(tmp / "Ti_16-fake.npz", "Ti/16", num_classes=10,
    ...                              resolution=64)  # doctest: +SKIP

An upstream fake of an AugReg model (``num_classes=21843, resolution=224``) has exactly the
names and shapes of ``data/npz_layout/{prefix}.json``; smaller heads and resolutions give the
shapes of fine-tuned files. The values are random (seeded) but well scaled, so forward passes
give varied, finite logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from augreg_nb import sources
from augreg_nb.checkpoint import (
    GROUPNORM_PARAM,
    NEW_TO_OLD_NUMBERING,
    canonicalize,
    flatten,
    save,
)
from augreg_nb.config import FAKE_CHECKPOINT_PREFIX
from augreg_nb.models import abstract_params


def fake_layout(model_name: str, *, num_classes: int = 21843, resolution: int = 224,
                numbering: str = "old") -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint file for the model, computed without allocating.

    ``numbering="old"`` is the published layout (GroupNorm as (1, 1, 1, C));
    ``"new"`` is the same tree with the newer Flax numbering and GroupNorm as (C,).
    """
    if numbering not in ("old", "new"):
        raise ValueError(f"numbering must be 'old' or 'new', got {numbering!r}")
    shapes = {k: tuple(v.shape) for k, v in
              flatten(abstract_params(model_name, num_classes, resolution)).items()}
    if numbering == "new":
        old_to_new = {v: k for k, v in NEW_TO_OLD_NUMBERING.items()}
        renamed = {}
        for name, shape in shapes.items():
            parts = name.split("/")
            if len(parts) > 2 and parts[1].startswith("encoderblock_"):
                parts[2] = old_to_new[parts[2]]
            renamed["/".join(parts)] = shape
        return renamed
    return {k: ((1, 1, 1, *v) if GROUPNORM_PARAM.search(k) else v) for k, v in shapes.items()}


def fake_params(model_name: str, *, num_classes: int = 21843, resolution: int = 224,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Flat, seeded, well-scaled float32 parameters with Linen shapes (GroupNorm (C,))."""
    rng = np.random.default_rng(seed)
    layout = fake_layout(model_name, num_classes=num_classes, resolution=resolution,
                         numbering="new")
    flat = {}
    for name in sorted(layout):
        shape = layout[name]
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "kernel":
            if "MultiHeadDotProductAttention" in name and not name.endswith("out/kernel"):
                fan_in = shape[0]
            else:
                fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif leaf == "scale":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:  # biases, cls, position embeddings
            value = 0.1 * rng.normal(size=shape)
        flat[name] = value.astype(np.float32)
    return canonicalize(flat)


def write_fake_checkpoint(path: str | os.PathLike, model_name: str, *,
                          num_classes: int = 21843, resolution: int = 224, seed: int = 0,
                          numbering: str = "old") -> Path:
    """Write a fake ``.npz`` checkpoint of ``model_name`` in the published layout."""
    if numbering not in ("old", "new"):
        raise ValueError(f"numbering must be 'old' or 'new', got {numbering!r}")
    flat = fake_params(model_name, num_classes=num_classes, resolution=resolution, seed=seed)
    path = save(flat, path)
    if numbering == "new":
        # Same values under the newer numbering, GroupNorm as (C,). Both layouts list the
        # names in the same order, so they pair up one to one.
        kw = {"num_classes": num_classes, "resolution": resolution}
        old_names = list(fake_layout(model_name, **kw))
        new_layout = fake_layout(model_name, numbering="new", **kw)
        values = {new: flat[old].reshape(new_layout[new])
                  for old, new in zip(old_names, new_layout, strict=True)}
        with open(path, "wb") as f:
            np.savez(f, **values)
    return path


def _write_fake_upstream(model_name: str, path: Path) -> None:
    write_fake_checkpoint(path, model_name, num_classes=1000, seed=0)


# "fake:<model>" names a fake upstream checkpoint (1000-class head, seed 0) that the
# resolver writes into <cache>/generated/ on first use: the smoke preset's checkpoint.
sources.register_generator(FAKE_CHECKPOINT_PREFIX, _write_fake_upstream)
