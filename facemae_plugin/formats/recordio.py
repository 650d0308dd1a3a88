"""MXNet RecordIO in pure Python: byte-compatible reading and writing without MXNet.

The on-disk layout follows dmlc-core's ``RecordIOWriter``: each record is
``u32 magic, u32 lrec, payload, zero padding to 4 bytes`` with
``lrec = cflag << 29 | length``. A payload that holds the magic number at a
4-byte-aligned offset is split there into parts (cflag 1 first, 2 middle,
3 last) and the magic bytes themselves are dropped; the reader puts them back.
``.idx`` files are text, ``key\\toffset`` per line.

``pack``/``unpack``/``pack_img``/``unpack_img`` follow ``mxnet.recordio``: a
24-byte ``IRHeader(flag, label, id, id2)``, with array labels stored as float32
right after the header and ``flag`` holding their count. docs/formats.md has the byte layout.
"""
import numbers
import os
import struct
from collections import namedtuple

import numpy as np

from ..core.files import refuse_link, temp_name
from .errors import RecordIOError
from .recordindex import read_index

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD_LENGTH = (1 << 29) - 1
_LREC_LENGTH_MASK = (1 << 29) - 1
_RECORD_HEAD = struct.Struct("<II")

IRHeader = namedtuple("HEADER", ["flag", "label", "id", "id2"])
_IR_FORMAT = struct.Struct("IfQQ")
IR_HEADER_SIZE = _IR_FORMAT.size  # 24


def _aligned(length):
    return (length + 3) & ~3


# --------------------------------------------------------------------------- packing


def pack(header, payload):
    """Prefix ``payload`` with an IRHeader; array labels go between header and payload."""
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
    else:
        label = np.asarray(header.label, dtype=np.float32)
        header = header._replace(flag=label.size, label=0)
        payload = label.tobytes() + bytes(payload)
    return _IR_FORMAT.pack(*header) + bytes(payload)


def unpack(record, where="record"):
    """Split a record into ``(IRHeader, payload)``; an array label comes back as float32.

    ``where`` (e.g. ``"train.rec key 7"``) starts the message of any error raised.
    """
    if len(record) < IR_HEADER_SIZE:
        raise RecordIOError(
            f"{where}: {len(record)} bytes are shorter than the {IR_HEADER_SIZE}-byte IRHeader"
        )
    header = IRHeader(*_IR_FORMAT.unpack_from(record, 0))
    payload = memoryview(record)[IR_HEADER_SIZE:]
    if header.flag > 0:
        label_bytes = header.flag * 4
        if len(payload) < label_bytes:
            raise RecordIOError(
                f"{where}: IRHeader flag={header.flag} announces {header.flag} float32 labels "
                f"({label_bytes} bytes) but only {len(payload)} bytes follow the header"
            )
        label = np.frombuffer(payload[:label_bytes], dtype=np.float32)
        header = header._replace(label=label)
        payload = payload[label_bytes:]
    return header, bytes(payload)


def encode_image(img, quality=95, img_fmt=".jpg"):
    """Encode a BGR (or grey) uint8 image the way ``mxnet.recordio.pack_img`` does."""
    import cv2

    params = None
    if img_fmt.upper() in (".JPG", ".JPEG"):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif img_fmt.upper() == ".PNG":
        params = [cv2.IMWRITE_PNG_COMPRESSION, quality]
    ok, buf = cv2.imencode(img_fmt, img, params)
    if not ok:
        raise RecordIOError(f"cv2.imencode could not encode a {np.shape(img)} image as {img_fmt}")
    return buf.tobytes()


def decode_image(payload, iscolor=-1, where="record"):
    """Decode image bytes with ``cv2.imdecode``; undecodable bytes raise naming ``where``."""
    import cv2

    buf = np.frombuffer(payload, dtype=np.uint8)
    # OpenCV asserts on an empty buffer instead of returning None.
    img = cv2.imdecode(buf, iscolor) if buf.size else None
    if img is None:
        head = bytes(payload[:4]).hex()
        raise RecordIOError(
            f"{where}: {len(payload)} payload bytes (starting {head}) are not a decodable image"
        )
    return img


def pack_img(header, img, quality=95, img_fmt=".jpg"):
    """``mxnet.recordio.pack_img``: encode a BGR image with OpenCV, then ``pack``."""
    return pack(header, encode_image(img, quality, img_fmt))


