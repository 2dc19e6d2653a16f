"""JAX's persistent compilation cache, under the package's cache folder.

XLA compiles each model's forward pass the first time it runs; on two CPU cores that is
most of the first prediction's latency (seconds for Ti/16, more for B/16), and a kernel
restart loses it. With the persistent cache the compiled program is written to disk and the
next interpreter loads it instead of compiling again:

    >>> from augreg_nb import compile_cache
    >>> compile_cache.enable()  # doctest: +SKIP
    PosixPath('/home/me/.cache/augreg_nb/jax-compile')

``augreg_nb.inference`` and ``augreg_nb.notebook.start`` call :func:`enable`; the cache
lives in ``<cache folder>/jax-compile`` (the cache folder is ``$AUGREG_NB_CACHE`` or the
user cache folder, see :func:`augreg_nb.download.cache_dir`). Set
``AUGREG_NB_NO_COMPILE_CACHE=1`` to turn it off, or set ``jax_compilation_cache_dir``
yourself (``jax.config.update`` or ``$JAX_COMPILATION_CACHE_DIR``): an existing choice is
kept. bench/README.md has the cold and warm first-prediction times.
"""

from __future__ import annotations

import logging
from pathlib import Path

from augreg_nb.download import cache_dir
from augreg_nb.resources import env_flag

logger = logging.getLogger(__name__)

#: "1" turns the persistent compilation cache off.
ENV_NO_COMPILE_CACHE = "AUGREG_NB_NO_COMPILE_CACHE"
#: Folder name under the package's cache folder.
FOLDER = "jax-compile"
#: Programs that compile faster than this are not written: the eager operations JAX compiles
#: one by one take milliseconds each and would cost a file each. A model's forward pass takes
#: 0.2-0.5 s on an idle 2-core machine (more under load), and loading it from the cache saves
#: most of that, so the bar sits well below it.
MIN_COMPILE_TIME_S = 0.1
#: Entries of any size are kept (XLA's CPU executables of small models are a few MB).
MIN_ENTRY_SIZE_BYTES = 0


def default_dir() -> Path:
    """``<cache folder>/jax-compile``."""
    return cache_dir() / FOLDER


def enable(path: str | Path | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache; returns its folder, or None when off.

    ``path`` defaults to :func:`default_dir`. Does nothing (returns None) when
    ``$AUGREG_NB_NO_COMPILE_CACHE`` is set; keeps (and returns) a folder already chosen
    through JAX's own settings. Safe to call many times, also after JAX has compiled
    something. A folder that cannot be created only logs a warning: compiling still works.
    """
    if env_flag(ENV_NO_COMPILE_CACHE):
        return None
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        return Path(current)
    target = Path(path).expanduser() if path is not None else default_dir()
    if current and Path(current) == target:
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.warning("compilation cache off: cannot create %s (%s)", target, err)
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
    # JAX decides once, at its first compilation, whether a cache is in use; start over so
    # that a cache enabled after some compilation takes effect.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    return target


def disable() -> None:
    """Stop using the persistent cache in this interpreter (the files stay on disk)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
