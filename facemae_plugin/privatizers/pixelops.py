"""Torch-free twins of the cheap privatizers, run by the converter's decode worker processes.

Each op maps RGB uint8 ``[B, H, W, 3]`` and the records' keys to RGB uint8 ``[B * k, H, W, 3]``
(record-major) with exactly the bytes ``convert.privatize_batch`` gives with the torch privatizer:
the same float32 operations in the same order, the same rounding. ``Privatizer.worker_op()``
builds them (with parameters the torch side computed, e.g. blur weights), so converting with
them in the workers or with torch in the parent writes identical files (tests/test_pixelops.py).
The converter's workers import this module and numpy only; torch stays in the parent.
"""
import numpy as np

from ..core.keyseed import num_visible, seed_for_key, variant_key

_GREY = 128  # normalised 0.0 after data.denormalise: round(127.5) to even
_NOISE_SALT = 0x6E6F697365  # "noise": keeps noise draws apart from mask draws of the same key


def normalise(rgb):
    """uint8 -> float32 in [-1, 1], as convert.privatize_batch does it (divide, then subtract)."""
    return rgb.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def denormalise(images):
    """float32 -> uint8 like data.denormalise: (x + 1) * 127.5, round half to even, clip."""
    pixels = (images + np.float32(1.0)) * np.float32(127.5)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


class IdentityOp:
    """(x / 127.5 - 1 + 1) * 127.5 rounds back to x for every uint8 x, so no float math is needed."""

    def __init__(self, k=1):
        self.k = int(k)

    def __call__(self, rgb, keys):
        return np.repeat(rgb, self.k, axis=0)


class BlurOp:
    """Separable Gaussian blur with reflected borders; ``weights`` float32 [2r + 1], symmetric.

    The torch side (privatize.GaussianBlur) runs the same sums: per pass, the centre tap times its
    weight, then for t = 1..r the pair (x[i - t] + x[i + t]) times weight r + t, added in order.
    """

    def __init__(self, weights, k=1):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.k = int(k)

    def __call__(self, rgb, keys):
        # image by image: the working arrays stay in cache; elementwise results do not depend on it
        out = np.stack([denormalise(self.blur(normalise(image))) for image in rgb]) if len(rgb) else rgb
        return np.repeat(out, self.k, axis=0)

    def blur(self, image):
        """float32 [H, W, C] -> [H, W, C]: columns (along W) first, then rows, like the torch side."""
        return blur_axis(blur_axis(image, self.weights, 1), self.weights, 0)


def blur_axis(image, weights, axis):
    """1-D symmetric filter along ``axis`` with reflect-101 padding, fixed summation order."""
    radius = (len(weights) - 1) // 2
    n = image.shape[axis]
    if radius >= n:  # np.pad would reflect more than once; torch refuses, and so does GaussianBlur
        raise ValueError(f"a {len(weights)}-pixel blur kernel is too wide for {n}-pixel images")
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode="reflect")

    def shifted(offset):  # padded[i + radius + offset] for i in 0..n-1, a view
        return padded[(slice(None),) * axis + (slice(radius + offset, radius + offset + n),)]

    acc = shifted(0) * weights[radius]
    for t in range(1, radius + 1):
        acc += (shifted(-t) + shifted(t)) * weights[radius + t]
    return acc


