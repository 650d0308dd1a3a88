"""What is in a face shard or a verification ``.bin``: the facts ``facemae inspect`` prints."""
import os

import numpy as np

from .binfile import load_bin
from .evaluation.verification import raw_pixel_accuracy
from .recordio import decode_image
from .shard import FaceShard

FIRST_KEYS_SHOWN = 5


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
        return info


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
    counts = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    return {
        "identities": int(np.count_nonzero(counts)),
        "label_range": [int(labels.min()), int(labels.max())] if len(labels) else [None, None],
        "images_per_identity": _spread(counts[counts > 0]),
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
    if len(shapes) == 1:
        stack = np.stack(decoded)  # [2P, H, W, 3]
        info["raw_pixel_accuracy"] = round(float(raw_pixel_accuracy(stack[0::2], stack[1::2], issame)), 4)
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
    return "\n".join(lines)
