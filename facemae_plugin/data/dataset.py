"""Torch view of a face shard: what arcface_torch's MXFaceDataset yields, without MXNet."""
import numpy as np
import torch
from torch.utils.data import Dataset

from ..formats.shard import FaceShard


def normalise_batch(rgb):
    """uint8 ``[N, H, W, 3]`` RGB -> float32 ``[N, 3, H, W]`` in ``(x/255 - 0.5) / 0.5``, arcface_torch's
    convention (computed as ``x / 127.5 - 1``, the order the torch-free ``privatizers.pixelops`` repeats)."""
    nchw = torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(0, 3, 1, 2)))
    return nchw.float().div_(127.5).sub_(1.0)


def normalise(rgb):
    """uint8 ``[H, W, 3]`` RGB -> float32 ``[3, H, W]``, as ``normalise_batch``."""
    return normalise_batch(rgb[None])[0]


def denormalise(images):
    """Inverse of ``normalise`` for a batch ``[N, 3, H, W]``: uint8 RGB ``[N, H, W, 3]`` (rounded, clipped)."""
    pixels = (images.detach().float().cpu() + 1.0) * 127.5
    return pixels.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mirror_where(images, flipped):
    """Mirror the rows of ``images`` [B, 3, H, W] where ``flipped`` [B] is true."""
    flipped = torch.as_tensor(flipped).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flipped, images.flip(-1), images)


class FaceRecordDataset(Dataset):
    """Images of an InsightFace shard as ``(image [3,112,112] float, label int)``.

    ``flip=True`` mirrors each image with probability 0.5 (arcface_torch's
    training augmentation), drawn from torch's RNG so DataLoader seeding
    controls it. ``with_keys=True`` adds the record key, which the FaceMAE
    stage needs to derive per-record masks. ``defer_flip=True`` draws the same
    flip but leaves the image as stored and adds the flag: a stage keyed by the
    record then sees the record, and the caller mirrors its output
    (``mirror_where``), as ``facemae convert`` followed by arcface_torch would.
    """

    def __init__(self, path, flip=False, with_keys=False, defer_flip=False):
        self.shard = FaceShard(path)
        self.keys = self.shard.image_keys
        self.flip = flip
        self.with_keys = with_keys
        self.defer_flip = defer_flip

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        key = int(self.keys[index])
        label, payload = self.shard.read(key)
        image = normalise(self.shard.decode(key, payload))
        flipped = bool(self.flip and torch.rand(()) < 0.5)
        if flipped and not self.defer_flip:
            image = image.flip(-1)
        item = (image, label, key) if self.with_keys else (image, label)
        return (*item, flipped) if self.defer_flip else item
