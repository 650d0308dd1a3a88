"""The embedded default dataset: a layout-A shard of synthetic identities and a held-out ``.bin``.

Training identities are ``0 .. identities-1``; the verification pairs use only
the next ``holdout_identities`` ids, so a model evaluated on the ``.bin`` meets
faces it never trained on, as LFW is for a WebFace-trained model.
"""
import os

import numpy as np
from tqdm import tqdm

from ..core.files import refuse_existing
from ..formats.binfile import write_bin
from ..formats.recordio import encode_image
from ..formats.shard import FaceShardWriter, refuse_shard_output
from .faces import SynthInputError, check_detail, identity_images

HOLDOUT_BIN = "holdout.bin"  # arcface_torch resolves val_targets=["holdout"] to <rec>/holdout.bin


def draw_pairs(rng, identities, images_per_identity, num_pairs):
    """``[(identity_a, index_a, identity_b, index_b, issame)]``: alternating same/different pairs."""
    pairs = []
    for i in range(num_pairs):
        if i % 2 == 0:
            identity = int(rng.choice(identities))
            index_a, index_b = rng.choice(images_per_identity, size=2, replace=False)
            pairs.append((identity, int(index_a), identity, int(index_b), True))
        else:
            identity_a, identity_b = rng.choice(identities, size=2, replace=False)
            index_a, index_b = rng.integers(images_per_identity, size=2)
            pairs.append((int(identity_a), int(index_a), int(identity_b), int(index_b), False))
    return pairs


def write_holdout_bin(path, seed, identities, images_per_identity, num_pairs, quality=95, progress=True,
                      detail=0.0):
    """Render held-out identities and write ``num_pairs`` verification pairs to ``path``."""
    rng = np.random.default_rng([seed, 0x5EED])
    pairs = draw_pairs(rng, identities, images_per_identity, num_pairs)
    cache = {}
    for identity in tqdm(identities, desc="holdout", unit="id", disable=not progress):
        encoded = [encode_image(img, quality) for img in identity_images(seed, identity, images_per_identity, detail)]
        cache[identity] = encoded
    images = []
    for identity_a, index_a, identity_b, index_b, _ in pairs:
        images += [cache[identity_a][index_a], cache[identity_b][index_b]]
    write_bin(path, images, [p[4] for p in pairs])
    return len(pairs)


def write_identity_shard(out_dir, seed, identities, images_per_identity, quality=95, progress=True,
                         desc="synth", detail=0.0):
    """Write a layout-A shard of the synthetic ``identities``; labels are their positions ``0..n-1``.

    Rendering depends only on ``(seed, identity)``, so disjoint identity ranges give disjoint
    people: a shard of ids 100..199 shares no one with a shard of ids 0..99.
    """
    os.makedirs(out_dir, exist_ok=True)
    with FaceShardWriter(out_dir, quality=quality) as writer:
        for identity in tqdm(identities, desc=desc, unit="id", disable=not progress):
            writer.add_identity(identity_images(seed, identity, images_per_identity, detail))
    return len(identities) * images_per_identity


def make_synthetic_dataset(out_dir, identities=200, images_per_identity=20, holdout_identities=50,
                           seed=0, num_pairs=1000, quality=95, progress=True, detail=0.0, overwrite=False):
    """Write ``out_dir/train.rec|idx|property`` and ``out_dir/holdout.bin``; returns a summary dict.

    ``detail`` (0..1) moves identity from coarse traits into fine ones (see ``synth``).
    """
    if identities < 2 or images_per_identity < 2 or holdout_identities < 2:
        raise SynthInputError("synth needs at least 2 identities, 2 images per identity and 2 held-out identities")
    check_detail(detail)  # before anything is written
    refuse_shard_output(out_dir, overwrite)
    refuse_existing(os.path.join(os.fspath(out_dir), HOLDOUT_BIN), overwrite)
    write_identity_shard(out_dir, seed, range(identities), images_per_identity, quality, progress,
                         detail=detail)
    holdout = list(range(identities, identities + holdout_identities))
    pairs = write_holdout_bin(os.path.join(out_dir, HOLDOUT_BIN), seed, holdout, images_per_identity,
                              num_pairs, quality, progress, detail)
    return {
        "out_dir": os.fspath(out_dir),
        "identities": identities,
        "images": identities * images_per_identity,
        "holdout_identities": holdout_identities,
        "pairs": pairs,
        "seed": seed,
        "detail": detail,
    }
