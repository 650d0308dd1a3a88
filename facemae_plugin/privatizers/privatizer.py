"""The privatizer contract every release method implements (the FaceMAE stage and the baselines).

A privatizer is a callable ``(images [N, 3, H, W] normalised, keys) -> images`` with ``k``
variants per image (``variants -> [N, k, 3, H, W]``), a ``provenance()`` naming everything that
decides its output, ``check_image_size`` (refuse a size before any work), and ``worker_op()``:
a torch-free twin with the same output bytes for convert's worker processes, or None.
"""
import copy
import math
import numbers

import torch

from ..core.errors import UsageError, interval
from ..core.keyseed import variant_key


def variant_keys(keys, k):
    """[N * k] mask keys, record-major: (key0, j=0), (key0, j=1), ..., (key1, j=0), ..."""
    return [variant_key(key, j) for key in keys for j in range(k)]


def as_key_list(keys, batch_size):
    """Record keys as a list of Python ints, one per image."""
    if isinstance(keys, torch.Tensor):
        keys = keys.reshape(-1).tolist()
    keys = [int(key) for key in keys]
    if len(keys) != batch_size:
        raise ValueError(f"got {len(keys)} record keys for a batch of {batch_size} images")
    return keys


def checked_number(value, what, integer=False, low=None, low_open=False, high=None, high_open=False):
    """``value`` as a float (or int), refused unless it is a finite number of that kind within range."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise UsageError(f"{what} must be {'an integer' if integer else 'a number'} in "
                         f"{interval(low, high, low_open, high_open)}, got {value!r}")
    return int(value) if integer else float(value)


SECRET = "secret"  # what a provenance says in place of a seed its publisher keeps


class Privatizer:
    """Base: ``__call__`` is variant 0; ``variants`` stacks variants 0..k-1.

    ``seed_public``: whether ``provenance()`` names the seed. A published seed lets anyone holding
    the sources (and the checkpoint) regenerate the release byte for byte; a secret one reads
    ``SECRET`` there and is kept by its publisher (``convert.secret``).
    """

    method = None

    def __init__(self, k=1, seed=0):
        self.k = checked_number(k, "k (variants per image)", integer=True, low=1)
        self.seed = checked_number(seed, "seed", integer=True)
        self.seed_public = True

    def with_seed(self, seed, public=None):
        """This privatizer drawing from another ``seed`` (a shallow copy: a model is shared, not copied)."""
        other = copy.copy(self)
        other.seed = checked_number(seed, "seed", integer=True)
        other.seed_public = self.seed_public if public is None else bool(public)
        return other

    def __call__(self, images, keys):
        return self._apply(images, as_key_list(keys, images.shape[0]), 0)

    def variants(self, images, keys):
        keys = as_key_list(keys, images.shape[0])
        return torch.stack([self._apply(images, keys, j) for j in range(self.k)], dim=1)

    def _apply(self, images, keys, j):  # [N, 3, H, W] -> [N, 3, H, W]
        raise NotImplementedError

    def worker_op(self):
        """A torch-free ``pixelops`` op with the same output bytes, or None (the converter then
        runs this privatizer in its own process). Cheap ops run in the decode workers."""
        return None

    def check_image_size(self, size):
        """Refuse, before any work, images of ``size`` (height, width) this privatizer cannot process."""

    def params(self):
        return {}

    def provenance(self):
        return self.published({"method": self.method, **self.params(), "k": self.k})

    def published(self, provenance):
        """``provenance`` as it may be published: a secret seed reads ``SECRET``."""
        if "seed" in provenance and not self.seed_public:
            return {**provenance, "seed": SECRET}
        return provenance
