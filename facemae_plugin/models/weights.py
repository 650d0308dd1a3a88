"""Reading a user's torch file (checkpoint, ``model.pt``, ``resume.pt``): restricted, one-line errors.

``torch.load(weights_only=True)`` refuses anything but tensors and plain containers, so a hostile
pickle cannot run code; every way the file can fail to load becomes a ``CheckpointError`` that
names it.
"""
import os

import torch

from ..core.errors import CheckpointError


def load_weights_file(path, what, map_location="cpu"):
    """The object in ``path`` (a ``what``, e.g. "recogniser model.pt"), loaded with weights_only."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # empty, truncated, not a zip or pickle, or types weights_only refuses
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first_line}); "
                              f"expected a {what}") from None


def is_tensor_dict(value):
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())
