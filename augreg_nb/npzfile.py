"""Read ``.npz`` files without trusting them: sizes are checked before memory is taken.

An ``.npz`` is a zip of ``.npy`` members; each member starts with a small header that
declares its dtype and shape. :func:`read_headers` reads only those headers (a few hundred
bytes each, nothing is inflated) and checks that they are consistent with the zip entry
itself, so a 100 kB file that declares 10^12 floats, or a 1 MB compressed member that
claims to inflate to gigabytes, is refused before anything is allocated. The caller then
compares the declared shapes with what it expects (a model's parameter shapes, a training
state's leaves) and only then calls :func:`read_arrays`. Pickled (object) arrays are never
loaded.

    from augreg_nb import npzfile
    headers = npzfile.read_headers(path)          # {name: ArrayHeader(shape, dtype)}
    arrays = npzfile.read_arrays(path, headers)   # {name: np.ndarray}

Every problem raises :class:`NpzError` (a ValueError) naming the file and the member.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Deflate cannot expand data by more than about 1032:1; a member that claims more is forged.
MAX_DEFLATE_RATIO = 1100
#: Largest ``.npy`` header accepted (numpy's own default limit).
MAX_HEADER_BYTES = 10_000


class NpzError(ValueError):
    """An ``.npz`` file is damaged, forged, or holds pickled objects."""


@dataclass(frozen=True)
class ArrayHeader:
    """What one member declares: its shape and dtype, and the bytes its data takes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int

    def placeholder(self) -> np.ndarray:
        """A read-only array of this shape and dtype that takes no memory (all zeros), for
        code that only looks at shapes."""
        return np.broadcast_to(np.zeros((), self.dtype), self.shape)


def read_headers(path: str | os.PathLike, *, max_bytes: int | None = None
                 ) -> dict[str, ArrayHeader]:
    """The declared shape and dtype of every array in ``path`` (member names without
    ``.npy``), after checking that each header agrees with its zip entry and that the
    arrays together take at most ``max_bytes`` (when given)."""
    path = Path(path)
    out: dict[str, ArrayHeader] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                out[_array_name(path, info)] = _member_header(path, zf, info)
    except NpzError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            KeyError) as err:
        raise NpzError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") \
            from None
    if not out:
        raise NpzError(f"{path} holds no arrays")
    total = sum(h.nbytes for h in out.values())
    if max_bytes is not None and total > max_bytes:
        raise NpzError(f"{path} declares {total:,} bytes of arrays, more than the {max_bytes:,} "
                       "that such a file can hold; it is damaged or not the right file")
    return out


def _array_name(path: Path, info: zipfile.ZipInfo) -> str:
    if not info.filename.endswith(".npy") or info.is_dir():
        raise NpzError(f"{path}: member {info.filename!r} is not an .npy array")
    return info.filename.removesuffix(".npy")


def _member_header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> ArrayHeader:
    where = f"{path}: array {info.filename.removesuffix('.npy')!r}"
    if info.compress_type != zipfile.ZIP_STORED and (
            info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1)):
        raise NpzError(f"{where} claims to inflate {info.compress_size:,} compressed bytes to "
                       f"{info.file_size:,}, more than compression can produce: the file "
                       "is forged or damaged")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise NpzError(f"{where}: the zip entry's sizes disagree; the file is damaged")
    with zf.open(info) as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
        else:
            raise NpzError(f"{where}: unknown .npy format version {version}")
        header_bytes = f.tell()
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise NpzError(f"{where} stores Python objects (pickled arrays), which are never "
                       "loaded because unpickling can run arbitrary code")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise NpzError(f"{where} declares an invalid shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if header_bytes + nbytes != info.file_size:
        raise NpzError(f"{where} declares {dtype}{list(shape)} ({nbytes:,} bytes) but its zip "
                       f"entry holds {info.file_size - header_bytes:,} bytes of data: the file "
                       "is truncated, damaged or forged")
    return ArrayHeader(tuple(shape), dtype, nbytes)


def read_arrays(path: str | os.PathLike, headers: dict[str, ArrayHeader],
                names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays ``names`` (default: all) of ``path``, whose ``headers`` were checked."""
    path = Path(path)
    out = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in names if names is not None else list(headers):
                arr = archive[name]
                want = headers[name]
                if arr.shape != want.shape or arr.dtype != want.dtype:
                    raise NpzError(f"{path}: array {name!r} changed while it was read")
                out[name] = arr
    except NpzError:
        raise
    except ValueError as err:
        if "pickle" in str(err).lower() or "object arrays" in str(err).lower():
            raise NpzError(f"{path} stores Python objects (pickled arrays), which are never "
                           "loaded because unpickling can run arbitrary code") from None
        raise NpzError(f"{path} is corrupt ({err})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as err:
        raise NpzError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") \
            from None
    return out
