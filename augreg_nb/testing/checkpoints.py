"""Fake checkpoints in the exact published layouts, for tests and the offline smoke mode.

The ``.npz`` writers live in :mod:`augreg_nb.random_checkpoints` (the ``fake:`` checkpoint
source the smoke preset uses) and are re-exported here; ``write_fake_timm_safetensors``
writes the same values in the layout of timm's Hugging Face Hub copies.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from augreg_nb.checkpoint import canonicalize
from augreg_nb.random_checkpoints import fake_layout, fake_params, write_fake_checkpoint
from augreg_nb.timm_convert import flat_to_timm

__all__ = ["fake_layout", "fake_params", "write_fake_checkpoint",
           "write_fake_timm_safetensors", "write_timm_safetensors"]


def write_fake_timm_safetensors(path: str | os.PathLike, model_name: str, *,
                                num_classes: int = 1000, resolution: int = 224,
                                seed: int = 0) -> Path:
    """Write the same fake parameters as ``write_fake_checkpoint`` in timm's layout."""
    flat = fake_params(model_name, num_classes=num_classes, resolution=resolution, seed=seed)
    return write_timm_safetensors(flat, path)


def write_timm_safetensors(flat, path: str | os.PathLike) -> Path:
    """Write flat AugReg arrays as a timm ``.safetensors`` state dict (what the Hub hosts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = flat_to_timm(canonicalize({k: np.asarray(v, np.float32) for k, v in flat.items()}))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()},
              str(path))
    return path
