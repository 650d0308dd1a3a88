"""What several test modules share: the command line in a subprocess, its JSON line, the small
training configs the training tests run on the ``synth_dir`` shard (``conftest.py``), the toy
protocol, a fixed pixel attacker, a blurred copy of a shard and a recogniser with distinctive weights."""
import json
import subprocess
import sys

import cv2
import torch
import torch.nn.functional as F

from facemae_plugin.config import merge_config
from facemae_plugin.convert.settings import ConvertSettings
from facemae_plugin.formats.shard import FaceShard, FaceShardWriter

SYNTH_IDENTITIES = 6  # identities of conftest's synth_dir shard
IN_PROCESS = ConvertSettings(workers=0)  # conversions decode and encode in the test's own process


def facemae(*args, check=False, timeout=600, cwd=None, env=None):
    """``facemae ARGS`` in a fresh interpreter; with ``check``, a non-zero exit fails with its stderr."""
    result = subprocess.run([sys.executable, "-m", "facemae_plugin.cli", *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, cwd=cwd, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"facemae {args} failed ({result.returncode}):\n{result.stderr}")
    return result


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def recognition_config(synth_dir, output, **overrides):
    return merge_config({
        "network": "mbf", "embedding_size": 64, "rec": str(synth_dir), "num_classes": SYNTH_IDENTITIES,
        "batch_size": 12, "lr": 0.05, "num_epoch": 1, "num_workers": 0, "val_targets": ["holdout"],
        "output": str(output), "seed": 3, **overrides})


def pretrain_config(synth_dir, output, **overrides):
    return merge_config({
        "rec": str(synth_dir), "batch_size": 12, "lr": 2e-3, "weight_decay": 0.05, "optimizer": "adamw",
        "num_epoch": 2, "num_workers": 0, "output": str(output), "seed": 5, "flip": False,
        "mae": {"preset": "tiny", "mask_ratio": 0.75, "grid_images": 4}, **overrides})


# A protocol small enough to run every step of an experiment in a test.
TOY = dict(
    data=dict(train_identities=6, train_images_per_identity=4, release_identities=5, release_images_per_identity=3,
              holdout_identities=4, holdout_images_per_identity=4, num_pairs=20, attacker_identities=3,
              attacker_images_per_identity=3),
    teacher=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    facemae=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    recogniser=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    num_workers=0,
)


POOL = 8  # the pixel attacker averages 8x8 blocks: 112x112 -> 14x14


class PixelProjection(torch.nn.Module):
    """A fixed raw-pixel attacker: 8x8 average pooling, then a seeded random linear map."""

    def __init__(self, dim=64, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(dim, 3 * (112 // POOL) ** 2, generator=generator))

    def forward(self, x):  # [N, 3, 112, 112] -> [N, dim]
        return F.avg_pool2d(x, POOL).flatten(1) @ self.weight.T


def blurred_copy(original_dir, out_dir, sigma):
    """A release made record by record: same identities in order, hence the same keys and labels."""
    shard = FaceShard(original_dir)
    with FaceShardWriter(out_dir) as writer:
        for start, end in shard.identity_ranges().values():
            writer.add_identity([cv2.GaussianBlur(shard.decode(k, rgb=False), (0, 0), sigma)
                                 for k in range(start, end)])


def randomise_weights(model, seed=0):
    """Give every parameter and buffer distinctive values (BN statistics and PReLU slopes
    included), so a wrongly wired layer cannot hide behind default initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise)
            elif tensor.dim() >= 2:  # conv / linear weights: embeddings of order 1, so that a
                # 1e-5 tolerance is tight relative to the signal
                fan_in = tensor[0].numel()
                tensor.copy_((noise * 2 - 1) * (1.0 / fan_in) ** 0.5)
            else:
                tensor.copy_(noise * 0.4 - 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model