def unpack_img(record, iscolor=-1, where="record"):
    """``mxnet.recordio.unpack_img``: ``unpack`` then ``cv2.imdecode`` (BGR result)."""
    header, payload = unpack(record, where)
    return header, decode_image(payload, iscolor, where)


# --------------------------------------------------------------------------- writing


def frame_record(payload):
    """Return the on-disk bytes of one record, split at aligned magic like dmlc-core."""
    payload = bytes(payload)
    length = len(payload)
    if length > MAX_RECORD_LENGTH:
        raise RecordIOError(f"record of {length} bytes exceeds the RecordIO limit of 2**29 - 1")
    parts = []
    start = 0  # first payload byte of the part being built
    search = payload.find(MAGIC_BYTES)
    while search != -1:
        if search % 4 == 0:
            cflag = 1 if start == 0 else 2
            parts.append(_RECORD_HEAD.pack(MAGIC, cflag << 29 | (search - start)))
            parts.append(payload[start:search])
            start = search + 4
            search = payload.find(MAGIC_BYTES, start)
        else:
            search = payload.find(MAGIC_BYTES, search + 1)
    cflag = 3 if start != 0 else 0
    parts.append(_RECORD_HEAD.pack(MAGIC, cflag << 29 | (length - start)))
    parts.append(payload[start:])
    parts.append(b"\0" * (_aligned(length) - length))
    return b"".join(parts)


class ClosedOnExit:
    """``with`` protocol of the readers: ``close()`` when the block ends, however it ends."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CommitOnSuccess:
    """``with`` protocol of the atomic writers: ``close()`` commits, an exception ``abort()``s."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class RecordWriter(CommitOnSuccess):
    """Write a ``.rec`` (and optionally its ``.idx``) atomically.

    Bytes go to ``<path>.tmp-<pid>-<id>`` files that are renamed over the final names
    by ``close()``; leaving a ``with`` block by an exception discards them, so a
    crash never leaves a file that looks complete.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path) if idx_path is not None else None
        for final in (self.rec_path, self.idx_path):
            if final is not None:
                refuse_link(final)
        self._rec_tmp = temp_name(self.rec_path)
        self._idx_tmp = temp_name(self.idx_path) if self.idx_path else None
        self._rec = open(self._rec_tmp, "wb")
        self._idx = open(self._idx_tmp, "w", newline="\n") if self._idx_tmp else None
        self._pos = 0
        self._keys = set()
        self.closed = False

    def tell(self):
        """Byte offset the next record will start at."""
        return self._pos

    def write(self, payload):
        """Append one record; returns its offset."""
        framed = frame_record(payload)
        pos = self._pos
        self._rec.write(framed)
        self._pos += len(framed)
        return pos

    def write_idx(self, key, payload):
        """Append one record and its ``key\\toffset`` index line."""
        if self._idx is None:
            raise RecordIOError(f"{self.rec_path}: write_idx needs an .idx path")
        key = int(key)
        if key in self._keys:
            raise RecordIOError(f"{self.rec_path}: key {key} written twice")
        self._keys.add(key)
        pos = self.write(payload)
        self._idx.write(f"{key}\t{pos}\n")
        return pos

    def close(self):
        """Flush and move the finished files into place."""
        if self.closed:
            return
        self.closed = True
        for handle, tmp, final in self._files():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, final)

    def abort(self):
        """Discard everything written so far."""
        if self.closed:
            return
        self.closed = True
        for handle, tmp, _ in self._files():
            handle.close()
            if os.path.exists(tmp):
                os.remove(tmp)

    def _files(self):
        files = [(self._rec, self._rec_tmp, self.rec_path)]
        if self._idx is not None:
            files.append((self._idx, self._idx_tmp, self.idx_path))
        return files

    def __del__(self):
        # An unclosed writer was abandoned mid-way: its output is incomplete.
        if not getattr(self, "closed", True):
            self.abort()


# --------------------------------------------------------------------------- reading


class _RecordFile:
    """A read-only file read with positional reads (``os.pread``).

    Positional reads share no file offset, so the descriptor a forked DataLoader
    worker inherits is safe to use; pickling (spawn workers) reopens by path.
    Unlike a memory map, the pages read stay in the shared page cache instead of
    adding to each process's RSS, and a file truncated underneath a reader gives
    a ``RecordIOError`` rather than a SIGBUS.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._open()

    def _open(self):
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def read_at(self, offset, length):
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        if self._fd is None:
            raise RecordIOError(f"{self.path}: read from a closed reader")
        return os.pread(self._fd, length, offset)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.close()

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._open()


