"""MXNet RecordIO in pure Python: byte-compatible reading and writing without MXNet.

The on-disk layout follows dmlc-core's ``RecordIOWriter``: each record is
``u32 magic, u32 lrec, payload, zero padding to 4 bytes`` with
``lrec = cflag << 29 | length``. A payload that holds the magic number at a
4-byte-aligned offset is split there into parts (cflag 1 first, 2 middle,
3 last) and the magic bytes themselves are dropped; the reader puts them back.
``.idx`` files are text, ``key\\toffset`` per line.

``pack``/``unpack``/``pack_img``/``unpack_img`` follow ``mxnet.recordio``: a
24-byte ``IRHeader(flag, label, id, id2)``, with array labels stored as float32
right after the header and ``flag`` holding their count.
"""
import mmap
import numbers
import os
import struct
from collections import namedtuple

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_RECORD_LENGTH = (1 << 29) - 1
_LREC_LENGTH_MASK = (1 << 29) - 1
_RECORD_HEAD = struct.Struct("<II")

IRHeader = namedtuple("HEADER", ["flag", "label", "id", "id2"])
_IR_FORMAT = struct.Struct("IfQQ")
IR_HEADER_SIZE = _IR_FORMAT.size  # 24


class RecordIOError(ValueError):
    """A .rec/.idx file does not hold what the format promises; the message names where."""


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


def unpack(record):
    """Split a record into ``(IRHeader, payload)``; an array label comes back as float32."""
    if len(record) < IR_HEADER_SIZE:
        raise RecordIOError(
            f"record of {len(record)} bytes is shorter than the {IR_HEADER_SIZE}-byte IRHeader"
        )
    header = IRHeader(*_IR_FORMAT.unpack_from(record, 0))
    payload = memoryview(record)[IR_HEADER_SIZE:]
    if header.flag > 0:
        label_bytes = header.flag * 4
        if len(payload) < label_bytes:
            raise RecordIOError(
                f"IRHeader flag={header.flag} announces {header.flag} float32 labels "
                f"but only {len(payload)} bytes follow the header"
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

    img = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), iscolor)
    if img is None:
        head = bytes(payload[:4]).hex()
        raise RecordIOError(
            f"{where}: {len(payload)} payload bytes (starting {head}) are not a decodable image"
        )
    return img


def pack_img(header, img, quality=95, img_fmt=".jpg"):
    """``mxnet.recordio.pack_img``: encode a BGR image with OpenCV, then ``pack``."""
    return pack(header, encode_image(img, quality, img_fmt))


def unpack_img(record, iscolor=-1):
    """``mxnet.recordio.unpack_img``: ``unpack`` then ``cv2.imdecode`` (BGR result)."""
    header, payload = unpack(record)
    return header, decode_image(payload, iscolor)


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


class RecordWriter:
    """Write a ``.rec`` (and optionally its ``.idx``) atomically.

    Bytes go to ``<path>.tmp-<pid>`` files that are renamed over the final names
    by ``close()``; leaving a ``with`` block by an exception discards them, so a
    crash never leaves a file that looks complete.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path) if idx_path is not None else None
        suffix = f".tmp-{os.getpid()}"
        self._rec_tmp = self.rec_path + suffix
        self._idx_tmp = self.idx_path + suffix if self.idx_path else None
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

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        # An unclosed writer was abandoned mid-way: its output is incomplete.
        if not getattr(self, "closed", True):
            self.abort()


# --------------------------------------------------------------------------- reading


class _MappedFile:
    """A read-only mmap of a file that reopens itself in a forked child process.

    DataLoader workers inherit the parent's objects; a shared file position or a
    mapping made before ``fork`` is not something to rely on, so each process
    maps the file for itself on first use. Pickling (spawn workers) drops the map.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._pid = None
        self._map = None
        self._size = None
        self._open()

    def _open(self):
        with open(self.path, "rb") as f:
            self._size = os.fstat(f.fileno()).st_size
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self._size else b""
        self._pid = os.getpid()

    @property
    def data(self):
        if self._pid != os.getpid():
            self._open()
        return self._map

    @property
    def size(self):
        return self._size

    def close(self):
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._map = b""

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._open()


