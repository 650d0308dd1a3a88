"""Patches and masks: the patch grid of an image, and which patches a record keeps visible.

A record's mask depends only on ``(seed, key)`` (``core.keyseed``), never on its batch, so
convert, the batch stage, the masked baseline and export's fixed-mask graphs all mask a record
the same way. Masks are ``[N, L]`` floats with 1 = masked, 0 = visible, in patch order.
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import numpy as np
import torch

from ..core.keyseed import num_visible, seed_for_key, variant_key

__all__ = ["patchify", "unpatchify", "random_masking", "mask_from_ids", "mask_noise_for_keys", "masks_for_keys"]


# --------------------------------------------------------------------------- patches


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, L, p*p*C], patches row-major, pixels (row, col, channel) inside."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)  # [N, C, gh, p, gw, p]
    x = x.permute(0, 2, 4, 3, 5, 1)  # [N, gh, gw, p, p, C]
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, in_chans: int = 3) -> torch.Tensor:
    """[N, L, p*p*C] -> [N, C, H, W] for a square grid; the exact inverse of `patchify`."""
    n, num_patches, dim = x.shape
    p = patch_size
    grid = int(round(math.sqrt(num_patches)))
    if grid * grid != num_patches or dim != p * p * in_chans:
        raise ValueError(
            f"cannot unpatchify [{n}, {num_patches}, {dim}]: expected a square number of patches "
            f"of {p}*{p}*{in_chans}={p * p * in_chans} values")
    x = x.reshape(n, grid, grid, p, p, in_chans)  # [N, gh, gw, p, p, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [N, C, gh, p, gw, p]
    return x.reshape(n, in_chans, grid * p, grid * p)


# --------------------------------------------------------------------------- masking


def random_masking(noise: torch.Tensor, mask_ratio: float
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample masking from noise [N, L]: the len_keep lowest-noise patches stay visible.

    Returns ids_shuffle [N, L] (visible ids first), ids_restore [N, L] (its inverse) and
    mask [N, L] with 1 = masked, 0 = visible, in the original patch order.
    """
    if noise.dim() != 2:
        raise ValueError(f"mask noise must be [N, L], got shape {list(noise.shape)}")
    len_keep = num_visible(noise.shape[1], mask_ratio)
    # stable sort: equal noise values (never expected) still give one answer on every device
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # [N, L]
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
    return ids_shuffle, ids_restore, mask_from_ids(ids_shuffle, len_keep)


def mask_from_ids(ids_shuffle: torch.Tensor, len_keep: int) -> torch.Tensor:
    """[N, L] float mask, 1 = masked, from the first len_keep ids of ids_shuffle being visible."""
    mask = torch.ones(ids_shuffle.shape, device=ids_shuffle.device)  # [N, L]
    return mask.scatter(1, ids_shuffle[:, :len_keep], 0.0)


def mask_noise_for_keys(seed: int, keys: Iterable[int], num_patches: int) -> torch.Tensor:
    """[N, L] float32 CPU noise; row i depends only on (seed, keys[i]), not on the batch."""
    if isinstance(keys, torch.Tensor):
        keys = keys.reshape(-1).tolist()
    rows = []
    for key in keys:
        if isinstance(key, (bool, float)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"record keys must be integers, got {key!r} ({type(key).__name__})")
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed_for_key(seed, key))
        rows.append(torch.rand(num_patches, generator=generator))
    if not rows:
        return torch.empty(0, num_patches)
    return torch.stack(rows)  # [N, L]


def masks_for_keys(seed: int, keys: Iterable[int], num_patches: int, mask_ratio: float, j: int = 0) -> torch.Tensor:
    """[N, L] masks (1 = masked) of reconstruction j of each record: what convert, the batch stage and
    the masked baseline all use (``variant_key(key, 0) == key``)."""
    noise = mask_noise_for_keys(seed, [variant_key(int(key), j) for key in keys], num_patches)  # [N, L]
    return random_masking(noise, mask_ratio)[2]