class PixelateOp:
    """Block means (partial edge blocks average their real pixels), summed like avg_pool2d: row-major."""

    def __init__(self, block_size, k=1):
        self.block_size = int(block_size)
        self.k = int(k)

    def __call__(self, rgb, keys):
        b = self.block_size
        n, h, w, c = rgb.shape
        gh, gw = -(-h // b), -(-w // b)
        x = np.zeros((n, gh * b, gw * b, c), np.float32)  # zeros past the edge add exactly nothing
        x[:, :h, :w] = normalise(rgb)
        # [b, b, n, gh, gw, c] in one copy, so each of the b * b adds below reads contiguous memory
        blocks = np.ascontiguousarray(x.reshape(n, gh, b, gw, b, c).transpose(2, 4, 0, 1, 3, 5))
        sums = np.zeros((n, gh, gw, c), np.float32)
        for row in range(b):
            for col in range(b):
                sums += blocks[row, col]
        means = sums / _block_counts(h, w, b)[None, :, :, None]
        # denormalise is elementwise, so rounding the means before upsampling gives the same bytes
        block_pixels = denormalise(means)
        out = np.repeat(np.repeat(block_pixels, b, axis=1), b, axis=2)[:, :h, :w]
        return np.repeat(out, self.k, axis=0)


def _block_counts(h, w, b):
    """float32 [ceil(h/b), ceil(w/b)]: real pixels in each block."""
    rows = np.minimum(b, h - np.arange(0, h, b))
    cols = np.minimum(b, w - np.arange(0, w, b))
    return np.outer(rows, cols).astype(np.float32)


def gaussian_draws(seed, keys, shape, j=0):
    """float32 [N, *shape] standard normal draws, row i from (seed, keys[i], j) alone.

    numpy's generator, not torch's, so the noise baseline's torch side (privatize.GaussianNoise)
    and its worker op share one source: torch.randn's vectorised log/sin/cos has no bit-exact
    numpy twin.
    """
    rows = [np.random.Generator(np.random.PCG64(seed_for_key(int(seed) ^ _NOISE_SALT, variant_key(key, j))))
            .standard_normal(shape, dtype=np.float32) for key in keys]
    return np.stack(rows) if rows else np.zeros((0, *shape), np.float32)


class NoiseOp:
    """Additive Gaussian noise, ``std`` in grey levels, clipped: privatize.GaussianNoise's float32 steps."""

    def __init__(self, std, seed=0, k=1):
        self.scale = np.float32(float(std) / 127.5)  # torch multiplies a float32 tensor by it in float32
        self.seed = int(seed)
        self.k = int(k)

    def __call__(self, rgb, keys):
        n, h, w, c = rgb.shape
        images = np.repeat(normalise(rgb), self.k, axis=0)  # [n * k, H, W, C]
        noise = np.stack([gaussian_draws(self.seed, keys, (c, h, w), j) for j in range(self.k)], axis=1)
        noise = noise.reshape(n * self.k, c, h, w).transpose(0, 2, 3, 1)  # drawn as CHW, like the images there
        return denormalise(np.clip(images + noise * self.scale, np.float32(-1.0), np.float32(1.0)))


class MaskOp:
    """FaceMAE's mask for (seed, variant key) with masked patches grey: masked-only baseline.

    A visible pixel round-trips exactly (see IdentityOp) and a masked one becomes normalised 0.0,
    i.e. 128, so the op works on uint8 directly. The mask needs torch's ``torch.rand`` draws for
    the key's seed, reproduced by ``torch_rand_bits``.
    """

    def __init__(self, patch_size, mask_ratio, seed=0, k=1):
        self.patch_size = int(patch_size)
        self.mask_ratio = float(mask_ratio)
        self.seed = int(seed)
        self.k = int(k)

    def __call__(self, rgb, keys):
        p = self.patch_size
        n, h, w, c = rgb.shape
        mask_keys = [variant_key(key, j) for key in keys for j in range(self.k)]
        masks = self.masks(mask_keys, (h // p) * (w // p))  # [n * k, L] bool, True = masked
        out = np.repeat(rgb, self.k, axis=0)
        patches = out.reshape(n * self.k, h // p, p, w // p, p, c)  # a view of out
        grid = masks.reshape(n * self.k, h // p, 1, w // p, 1, 1)
        np.copyto(patches, np.uint8(_GREY), where=np.broadcast_to(grid, patches.shape))
        return out

    def masks(self, mask_keys, num_patches):
        """[N, L] bool: the L - len_keep patches of highest noise (stable order on ties) are masked."""
        bits = torch_rand_bits([seed_for_key(self.seed, key) for key in mask_keys], num_patches)
        len_keep = num_visible(num_patches, self.mask_ratio)
        order = np.argsort(bits, axis=1, kind="stable")  # the float noise is bits / 2**24: same order
        masks = np.ones(bits.shape, dtype=bool)
        np.put_along_axis(masks, order[:, :len_keep], False, axis=1)
        return masks


def torch_rand_bits(seeds, count):
    """uint32 [N, count]: the 24-bit integers behind ``torch.rand(count, generator=g)``, ``g`` seeded
    with ``seeds[i]`` (``torch.rand`` = bits / 2**24).

    torch's CPU generator is MT19937 seeded with the low 32 bits of the seed by the reference
    init_genrand, which is also how numpy's legacy ``RandomState`` seeds from an integer; a
    full-range uint32 ``randint`` returns its raw 32-bit draws, and a float32 uniform keeps the
    low 24 bits of one draw.
    """
    out = np.empty((len(seeds), count), dtype=np.uint32)
    generator = np.random.RandomState()  # reseeded per row: reseeding is much cheaper than constructing one
    for i, seed in enumerate(seeds):
        generator.seed(int(seed) & 0xFFFFFFFF)
        out[i] = generator.randint(0, 1 << 32, size=count, dtype=np.uint32) & 0xFFFFFF
    return out
