"""Conversions between image folders and InsightFace files.

* ``folder_to_rec``: ``root/<identity>/*.jpg|png`` -> layout-A shard
* ``rec_to_folder``: shard -> ``out/<label>/<key>.jpg`` (payload bytes as stored)
* ``pairs_to_bin``: ``path_a path_b 0|1`` lines -> verification ``.bin``

JPEG files of the right size are stored byte for byte, so a round trip
folder -> rec -> folder loses nothing; other images are encoded once at the
requested JPEG quality.
"""
import os

import numpy as np
from tqdm import tqdm

from .binfile import write_bin
from .recordio import RecordIOError, decode_image, encode_image
from .shard import DEFAULT_IMAGE_SIZE, FaceShard, FaceShardWriter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_JPEG_SOI = b"\xff\xd8\xff"


def list_identity_folders(image_dir):
    """``[(identity_name, [image paths])]`` sorted by name; empty folders are skipped."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir}: not a directory of <identity>/ image folders")
    identities = []
    for name in sorted(os.listdir(image_dir)):
        folder = os.path.join(image_dir, name)
        if not os.path.isdir(folder):
            continue
        files = sorted(
            os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if files:
            identities.append((name, files))
    if not identities:
        raise ValueError(f"{image_dir}: no <identity>/ folders with {'/'.join(IMAGE_EXTENSIONS)} images")
    return identities


def load_image_bytes(path, image_size=DEFAULT_IMAGE_SIZE, quality=95):
    """Encoded bytes for one image file: JPEGs of the right size as they are, others re-encoded."""
    with open(path, "rb") as f:
        data = f.read()
    img = decode_image(data, iscolor=1, where=path)
    if img.shape[:2] != tuple(image_size):
        raise RecordIOError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected {image_size[1]}x{image_size[0]} "
            f"aligned faces"
        )
    return data if data.startswith(_JPEG_SOI) else encode_image(img, quality)


def folder_to_rec(image_dir, out_dir, image_size=DEFAULT_IMAGE_SIZE, quality=95, progress=True):
    """Write a layout-A shard; returns ``{"identities", "images", "names"}``."""
    identities = list_identity_folders(image_dir)
    total = sum(len(files) for _, files in identities)
    bar = tqdm(total=total, desc="folder2rec", unit="img", disable=not progress)
    with FaceShardWriter(out_dir, image_size=image_size, quality=quality) as writer:
        for _, files in identities:
            writer.add_identity(_tracked((load_image_bytes(p, image_size, quality) for p in files), bar))
    bar.close()
    _write_identity_names(out_dir, [name for name, _ in identities])
    return {"identities": len(identities), "images": total}


def _tracked(items, bar):
    for item in items:
        yield item
        bar.update(1)


def _write_identity_names(out_dir, names):
    # Labels are positions in sorted folder order; keep the names so results can be traced back.
    path = os.path.join(out_dir, "identities.txt")
    with open(path + ".tmp", "w") as f:
        f.writelines(f"{label}\t{name}\n" for label, name in enumerate(names))
    os.replace(path + ".tmp", path)


def rec_to_folder(rec_dir, out_dir, progress=True):
    """Write every image of a shard to ``out_dir/<label>/<key>.<ext>`` unchanged; returns counts."""
    with FaceShard(rec_dir) as shard:
        labels = set()
        for key in tqdm(shard.image_keys, desc="rec2folder", unit="img", disable=not progress):
            label, payload = shard.read(key)
            folder = os.path.join(out_dir, str(label))
            if label not in labels:
                os.makedirs(folder, exist_ok=True)
                labels.add(label)
            ext = ".jpg" if payload.startswith(_JPEG_SOI) else ".png"
            with open(os.path.join(folder, f"{int(key)}{ext}"), "wb") as f:
                f.write(payload)
        return {"identities": len(labels), "images": len(shard.image_keys)}


def parse_pairs(pairs_path):
    """``[(path_a, path_b, issame)]`` from a pairs list; relative paths are taken from its folder."""
    base = os.path.dirname(os.path.abspath(pairs_path))
    pairs = []
    with open(pairs_path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise ValueError(f"{pairs_path}:{line_no}: expected 'path_a path_b 0|1', got {line.strip()!r}")
            path_a, path_b = (os.path.join(base, p) for p in fields[:2])
            pairs.append((path_a, path_b, fields[2] == "1"))
    if not pairs:
        raise ValueError(f"{pairs_path}: no pairs found")
    return pairs


def pairs_to_bin(pairs_path, out_bin, image_size=DEFAULT_IMAGE_SIZE, quality=95, progress=True):
    """Write a verification ``.bin`` from a pairs list; returns counts."""
    pairs = parse_pairs(pairs_path)
    images, issame = [], []
    for path_a, path_b, same in tqdm(pairs, desc="pairs2bin", unit="pair", disable=not progress):
        images += [load_image_bytes(path_a, image_size, quality), load_image_bytes(path_b, image_size, quality)]
        issame.append(same)
    write_bin(out_bin, images, issame)
    return {"pairs": len(pairs), "same": int(np.sum(issame))}

