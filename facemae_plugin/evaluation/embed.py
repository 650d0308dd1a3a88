"""Embeddings of verification images: each image plus its horizontal flip, as arcface_torch evaluates."""
import numpy as np
import torch

from ..data import normalise
from ..recordio import decode_image


def decode_bin_images(images, where="bin"):
    """Encoded images -> normalised tensor ``[N, 3, H, W]`` (BGR bytes decoded to RGB)."""
    decoded = [decode_image(img, iscolor=1, where=f"{where} image {i}")[:, :, ::-1]
               for i, img in enumerate(images)]
    return torch.stack([normalise(img) for img in decoded])


@torch.no_grad()
def embed_with_flip(model, images, batch_size=64, device="cpu"):
    """``model(x) + model(flip(x))`` for every image: ``[N, D]`` float64 numpy, not normalised."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)  # [B, 3, H, W]
        embedding = model(batch).float() + model(batch.flip(-1)).float()  # [B, D]
        out.append(embedding.cpu().double().numpy())
    model.train(was_training)
    return np.concatenate(out)
