"""Split a face shard by identity: FaceMAE trains on one part and releases the other.

The paper's protocol needs identities the reconstructor never saw. ``split_by_identity``
draws a seeded random subset of identities, writes them to ``out_a`` and the rest to
``out_b`` as layout-A shards, labels renumbered ``0..n-1`` in original label order. Image
records are copied as they are: the JPEG bytes do not change.
"""
import os

import numpy as np
from tqdm import tqdm

from ..core.errors import FaceMAEError
from ..formats.shard import FaceShard, FaceShardWriter, refuse_shard_output


class SplitError(FaceMAEError):
    """The split cannot be made as asked."""


def group_keys_by_label(shard, progress=False):
    """``{label: int64 array of image keys}`` in key order, for either layout (one array per identity)."""
    labels = shard.labels(progress=progress)  # [N]
    order = np.argsort(labels, kind="stable")  # [N] stable: each identity's keys stay in file order
    sorted_labels = labels[order]
    firsts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if len(labels) else []
    keys = shard.image_keys[order]
    bounds = [*firsts[1:], len(labels)]
    return {int(sorted_labels[start]): keys[start:end] for start, end in zip(firsts, bounds)}


def choose_identities(labels, fraction, seed):
    """The sorted labels of part A: ``round(fraction * n)`` drawn without replacement."""
    count = int(round(fraction * len(labels)))
    if not 0 < count < len(labels):
        raise SplitError(f"fraction {fraction} of {len(labels)} identities leaves a part empty")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(sorted(labels), size=count, replace=False).tolist())


def write_identities(shard, groups, labels, out_dir, progress=False, desc="identities"):
    """A layout-A shard of ``shard``'s identities ``labels`` (``groups`` as ``group_keys_by_label``
    gives them), in that order and renumbered ``0..n-1``; the image bytes are copied as they are."""
    with FaceShardWriter(out_dir, image_size=shard.image_size) as writer:
        for label in tqdm(labels, desc=desc, unit="id", disable=not progress):
            writer.add_identity([shard.read(key)[1] for key in groups[label].tolist()])


def write_beside_release(original, released, out_dir):
    """A layout-A shard whose every identity holds its images in ``original`` then the same records in
    ``released`` (a record-by-record release: same keys and labels); bytes copied as they are.

    What an adaptive attacker trains on: each face beside its privatized twin, under one label.
    """
    groups = group_keys_by_label(original)
    with FaceShardWriter(out_dir, image_size=original.image_size) as writer:
        for label in sorted(groups):
            keys = groups[label].tolist()
            writer.add_identity([original.read(key)[1] for key in keys] + [released.read(key)[1] for key in keys])


def split_by_identity(in_dir, out_a, out_b, fraction=0.5, seed=0, overwrite=False, progress=True):
    """Write parts A and B; returns a summary with each part's original labels."""
    with FaceShard(in_dir) as shard:
        if os.path.realpath(out_a) == os.path.realpath(out_b):
            raise SplitError(f"{out_a}: OUT_A and OUT_B are the same folder; give two different outputs")
        for out in (out_a, out_b):
            refuse_shard_output(out, overwrite, inputs=[shard.directory, shard.rec_path])
        groups = group_keys_by_label(shard, progress)
        part_a = set(choose_identities(list(groups), fraction, seed))
        parts = {"a": sorted(part_a), "b": sorted(set(groups) - part_a)}
        for name, out in (("a", out_a), ("b", out_b)):
            write_identities(shard, groups, parts[name], out, progress, f"part {name.upper()}")
    return {"in_dir": os.fspath(in_dir), "fraction": fraction, "seed": seed,
            "a": {"out_dir": os.fspath(out_a), "identities": len(parts["a"]),
                  "images": sum(len(groups[label]) for label in parts["a"]), "original_labels": parts["a"]},
            "b": {"out_dir": os.fspath(out_b), "identities": len(parts["b"]),
                  "images": sum(len(groups[label]) for label in parts["b"]), "original_labels": parts["b"]}}
