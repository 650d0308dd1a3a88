"""Conversions between image folders and InsightFace files.

* ``folder_to_rec``: ``root/<identity>/*.jpg|png`` -> layout-A shard
* ``rec_to_folder``: shard -> ``out/<label>/<key>.jpg`` (payload bytes as stored)
* ``pairs_to_bin``: ``path_a path_b 0|1`` lines -> verification ``.bin``

JPEG files of the right size are stored byte for byte, so a round trip
folder -> rec -> folder loses nothing; other images are encoded once at the
requested JPEG quality.
"""
import os
import shutil

import numpy as np
from tqdm import tqdm

from ..core.errors import InputError
from ..core.files import refuse_existing, refuse_overlap, replace_dir, temp_name, write_bytes
from ..formats.binfile import write_bin
from ..formats.recordio import RecordIOError, decode_image, encode_image
from ..formats.shard import DEFAULT_IMAGE_SIZE, FaceShard, FaceShardWriter, refuse_shard_output

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_JPEG_SOI = b"\xff\xd8\xff"


def list_identity_folders(image_dir):
    """``[(identity_name, [image paths])]`` sorted by name; empty folders are skipped."""
    if not os.path.isdir(image_dir):
        raise InputError(f"{image_dir}: not a directory of <identity>/ image folders")
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
        raise InputError(f"{image_dir}: no <identity>/ folders with {'/'.join(IMAGE_EXTENSIONS)} images")
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


def folder_to_rec(image_dir, out_dir, image_size=DEFAULT_IMAGE_SIZE, quality=95, progress=True,
                  overwrite=False):
    """Write a layout-A shard; returns ``{"identities", "images", "names"}``."""
    identities = list_identity_folders(image_dir)
    refuse_shard_output(out_dir, overwrite, walked=[image_dir])
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
    text = "".join(f"{label}\t{name}\n" for label, name in enumerate(names))
    write_bytes(os.path.join(out_dir, "identities.txt"), text.encode("utf-8", "surrogateescape"))


def rec_to_folder(rec_dir, out_dir, progress=True, overwrite=False):
    """Write every image of a shard to ``out_dir/<label>/<key>.<ext>`` unchanged; returns counts.

    The folder is filled under a temporary name and renamed into place when every image is
    out, so a failed record leaves nothing behind and nothing inside it can be a planted link.
    """
    out_dir = os.fspath(out_dir)
    with FaceShard(rec_dir) as shard:
        refuse_overlap(out_dir, [shard.directory, shard.rec_path], output_is_dir=True)
        if not (os.path.isdir(out_dir) and not os.listdir(out_dir)):  # an empty folder may be filled
            refuse_existing(out_dir, overwrite, what="output folder")
        tmp = temp_name(out_dir.rstrip(os.sep) or out_dir)
        os.makedirs(tmp)
        try:
            labels = _write_images(shard, tmp, progress)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, out_dir)
        return {"identities": len(labels), "images": len(shard.image_keys)}


def _write_images(shard, out_dir, progress):
    labels = set()
    for key in tqdm(shard.image_keys, desc="rec2folder", unit="img", disable=not progress):
        label, payload = shard.read(key)
        folder = os.path.join(out_dir, str(label))
        if label not in labels:
            os.mkdir(folder)
            labels.add(label)
        ext = ".jpg" if payload.startswith(_JPEG_SOI) else ".png"
        fd = os.open(os.path.join(folder, f"{int(key)}{ext}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    return labels


def parse_pairs(pairs_path):
    """``[(path_a, path_b, issame)]`` from a pairs list; relative paths are taken from its folder."""
    base = os.path.dirname(os.path.abspath(pairs_path))
    pairs = []
    with open(pairs_path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{pairs_path}:{line_no}: not UTF-8 text ({raw[:40]!r})") from None
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise InputError(f"{pairs_path}:{line_no}: expected 'path_a path_b 0|1', got {line.strip()!r}")
            path_a, path_b = (os.path.join(base, p) for p in fields[:2])
            pairs.append((path_a, path_b, fields[2] == "1"))
    if not pairs:
        raise InputError(f"{pairs_path}: no pairs found")
    return pairs


def pairs_to_bin(pairs_path, out_bin, image_size=DEFAULT_IMAGE_SIZE, quality=95, progress=True,
                 overwrite=False):
    """Write a verification ``.bin`` from a pairs list; returns counts."""
    pairs = parse_pairs(pairs_path)
    refuse_overlap(out_bin, [pairs_path, *(path for pair in pairs for path in pair[:2])])
    refuse_existing(out_bin, overwrite)
    images, issame = [], []
    for path_a, path_b, same in tqdm(pairs, desc="pairs2bin", unit="pair", disable=not progress):
        images += [load_image_bytes(path_a, image_size, quality), load_image_bytes(path_b, image_size, quality)]
        issame.append(same)
    write_bin(out_bin, images, issame)
    return {"pairs": len(pairs), "same": int(np.sum(issame))}

