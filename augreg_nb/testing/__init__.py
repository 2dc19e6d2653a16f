"""Fakes in the real formats, for tests and benchmarks (never imported by the package itself).

Submodules write AugReg ``.npz`` checkpoints and timm safetensors with the published names
and shapes, tiny TFDS datasets and image folders and a synthetic full-size index table. The
loopback bucket and Hub live in :mod:`augreg_nb.loopback`: the offline smoke mode serves its
fake checkpoints through them, and the tests make them misbehave.
"""
