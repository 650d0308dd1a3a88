"""Pictures a person looks at: grids of originals, masked inputs and reconstructions."""
import os

import cv2
import numpy as np
import torch

from ..data.dataset import denormalise

MASK_GREY = 0.0  # normalised value of mid-grey (127.5)


def masked_view(images, mask, patch_size):
    """Images ``[N, 3, H, W]`` with masked patches (``mask [N, L]`` = 1) painted grey."""
    n, _, height, width = images.shape
    grid = mask.reshape(n, height // patch_size, width // patch_size).float()  # [N, h, w]
    pixels = grid.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)  # [N, H, W]
    hidden = pixels.unsqueeze(1).to(images.device) > 0.5  # [N, 1, H, W]
    return torch.where(hidden, torch.full_like(images, MASK_GREY), images)


def image_grid(rows, gap=2):
    """Tile rows of uint8 RGB images ``[[H, W, 3], ...]`` into one RGB image with white gaps."""
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    canvas = np.full(((height + gap) * len(rows) - gap, (width + gap) * columns - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y:y + height, x:x + width] = img
    return canvas


def save_reconstruction_grid(path, originals, mask, reconstructions, patch_size):
    """PNG with one column per face: original | masked input | reconstruction (rows)."""
    masked = masked_view(originals, mask, patch_size)
    rows = [list(denormalise(t)) for t in (originals, masked, reconstructions)]
    save_png(path, image_grid(rows))


def save_png(path, rgb):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(os.fspath(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"{path}: could not write PNG")
