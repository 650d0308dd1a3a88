"""Baseline privatizers with the reconstruction stage's interface (``privatizers.methods`` makes them).

Every privatizer is a callable ``(images [N, 3, H, W] normalised, keys) -> images`` with
``variants(images, keys) -> [N, k, 3, H, W]`` and ``provenance()``; ``facemae convert`` treats
them and ``ReconstructionStage`` alike. Random ones (noise, masked) draw from ``(seed, key, j)``
only, so they are as reproducible as FaceMAE's masks; blur and pixelate are deterministic, so their
k variants are identical.

* ``blur``: Gaussian blur, ``sigma`` in pixels (kernel radius ceil(3 sigma), reflected borders).
* ``pixelate``: mean over ``block_size`` x ``block_size`` blocks (partial blocks at the edges).
* ``noise``: additive Gaussian noise, ``std`` in grey levels (0..255 scale), then clipped.
* ``masked``: FaceMAE's mask for (seed, key) with masked patches set to grey, no reconstruction.
"""
import math

import torch
import torch.nn.functional as F

from ..core.errors import UsageError
from ..core.keyseed import num_visible
from ..models.masking import masks_for_keys, patchify, unpatchify
from .pixelops import gaussian_draws
from .privatizer import Privatizer, checked_number



class Identity(Privatizer):
    """No change: re-encodes the originals (control datasets, copy-only benchmarks)."""

    method = "identity"

    def _apply(self, images, keys, j):
        return images.float().clone()

    def worker_op(self):
        from .pixelops import IdentityOp

        return IdentityOp(self.k)


def gaussian_kernel(sigma):
    """1-D Gaussian weights [2r + 1], r = ceil(3 sigma), summing to 1 (float64)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return weights / weights.sum()


class GaussianBlur(Privatizer):
    method = "blur"

    def __init__(self, sigma=3.0, k=1):
        super().__init__(k)
        self.sigma = checked_number(sigma, "blur sigma (pixels)", low=0, low_open=True)

    def params(self):
        return {"sigma": self.sigma}

    def check_image_size(self, size):
        radius = max(1, math.ceil(3.0 * self.sigma))  # gaussian_kernel's radius, without building it
        if radius >= min(size):
            raise UsageError(f"blur sigma {self.sigma} needs a {2 * radius + 1}-pixel kernel, too wide "
                             f"for {size[1]}x{size[0]} images")

    def _apply(self, images, keys, j):
        n, c, h, w = images.shape
        self.check_image_size((h, w))
        kernel = gaussian_kernel(self.sigma).to(images.device, torch.float32)
        x = _blur_axis(images.float(), kernel, 3)  # along W first, then H, as pixelops.BlurOp
        return _blur_axis(x, kernel, 2)

    def worker_op(self):
        from .pixelops import BlurOp

        return BlurOp(gaussian_kernel(self.sigma).float().numpy(), self.k)


def _blur_axis(x, kernel, dim):
    """1-D symmetric filter along ``dim`` with reflected borders, summed in a fixed order.

    Not F.conv2d: its summation order is the backend's, and the converter's workers run the same
    blur in numpy (pixelops.blur_axis); elementwise ops in one written order give the same float32
    bits in both, so a record's bytes do not depend on where it was blurred.
    """
    radius = (kernel.numel() - 1) // 2
    n = x.shape[dim]
    pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
    padded = F.pad(x, pad, mode="reflect")
    acc = padded.narrow(dim, radius, n) * kernel[radius]
    for t in range(1, radius + 1):
        acc += (padded.narrow(dim, radius - t, n) + padded.narrow(dim, radius + t, n)) * kernel[radius + t]
    return acc


class Pixelate(Privatizer):
    method = "pixelate"

    def __init__(self, block_size=8, k=1):
        super().__init__(k)
        self.block_size = checked_number(block_size, "pixelate block size (pixels)", integer=True, low=1)

    def params(self):
        return {"block_size": self.block_size}

    def _apply(self, images, keys, j):
        b = self.block_size
        h, w = images.shape[-2:]
        # ceil_mode: the last row/column of blocks may be partial; their mean counts only real pixels
        means = F.avg_pool2d(images.float(), b, stride=b, ceil_mode=True)  # [N, C, ceil(H/b), ceil(W/b)]
        blocks = means.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)
        return blocks[..., :h, :w].contiguous()

    def worker_op(self):
        from .pixelops import PixelateOp

        return PixelateOp(self.block_size, self.k)


class GaussianNoise(Privatizer):
    method = "noise"

    def __init__(self, std=25.0, seed=0, k=1):
        super().__init__(k, seed)
        self.std = checked_number(std, "noise std (grey levels)", low=0)

    def params(self):
        return {"std": self.std, "seed": self.seed}

    def noise(self, keys, shape, j=0):
        """[N, *shape] standard normal draws, row i from (seed, keys[i], j) alone (CPU)."""
        return torch.from_numpy(gaussian_draws(self.seed, keys, tuple(shape), j))

    def _apply(self, images, keys, j):
        noise = self.noise(keys, tuple(images.shape[1:]), j).to(images.device)  # [N, 3, H, W]
        return (images.float() + noise * (self.std / 127.5)).clamp(-1.0, 1.0)

    def worker_op(self):
        from .pixelops import NoiseOp

        return NoiseOp(self.std, self.seed, self.k)


class MaskedOnly(Privatizer):
    method = "masked"

    def __init__(self, patch_size=8, mask_ratio=0.75, seed=0, k=1):
        super().__init__(k, seed)
        self.patch_size = checked_number(patch_size, "patch size (pixels)", integer=True, low=1)
        self.mask_ratio = checked_number(mask_ratio, "mask_ratio", low=0, high=1, high_open=True)

    @classmethod
    def matching(cls, patch_size=None, checkpoint=None, **kwargs):
        """Masks the FaceMAE model of ``checkpoint`` would use: its patch size unless ``patch_size``
        is given (8 with neither)."""
        if patch_size is None and checkpoint:
            from ..models.mae import FaceMAE

            patch_size = FaceMAE.from_checkpoint(checkpoint).patch_size
        return cls(patch_size=8 if patch_size is None else patch_size, **kwargs)

    def params(self):
        return {"patch_size": self.patch_size, "mask_ratio": self.mask_ratio, "seed": self.seed}

    def check_image_size(self, size):
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise UsageError(f"--patch-size {self.patch_size} does not divide the {size[1]}x{size[0]} images; "
                             f"expected a divisor such as 8 or 16 for 112")
        num_visible((size[0] // self.patch_size) * (size[1] // self.patch_size), self.mask_ratio)

    def masks(self, keys, num_patches, j=0):
        """[N, L] FaceMAE masks (1 = masked) for (seed, key, j): the ones reconstruction would use."""
        return masks_for_keys(self.seed, keys, num_patches, self.mask_ratio, j)

    def _apply(self, images, keys, j):
        patches = patchify(images.float(), self.patch_size)  # [N, L, p*p*3]
        mask = self.masks(keys, patches.shape[1], j).to(images.device)  # [N, L]
        patches = patches * (1.0 - mask).unsqueeze(-1)  # grey is 0 in the normalised space
        return unpatchify(patches, self.patch_size, images.shape[1])

    def worker_op(self):
        from .pixelops import MaskOp

        return MaskOp(self.patch_size, self.mask_ratio, self.seed, self.k)