def _read_record_at(data, size, offset, where):
    """Read the record whose first magic is at ``offset``; returns ``(payload, next_offset)``."""
    parts = []
    pos = offset
    while True:
        if pos + 8 > size:
            raise RecordIOError(
                f"{where}: truncated record at offset {pos}: need an 8-byte record head, "
                f"file has {size - pos} bytes left"
            )
        magic, lrec = _RECORD_HEAD.unpack_from(data, pos)
        if magic != MAGIC:
            raise RecordIOError(
                f"{where}: wrong magic 0x{magic:08x} at offset {pos}, expected 0x{MAGIC:08x} "
                f"(not the start of a record)"
            )
        cflag = lrec >> 29
        length = lrec & _LREC_LENGTH_MASK
        start = pos + 8
        if start + length > size:
            raise RecordIOError(
                f"{where}: truncated record at offset {pos}: header announces {length} bytes, "
                f"file has {size - start} bytes left"
            )
        expected_first = parts == []
        if (cflag in (0, 1)) != expected_first:
            raise RecordIOError(
                f"{where}: record part at offset {pos} has cflag {cflag}, "
                f"expected {'0 or 1' if expected_first else '2 or 3'}"
            )
        parts.append(data[start:start + length])
        pos = start + _aligned(length)
        if cflag in (0, 3):
            break
    payload = parts[0] if len(parts) == 1 else MAGIC_BYTES.join(parts)
    return payload, pos


class RecordReader:
    """Sequential reader over every record of a ``.rec`` file."""

    def __init__(self, rec_path):
        self._file = _MappedFile(rec_path)
        self.path = self._file.path
        self._pos = 0

    def read(self):
        """Next payload, or ``None`` at the end of the file (MXNet's ``MXRecordIO.read``)."""
        if self._pos >= self._file.size:
            return None
        payload, self._pos = _read_record_at(self._file.data, self._file.size, self._pos, self.path)
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_index(idx_path, rec_size=None):
    """Parse an ``.idx`` file into ``{key: offset}`` in file order.

    Duplicate keys, malformed lines and offsets past the end of the ``.rec``
    (when ``rec_size`` is given) raise ``RecordIOError`` naming the line.
    """
    idx_path = os.fspath(idx_path)
    index = {}
    with open(idx_path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.strip().split("\t")
            if fields == [""]:
                continue
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError(
                    f"{idx_path}:{line_no}: expected 'key<TAB>offset' with integers, got {line.strip()!r}"
                ) from None
            if key in index:
                raise RecordIOError(
                    f"{idx_path}:{line_no}: duplicate key {key} (first at offset {index[key]})"
                )
            if offset < 0 or (rec_size is not None and offset >= rec_size):
                raise RecordIOError(
                    f"{idx_path}:{line_no}: key {key} points at offset {offset}, "
                    f"past the end of the .rec ({rec_size} bytes)"
                )
            index[key] = offset
    return index


def default_idx_path(rec_path):
    root, _ = os.path.splitext(os.fspath(rec_path))
    return root + ".idx"


class IndexedRecordReader:
    """Random access to a ``.rec`` through its ``.idx`` (MXNet's ``MXIndexedRecordIO`` read side)."""

    def __init__(self, rec_path, idx_path=None):
        self._file = _MappedFile(rec_path)
        self.path = self._file.path
        self.idx_path = os.fspath(idx_path) if idx_path else default_idx_path(rec_path)
        self.index = read_index(self.idx_path, rec_size=self._file.size)
        self.keys = list(self.index)

    def __len__(self):
        return len(self.index)

    def __contains__(self, key):
        return key in self.index

    def read_idx(self, key):
        """Payload of the record stored under ``key``."""
        try:
            offset = self.index[key]
        except KeyError:
            raise RecordIOError(f"{self.idx_path}: no record with key {key}") from None
        payload, _ = _read_record_at(
            self._file.data, self._file.size, offset, f"{self.path} (key {key})"
        )
        return payload

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
