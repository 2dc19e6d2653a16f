"""augreg_nb: choose, fetch, fine-tune and re-check the AugReg Vision Transformers.

The package backs the notebooks under ``notebooks/``; every notebook cell is a call into it.
Importing the package is cheap: heavy libraries (jax, TensorFlow) are imported by the
modules that need them, so ``augreg-nb index`` answers quickly.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
