"""InsightFace face shards: a ``train.rec``/``train.idx`` directory as arcface_torch reads it.

Two layouts exist:

* **A** (RecBuilder; CASIA-WebFace, MS1M, Glint, WebFace): key 0 is a header
  record whose label ``[a, b]`` says images are keys ``1 .. a-1`` and identity
  records are keys ``a .. b-1``, each labelled with its ``[start, end)`` image range.
* **B** (im2rec): every key in the ``.idx`` is an image with a scalar label.

``FaceShard`` detects the layout and exposes image keys, labels and identity
ranges; ``FaceShardWriter`` writes layout A from identities given in order. docs/formats.md
describes both layouts and the released shards' keys.
"""
import functools
import numbers
import os

import numpy as np

from ..core.files import refuse_existing, refuse_link, refuse_overlap, sha256_file, write_bytes
from .recordio import (
    ClosedOnExit,
    CommitOnSuccess,
    IndexedRecordReader,
    IRHeader,
    RecordIOError,
    RecordWriter,
    decode_image,
    encode_image,
    pack,
    unpack,
)

REC_NAME = "train.rec"
IDX_NAME = "train.idx"
PROPERTY_NAME = "property"
PROVENANCE_NAME = "facemae_provenance.json"  # written beside a release by facemae convert
DEFAULT_IMAGE_SIZE = (112, 112)  # (height, width) of InsightFace aligned crops
MAX_IMAGE_SIDE = 4096
MAX_LABEL = 2**31 - 1  # identity labels index a class table (int32 in arcface_torch's margin loss)


