"""What is in a face shard or a verification ``.bin``: the facts ``facemae inspect`` prints."""
import os

import numpy as np

from ..formats.binfile import load_bin
from ..formats.recordio import decode_image
from ..formats.shard import FaceShard
from .verification import raw_pixel_accuracy

FIRST_KEYS_SHOWN = 5
RAW_PIXEL_FOLDS = 10  # the raw-pixel baseline is a 10-fold accuracy: it needs 10 pairs


def inspect_path(path, progress=True):
    """A dict describing ``path`` (a shard directory, a ``.rec`` or a ``.bin``)."""
    path = os.fspath(path)
    if path.endswith(".bin") and os.path.isfile(path):
        return inspect_bin(path)
    return inspect_shard(path, progress=progress)


def inspect_shard(path, progress=True):
    with FaceShard(path) as shard:
        keys = shard.image_keys
        info = {
            "kind": "shard",
            "path": path,
            "layout": shard.layout,
            "records": len(shard.reader),
            "images": len(keys),
            "first_keys": [int(k) for k in keys[:FIRST_KEYS_SHOWN]],
            "property": list(shard.property) if shard.property else None,
        }
        if len(keys):
            height, width = shard.decode(keys[0]).shape[:2]
            info["image_size"] = [int(height), int(width)]
        info.update(_identity_facts(shard, progress))
        info["notes"] = _property_notes(shard, info)
        return info


def _property_notes(shard, info):
    """Where ``property`` disagrees with the records (arcface_torch sizes its classifier from it)."""
    if not shard.property:
        return []
    classes = shard.property[0]
    notes = []
    if classes != info["identities"]:
        notes.append(f"property says {classes} classes, the records hold {info['identities']} identities")
    top = info["label_range"][1]
    if top is not None and top >= classes:
        notes.append(f"label {top} is outside property's {classes} classes (0..{classes - 1}); "
                     f"arcface_torch's classifier would not have a row for it")
    return notes


def _identity_facts(shard, progress):
    if shard.layout == "A":
        ranges = shard.identity_ranges()
        sizes = np.array([end - start for start, end in ranges.values()])
        first = shard.label(shard.image_keys[0]) if len(shard.image_keys) else None
        last = shard.label(shard.image_keys[-1]) if len(shard.image_keys) else None
        return {
            "identities": len(ranges),
            "header_range": [int(v) for v in shard.header_range],
            "label_range": [first, last],
            "images_per_identity": _spread(sizes),
        }
    # Layout B has no identity records: the labels themselves are the only source.
    labels = shard.labels(progress=progress)
    _, counts = np.unique(labels, return_counts=True)  # memory follows the images, not the label values
    return {
        "identities": int(len(counts)),
        "label_range": [int(labels.min()), int(labels.max())] if len(labels) else [None, None],
        "images_per_identity": _spread(counts),
    }


def _spread(sizes):
    if len(sizes) == 0:
        return None
    return {"min": int(sizes.min()), "mean": round(float(sizes.mean()), 2), "max": int(sizes.max())}


def inspect_bin(path):
    images, issame = load_bin(path)
    decoded = [decode_image(img, iscolor=1, where=f"{path} image {i}") for i, img in enumerate(images)]
    shapes = {img.shape for img in decoded}
    info = {
        "kind": "bin",
        "path": path,
        "pairs": int(len(issame)),
        "same_pairs": int(issame.sum()),
        "image_sizes": sorted([int(s[0]), int(s[1])] for s in shapes),
    }
    if len(shapes) == 1 and len(issame) >= RAW_PIXEL_FOLDS:
        stack = np.stack(decoded)  # [2P, H, W, 3]
        info["raw_pixel_accuracy"] = round(float(raw_pixel_accuracy(stack[0::2], stack[1::2], issame,
                                                                    RAW_PIXEL_FOLDS)), 4)
    return info


def format_inspection(info):
    """Human-readable lines for an ``inspect_path`` result."""
    if info["kind"] == "bin":
        lines = [
            f"verification set  {info['path']}",
            f"pairs             {info['pairs']} ({info['same_pairs']} same identity)",
            f"image size        {', '.join(f'{h}x{w}' for h, w in info['image_sizes'])}",
        ]
        if "raw_pixel_accuracy" in info:
            lines.append(f"raw-pixel cosine  {info['raw_pixel_accuracy'] * 100:.2f}% 10-fold accuracy")
        elif info["pairs"] < RAW_PIXEL_FOLDS:
            lines.append(f"raw-pixel cosine  n/a (10-fold accuracy needs {RAW_PIXEL_FOLDS} pairs)")
        return "\n".join(lines)
    spread = info.get("images_per_identity") or {}
    lines = [
        f"face shard        {info['path']}",
        f"layout            {info['layout']}"
        + (" (header record, identity records)" if info["layout"] == "A" else " (images only)"),
        f"records           {info['records']}",
        f"images            {info['images']}",
        f"identities        {info['identities']}",
        f"labels            {info['label_range'][0]} .. {info['label_range'][1]}",
        f"images/identity   min {spread.get('min')}  mean {spread.get('mean')}  max {spread.get('max')}",
        f"image size        {'x'.join(map(str, info.get('image_size', ['?'])))}",
        f"first image keys  {info['first_keys']}",
        f"property          {','.join(map(str, info['property'])) if info['property'] else 'missing'}",
    ]
    lines += [f"note              {note}" for note in info.get("notes", [])]
    return "\n".join(lines)