def _location(path, key):
    return path if key is None else f"{path} (key {key})"


def _read_record_at(file, offset, key=None):
    """Read the record whose first magic is at ``offset``; returns ``(payload, next_offset)``.

    ``key`` only names the record in error messages, which are formatted when
    something is wrong, never on the fast path.
    """
    parts = []
    pos = offset
    while True:
        head = file.read_at(pos, 8)
        if len(head) < 8:
            raise RecordIOError(
                f"{_location(file.path, key)}: truncated record at offset {pos}: need an 8-byte "
                f"record head, file has {len(head)} bytes left"
            )
        magic, lrec = _RECORD_HEAD.unpack(head)
        if magic != MAGIC:
            raise RecordIOError(
                f"{_location(file.path, key)}: wrong magic 0x{magic:08x} at offset {pos}, "
                f"expected 0x{MAGIC:08x} (not the start of a record)"
            )
        cflag = lrec >> 29
        length = lrec & _LREC_LENGTH_MASK
        start = pos + 8
        end = start + _aligned(length)
        body = file.read_at(start, length)
        # MXNet reads the zero padding too, so a file cut inside it is truncated.
        if len(body) < length or end > file.size:
            left = len(body) if len(body) < length else file.size - start
            raise RecordIOError(
                f"{_location(file.path, key)}: truncated record at offset {pos}: head announces "
                f"{length} bytes ({end - start} with padding), file has {left} bytes left"
            )
        expected_first = not parts
        if (cflag <= 1) != expected_first:
            raise RecordIOError(
                f"{_location(file.path, key)}: record part at offset {pos} has cflag {cflag}, "
                f"expected {'0 or 1 (start of a record)' if expected_first else '2 or 3 (continuation)'}"
            )
        if cflag == 0:  # the common case: a whole record in one part
            return body, end
        parts.append(body)
        pos = end
        if cflag == 3:
            return MAGIC_BYTES.join(parts), pos


class RecordReader(ClosedOnExit):
    """Sequential reader over every record of a ``.rec`` file."""

    def __init__(self, rec_path):
        self._file = _RecordFile(rec_path)
        self.path = self._file.path
        self._pos = 0

    def read(self):
        """Next payload, or ``None`` at the end of the file (MXNet's ``MXRecordIO.read``)."""
        if self._pos >= self._file.size:
            return None
        payload, self._pos = _read_record_at(self._file, self._pos)
        return payload

    def reset(self):
        self._pos = 0

    def tell(self):
        return self._pos

    def __iter__(self):
        """Yield ``(offset, payload)`` for each record from the current position."""
        while self._pos < self._file.size:
            offset = self._pos
            yield offset, self.read()

    def close(self):
        self._file.close()


def default_idx_path(rec_path):
    root, _ = os.path.splitext(os.fspath(rec_path))
    return root + ".idx"


class IndexedRecordReader(ClosedOnExit):
    """Random access to a ``.rec`` through its ``.idx`` (MXNet's ``MXIndexedRecordIO`` read side)."""

    def __init__(self, rec_path, idx_path=None):
        self._file = _RecordFile(rec_path)
        self.path = self._file.path
        self.idx_path = os.fspath(idx_path) if idx_path else default_idx_path(rec_path)
        self.index = read_index(self.idx_path, rec_size=self._file.size)  # RecordIndex: numpy arrays

    @property
    def keys(self):
        """[N] int64 keys in ``.idx`` order (see ``RecordIndex.file_keys``)."""
        return self.index.file_keys

    def __len__(self):
        return len(self.index)

    def __contains__(self, key):
        return key in self.index

    def read_idx(self, key):
        """Payload of the record stored under ``key``."""
        try:
            offset = self.index.offset(key)
        except KeyError:
            raise RecordIOError(f"{self.idx_path}: no record with key {key}") from None
        payload, _ = _read_record_at(self._file, offset, key)
        return payload

    def close(self):
        self._file.close()
