"""Per-record seeds and mask sizes, torch-free: the converter's worker processes derive masks without torch.

``seed_for_key`` seeds FaceMAE's mask generator (and the noise baseline's) from (seed, record key);
``variant_key`` gives the j-th reconstruction of a record its own key; ``num_visible`` is the one
rule for how many patches a mask ratio leaves visible (docs/formats.md, "Masks").
"""
from .errors import UsageError

_MASK64 = (1 << 64) - 1
_KEY_BITS = (1 << 63) - 1  # derived keys stay non-negative int64 (torch tensors, JSON)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seed_for_key(seed: int, key: int) -> int:
    """A 64-bit generator seed from (seed, record key); stable across runs and machines."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(key) & _MASK64))


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: int(L * (1 - mask_ratio)); a ratio that leaves none is refused."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 <= mask_ratio < 1.0:
        raise UsageError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep < 1:
        raise UsageError(f"mask_ratio {mask_ratio} keeps no patch out of {num_patches}; "
                         f"expected a ratio that leaves at least one visible")
    return len_keep


def variant_key(key, j):
    """Mask key of the j-th reconstruction of record ``key``: ``key`` itself for j = 0."""
    key, j = int(key), int(j)
    if j < 0:
        raise ValueError(f"reconstruction index must be >= 0, got {j}")
    if j == 0:
        return key
    # a 64-bit mix of (key, j): distinct j give unrelated masks (seed_for_key mixes it once more
    # with the run's seed before it seeds the mask generator)
    return seed_for_key(key, j) & _KEY_BITS
