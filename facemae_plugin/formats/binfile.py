"""Verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): read safely, write atomically.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``2*P`` encoded images and
``P`` booleans, pair ``i`` being ``bins[2i], bins[2i+1]``. Pickles can run code
when loaded, so they are read with an unpickler that admits only the few types
the format uses and refuses everything else before it is called (docs/formats.md).
"""
import io
import os
import pickle

import numpy as np

from ..core.errors import FaceMAEError
from ..core.files import atomic_file

# (module, name) pairs a .bin may reference. Python 2 files store images as str
# (bytes under encoding="bytes"); Python 3 protocol-2 files spell bytes as
# _codecs.encode; some writers keep images or labels as numpy arrays.
_ALLOWED_GLOBALS = {
    ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "list"),
    ("builtins", "tuple"), ("builtins", "bool"), ("builtins", "int"),
    ("__builtin__", "bytearray"), ("__builtin__", "list"), ("__builtin__", "tuple"),
    ("__builtin__", "bool"), ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class BinFormatError(FaceMAEError):
    """A ``.bin`` file is not a verification set, or tried to load something it may not."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise BinFormatError(
            f"{self._path}: refused to load {module}.{name}; a verification .bin holds only "
            f"image bytes and booleans (is this file hostile or another kind of pickle?)"
        )


def _as_bytes(item, path, index):
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise BinFormatError(f"{path}: image {index} is a {type(item).__name__}, expected encoded image bytes")


def load_bin(path):
    """Return ``(images, issame)``: a list of encoded image bytes and a bool array of pair labels."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except BinFormatError:
        raise
    except Exception as exc:  # any unpickling failure means "not a .bin"
        raise BinFormatError(f"{path}: not a readable verification .bin ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise BinFormatError(f"{path}: expected a pickled (bins, issame_list) pair")
    bins, issame = loaded
    images = [_as_bytes(item, path, i) for i, item in enumerate(_sequence(bins, "bins", path))]
    issame = np.array([_as_label(value, path, i) for i, value in enumerate(_sequence(issame, "issame", path))],
                      dtype=bool)
    if len(images) != 2 * len(issame):
        raise BinFormatError(
            f"{path}: {len(images)} images for {len(issame)} pairs, expected exactly 2 images per pair"
        )
    if not len(issame):
        raise BinFormatError(f"{path}: holds no pairs; a verification set needs at least one")
    return images, issame


def _sequence(value, name, path):
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value
    if not isinstance(value, (list, tuple)):
        raise BinFormatError(f"{path}: {name} is a {type(value).__name__}, expected a list")
    return value


def _as_label(value, path, index):
    """A pair label: a bool (or numpy bool), or the integers 0 and 1 some writers store."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise BinFormatError(f"{path}: issame[{index}] is {value!r} ({type(value).__name__}), expected a boolean")


def write_bin(path, images, issame):
    """Write ``(images, issame)`` as arcface_torch's verification sets are written, atomically."""
    images = [bytes(img) for img in images]
    issame = [bool(v) for v in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs, expected 2 images per pair")
    with atomic_file(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=4)
