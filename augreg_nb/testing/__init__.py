"""Fakes in the real formats, for tests, benchmarks and the notebooks' offline smoke mode.

Submodules write AugReg ``.npz`` checkpoints and timm safetensors with the published names
and shapes, tiny TFDS datasets and image folders, a synthetic full-size index table, and
loopback servers that behave like the checkpoint bucket and the Hugging Face Hub.
"""