def shard_paths(path):
    """``(rec, idx, directory)`` for a shard directory or a path to its ``.rec`` file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        directory = path
        rec = os.path.join(path, REC_NAME)
    elif path.endswith(".rec"):
        directory = os.path.dirname(path) or "."
        rec = path
    else:
        raise RecordIOError(f"{path}: expected a directory holding {REC_NAME}/{IDX_NAME} or a .rec file")
    idx = rec[: -len(".rec")] + ".idx"
    for needed in (rec, idx):
        if not os.path.isfile(needed):
            raise RecordIOError(f"{path}: not a face shard, {os.path.basename(needed)} is missing")
    return rec, idx, directory


def read_property(directory):
    """``(num_classes, height, width)`` from a shard's ``property`` file, or ``None``."""
    path = os.path.join(directory, PROPERTY_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        raw = f.read(4096)
    try:
        text = raw.decode("ascii").strip()
        num_classes, height, width = (int(v) for v in text.split(","))
    except ValueError:  # not ASCII, not three integers
        raise RecordIOError(f"{path}: expected 'num_classes,height,width', got {raw[:60]!r}") from None
    if num_classes < 0 or not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise RecordIOError(f"{path}: expected a class count >= 0 and an image size of 1..{MAX_IMAGE_SIDE} "
                            f"pixels, got {text!r}")
    return num_classes, height, width


def scalar_label(label, where):
    """The identity id of an image record: a scalar label or the first entry of an array label."""
    if isinstance(label, numbers.Number):
        value = float(label)
    else:
        label = np.asarray(label)
        if label.ndim != 1 or label.size == 0:
            raise RecordIOError(f"{where}: expected a scalar label or a 1-D label array, got shape {label.shape}")
        value = float(label[0])
    if not (0 <= value <= MAX_LABEL) or value != int(value):  # also refuses nan and inf
        raise RecordIOError(f"{where}: expected an integer identity label in 0..{MAX_LABEL}, got {value}")
    return int(value)


def _range_label(header, where):
    label = np.asarray(header.label)
    if header.flag != 2 or label.shape != (2,):
        raise RecordIOError(
            f"{where}: expected a 2-value label [start, end), got flag={header.flag} label={header.label!r}"
        )
    start, end = int(label[0]), int(label[1])
    if not 0 <= start <= end:
        raise RecordIOError(f"{where}: range label [{start}, {end}) is not an increasing key range")
    return start, end


class FaceShard(ClosedOnExit):
    """Read-only view of an InsightFace shard directory (layout A or B).

    Safe to hand to DataLoader worker processes: the underlying reader opens
    the file again in each process (positional reads, no shared file offset).
    """

    def __init__(self, path):
        self.rec_path, self.idx_path, self.directory = shard_paths(path)
        self.reader = IndexedRecordReader(self.rec_path, self.idx_path)
        self.property = read_property(self.directory)
        self.header_range = self._read_header_range()
        if self.header_range is None:
            self.layout = "B"
            self.image_keys = np.asarray(self.reader.keys, dtype=np.int64)
            self.identity_keys = np.zeros(0, dtype=np.int64)
        else:
            self.layout = "A"
            self._check_keys_present()  # before any array is sized by the header's claim
            first_identity, end = self.header_range
            self.image_keys = np.arange(1, first_identity, dtype=np.int64)
            self.identity_keys = np.arange(first_identity, end, dtype=np.int64)
        self._identity_ranges = None

    def _read_header_range(self):
        if 0 not in self.reader:
            return None
        header, payload = unpack(self.reader.read_idx(0))
        if header.flag == 0 or payload:
            # Layout B: key 0 is an ordinary image. (A header record has an empty
            # payload; an image with an array label is not a header.)
            return None
        return _range_label(header, f"{self.rec_path} header record (key 0)")

    def _check_keys_present(self):
        first_identity, end = self.header_range
        index = self.reader.index
        # Of any len(index) + 1 keys one is missing, so the search stops there whatever the header claims.
        wanted = np.arange(1, min(end, len(index) + 2), dtype=np.int64)  # [M]
        absent = wanted[~index.contains_many(wanted)]
        missing = int(absent[0]) if len(absent) else None
        if missing is not None:
            raise RecordIOError(
                f"{self.idx_path}: the header record (key 0) promises image keys 1..{first_identity - 1} "
                f"and identity keys {first_identity}..{end - 1}, but key {missing} is not in the index"
            )

    def __len__(self):
        return len(self.image_keys)

    def read_record(self, key):
        """``(IRHeader, payload)`` of the record under ``key``."""
        return unpack(self.reader.read_idx(int(key)))

    def read(self, key):
        """``(label, encoded image bytes)`` of an image record."""
        header, payload = self.read_record(key)
        return scalar_label(header.label, f"{self.rec_path} key {key}"), payload

    def label(self, key):
        return self.read(key)[0]

    def decode(self, key, payload=None, rgb=True):
        """Decode the image of ``key`` (BGR->RGB by default) and check its size."""
        if payload is None:
            payload = self.read(key)[1]
        where = f"{self.rec_path} key {key}"
        img = decode_image(payload, iscolor=1, where=where)
        expected = self.image_size
        if img.shape[:2] != expected:
            raise RecordIOError(
                f"{where}: image is {img.shape[1]}x{img.shape[0]}, expected {expected[1]}x{expected[0]}"
            )
        return img[:, :, ::-1] if rgb else img

    @property
    def image_size(self):
        """``(height, width)`` every image must have (from ``property``, else 112x112)."""
        return tuple(self.property[1:]) if self.property else DEFAULT_IMAGE_SIZE

    def identity_ranges(self):
        """``{identity: (start_key, end_key)}`` from layout A's identity records (cached)."""
        if self._identity_ranges is None:
            ranges = {}
            for identity, key in enumerate(self.identity_keys):
                header, _ = self.read_record(key)
                ranges[identity] = _range_label(header, f"{self.rec_path} identity record (key {key})")
            self._identity_ranges = ranges
        return self._identity_ranges

    def labels(self, progress=False):
        """Labels of all image keys, in ``image_keys`` order (reads every record header)."""
        keys = self.image_keys
        if progress:
            from tqdm import tqdm

            keys = tqdm(keys, desc="labels", unit="rec", leave=False)
        return np.fromiter((self.label(k) for k in keys), dtype=np.int64, count=len(self.image_keys))

    @functools.cached_property
    def idx_sha256(self):
        """sha256 of the ``.idx``, hashed once per open shard: several checks name the shard by it."""
        return sha256_file(self.idx_path)

    def fingerprint(self):
        """What names this shard's data, cheaply: its ``.idx`` sha256, layout, images and identities.

        The ``.idx`` holds every key and offset, so two shards with one hash hold the same records
        at the same sizes; the identities are the header's count (layout A) or ``property``'s.
        """
        identities = len(self.identity_keys) if self.layout == "A" else (self.property[0] if self.property else None)
        return {"idx_sha256": self.idx_sha256, "layout": self.layout, "images": len(self.image_keys),
                "identities": identities}

    def close(self):
        self.reader.close()


def lineage_problem(released, trained_on=None, training_set=None):
    """Why a model and its training set cannot stand for releasing ``released``, or None.

    ``released`` and ``training_set``: ``{"path": ..., **FaceShard.fingerprint()}`` of the shard
    released and of the one the model should have learnt from; ``trained_on``: the fingerprint a
    model recorded of its own training data (None where it records none). A model that has seen
    the released people measures, or protects, nothing. Shards are compared by ``.idx`` sha256.
    """
    if training_set is not None and training_set["idx_sha256"] == released["idx_sha256"]:
        return f"{training_set['path']} is the shard being released ({released['path']}), not a training set"
    recorded = (trained_on or {}).get("idx_sha256")
    if recorded is not None and recorded == released["idx_sha256"]:
        return f"trained on {released['path']} itself, so it has learnt the very people being released"
    if recorded is not None and training_set is not None and recorded != training_set["idx_sha256"]:
        return (f"trained on other data (.idx sha256 {recorded[:12]}...) than {training_set['path']} "
                f"({training_set['idx_sha256'][:12]}...)")
    return None


class FaceShardWriter(CommitOnSuccess):
    """Write a layout-A shard from identities given in order.

    ``add_identity(images)`` takes BGR uint8 arrays (encoded as JPEG, like
    ``pack_img``) or already-encoded bytes (stored as they are). On ``close``
    the identity records and the header record (key 0) are appended, then the
    ``property`` file is written; every file appears only when complete.
    """

    def __init__(self, out_dir, image_size=DEFAULT_IMAGE_SIZE, quality=95):
        self.out_dir = os.fspath(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.image_size = tuple(image_size)
        self.quality = quality
        self._writer = RecordWriter(
            os.path.join(self.out_dir, REC_NAME), os.path.join(self.out_dir, IDX_NAME)
        )
        self._next_key = 1
        self._ranges = []  # [start, end) image keys per identity

    @property
    def num_images(self):
        return self._next_key - 1

    @property
    def num_identities(self):
        return len(self._ranges)

    def add_identity(self, images):
        """Append one identity's images; returns its label."""
        identity = len(self._ranges)
        start = self._next_key
        for img in images:
            self._writer.write_idx(self._next_key, pack(IRHeader(0, float(identity), self._next_key, 0),
                                                        self._encode(img)))
            self._next_key += 1
        if self._next_key == start:
            raise ValueError(f"identity {identity} has no images")
        self._ranges.append((start, self._next_key))
        return identity

    def _encode(self, img):
        if isinstance(img, (bytes, bytearray, memoryview)):
            return bytes(img)
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 BGR image, got {img.dtype} {img.shape}")
        if img.shape[:2] != self.image_size:
            raise ValueError(
                f"image is {img.shape[1]}x{img.shape[0]}, expected {self.image_size[1]}x{self.image_size[0]}"
            )
        return encode_image(img, self.quality)

    def close(self):
        first_identity_key = self._next_key
        for offset, (start, end) in enumerate(self._ranges):
            key = first_identity_key + offset
            self._writer.write_idx(key, pack(IRHeader(0, [start, end], key, 0), b""))
        end_key = first_identity_key + len(self._ranges)
        self._writer.write_idx(0, pack(IRHeader(0, [first_identity_key, end_key], 0, 0), b""))
        self._writer.close()
        write_property(self.out_dir, len(self._ranges), self.image_size)

    def abort(self):
        self._writer.abort()


def write_property(directory, num_classes, image_size=DEFAULT_IMAGE_SIZE):
    """Write ``property`` (``num_classes,height,width``) atomically."""
    write_bytes(os.path.join(directory, PROPERTY_NAME), f"{num_classes},{image_size[0]},{image_size[1]}\n".encode())


def refuse_shard_output(out_dir, overwrite, inputs=(), walked=()):
    """Before writing a shard into ``out_dir``: not over an input (see ``refuse_overlap``), not over a shard
    unless ``overwrite``."""
    refuse_overlap(out_dir, inputs, output_is_dir=True, walked=walked)
    refuse_link(out_dir)
    for name in (REC_NAME, IDX_NAME, PROPERTY_NAME):
        refuse_existing(os.path.join(os.fspath(out_dir), name), overwrite, what="a shard file")
