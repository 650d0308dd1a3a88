"""The ``.idx`` of a RecordIO file as numpy arrays: a few bytes per key, parsed at C speed.

A dict of Python ints costs over 100 bytes per key, and forked DataLoader workers copy its pages
as reference counts touch them. ``RecordIndex`` holds the keys in file order and, for lookups,
the keys in ascending order with their offsets: 16 bytes per key when the file lists its keys in
ascending order (InsightFace's and MXNet's writers do), 24 otherwise. Arrays are never touched by
reference counting, so workers share their pages.

``read_index`` takes a fast path for files in the canonical form ``KEY\\tOFFSET\\n`` (optional
``-``, digits, an optional ``\\r``): the structure is checked with vectorised byte tests, then
numpy parses the numbers. Anything else (blank lines, spaces, a malformed line) goes through
``read_index_lines``, the line-by-line reference parser, which also gives every error its
message; an error found on the fast path is reported with the same message, for the first bad
line in file order, so both paths refuse a file in the same words.
"""
import ctypes
from collections.abc import Mapping

import numpy as np

from .errors import RecordIOError

_DIGITS_MAX = 18  # decimal digits that always fit an int64
_TAB, _NEWLINE, _CR, _MINUS = 9, 10, 13, 45


class RecordIndex(Mapping):
    """``key -> offset`` of one ``.idx``, in file order; read-only.

    ``file_keys``: int64 [N] in file order. ``offset(key)`` and ``offsets_of(keys)`` look keys up
    (binary search, or arithmetic when the keys are one contiguous ascending run).
    """

    def __init__(self, keys, offsets):
        keys = np.ascontiguousarray(keys, dtype=np.int64)  # [N] file order
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)  # [N] file order
        self.file_keys = keys
        if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])):
            self._sorted_keys, self._sorted_offsets = keys, offsets  # shared: 16 bytes per key
        else:
            order = np.argsort(keys, kind="stable")
            self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]  # 24 bytes per key
        n = len(keys)
        self._dense = n > 0 and int(self._sorted_keys[-1]) - int(self._sorted_keys[0]) == n - 1
        self._first = int(self._sorted_keys[0]) if n else 0

    @property
    def nbytes(self):
        """Bytes the arrays hold (the shared ones counted once)."""
        arrays = {id(a): a for a in (self.file_keys, self._sorted_keys, self._sorted_offsets)}
        return sum(a.nbytes for a in arrays.values())

    @property
    def max_key(self):
        return int(self._sorted_keys[-1]) if len(self) else -1

    def __len__(self):
        return len(self.file_keys)

    def __iter__(self):
        return (int(key) for key in self.file_keys)

    def __contains__(self, key):
        return self._position(key) is not None

    def __getitem__(self, key):
        position = self._position(key)
        if position is None:
            raise KeyError(key)
        return int(self._sorted_offsets[position])

    def offset(self, key):
        """The byte offset of ``key``'s record; ``KeyError`` when the index lacks it."""
        return self[key]

    def file_offsets(self):
        """[N] int64 offsets in file order (a new array unless the keys were listed ascending)."""
        if self._sorted_keys is self.file_keys:
            return self._sorted_offsets
        return self.offsets_of(self.file_keys)

    def offsets_of(self, keys):
        """[M] int64 offsets of ``keys`` (each must be present), vectorised."""
        keys = np.asarray(keys, dtype=np.int64)
        found = self.contains_many(keys)
        if not found.all():
            raise KeyError(int(keys[~found][0]))
        if self._dense:
            return self._sorted_offsets[keys - self._first]
        return self._sorted_offsets[np.searchsorted(self._sorted_keys, keys)]

    def contains_many(self, keys):
        """[M] bool: which of ``keys`` the index holds, vectorised."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self):
            return np.zeros(keys.shape, dtype=bool)
        if self._dense:
            return (keys >= self._first) & (keys <= self._first + len(self) - 1)
        positions = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self) - 1)
        return self._sorted_keys[positions] == keys

    def _position(self, key):
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            return None
        key = int(key)
        if not len(self) or not -(1 << 63) <= key < (1 << 63):
            return None
        if self._dense:
            position = key - self._first
            return position if 0 <= position < len(self) else None
        position = int(np.searchsorted(self._sorted_keys, key))
        if position < len(self) and int(self._sorted_keys[position]) == key:
            return position
        return None


def read_index(idx_path, rec_size=None):
    """Parse an ``.idx`` file into a ``RecordIndex`` (file order).

    Malformed lines, duplicate keys, keys outside int64, offsets that cannot be a record start
    (not a multiple of 4) and offsets past the end of the ``.rec`` (when ``rec_size`` is given)
    raise ``RecordIOError`` naming the file, line and key.
    """
    parsed = _read_canonical(idx_path)
    if parsed is None:
        return read_index_lines(idx_path, rec_size)
    keys, offsets = parsed
    _check_parsed(idx_path, keys, offsets, rec_size)
    _return_freed_memory()
    return RecordIndex(keys, offsets)


def read_index_lines(idx_path, rec_size=None):
    """The reference parser: one line at a time, any whitespace the format tolerates."""
    idx_path = str(idx_path)
    first_offset = {}
    with open(idx_path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{idx_path}:{line_no}"
            line = _ascii_line(raw, where)
            fields = line.strip().split("\t")
            if fields == [""]:
                continue
            key, offset = _parse_index_fields(fields, line, where)
            if key in first_offset:
                raise RecordIOError(duplicate_message(where, key, first_offset[key]))
            check_index_offset(key, offset, rec_size, where)
            first_offset[key] = offset
    keys = np.fromiter(first_offset.keys(), dtype=np.int64, count=len(first_offset))
    offsets = np.fromiter(first_offset.values(), dtype=np.int64, count=len(first_offset))
    return RecordIndex(keys, offsets)


def write_index_lines(f, keys, offsets, chunk=1 << 16):
    """Write ``KEY\tOFFSET\n`` lines to the text file ``f``, a chunk of keys at a time."""
    for start in range(0, len(keys), chunk):
        pairs = zip(keys[start:start + chunk].tolist(), offsets[start:start + chunk].tolist())
        f.write("".join(f"{key}\t{offset}\n" for key, offset in pairs))


# ----------------------------------------------------------------------------- the fast path


def _read_canonical(idx_path, chunk=1 << 26):
    """``(keys, offsets)`` of a canonical file read in blocks of whole lines, or None if it is not one.

    Blocks bound the parse's temporary arrays (a few hundred bytes per line of a block) whatever
    the file's size; the result is 16 bytes per key.
    """
    keys, offsets = [], []
    with open(idx_path, "rb") as f:
        tail = b""
        while True:
            block = f.read(chunk)
            if not block:
                break
            block = tail + block
            cut = block.rfind(b"\n") + 1
            block, tail = block[:cut], block[cut:]
            parsed = _parse_canonical(block) if block else (np.zeros(0, np.int64),) * 2
            if parsed is None:
                return None
            keys.append(parsed[0])
            offsets.append(parsed[1])
        parsed = _parse_canonical(tail)  # a last line without a newline
    if parsed is None:
        return None
    return np.concatenate([*keys, parsed[0]]), np.concatenate([*offsets, parsed[1]])


def _return_freed_memory():
    """Hand the parse's freed temporaries back to the OS (glibc keeps freed heap blocks otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc: nothing to do
        pass


def _parse_canonical(data):
    """``(keys, offsets)`` of canonical lines, or None where the reference parser must decide."""
    b = np.frombuffer(data, dtype=np.uint8)
    if not len(b):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.flatnonzero(b == _NEWLINE)  # [lines] positions of each line's newline
    if b[-1] != _NEWLINE:
        ends = np.append(ends, len(b))  # a last line without a newline
    starts = np.concatenate([[0], ends[:-1] + 1])  # [lines]
    tabs = np.flatnonzero(b == _TAB)
    if len(tabs) != len(ends):
        return None
    line_ends = ends - (_byte_before(b, ends) == _CR)  # [lines] a \r before the newline is not a field
    if not (np.all(tabs > starts) and np.all(tabs < line_ends - 1)):
        return None
    digit = (b >= 48) & (b <= 57)
    other = ~digit & (b != _TAB) & (b != _NEWLINE)
    allowed = np.zeros(len(b), dtype=bool)
    allowed[ends[_byte_before(b, ends) == _CR] - 1] = True  # a \r right before a line's end
    field_starts = np.concatenate([starts, tabs + 1])
    allowed[field_starts] |= b[field_starts] == _MINUS
    if np.any(other & ~allowed):
        return None
    signed = (b[field_starts] == _MINUS).astype(np.int64)
    field_ends = np.concatenate([tabs, line_ends])
    lengths = field_ends - field_starts - signed  # digits per field
    if np.any(lengths < 1) or np.any(lengths > _DIGITS_MAX):
        return None
    text = data.decode("ascii").replace("\t", " ")
    values = np.fromstring(text, dtype=np.int64, sep=" ")  # [2 * lines] C parse; only binary mode is deprecated
    if len(values) != 2 * len(ends):
        return None
    return values[0::2].copy(), values[1::2].copy()


def _byte_before(b, ends):
    """[lines] the byte before each line end (0 where the line is empty)."""
    before = np.zeros(len(ends), dtype=np.uint8)
    inside = ends > 0
    before[inside] = b[ends[inside] - 1]
    return before


def _check_parsed(idx_path, keys, offsets, rec_size):
    """The reference parser's per-line checks, vectorised; the first bad line in file order raises."""
    ascending = len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1]))  # then no key repeats: skip the sort
    bad_offset = (offsets < 0) | (offsets % 4 != 0)
    if rec_size is not None:
        bad_offset |= offsets >= rec_size
    first_bad = int(np.argmax(bad_offset)) if bad_offset.any() else len(keys)
    first_repeat = len(keys)
    if not ascending:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        repeats = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        first_repeat = int(order[repeats + 1].min()) if len(repeats) else len(keys)
    if first_repeat <= first_bad and first_repeat < len(keys):  # a line is checked for duplicates first
        key = int(keys[first_repeat])
        first = int(order[np.searchsorted(sorted_keys, key)])
        raise RecordIOError(duplicate_message(f"{idx_path}:{first_repeat + 1}", key, int(offsets[first])))
    if first_bad < len(keys):
        check_index_offset(int(keys[first_bad]), int(offsets[first_bad]), rec_size, f"{idx_path}:{first_bad + 1}")


# ----------------------------------------------------------------------------- messages


def _ascii_line(raw, where):
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise RecordIOError(f"{where}: expected 'key<TAB>offset' in ASCII digits, got bytes {raw[:40]!r}") from None


def _parse_index_fields(fields, line, where):
    if len(fields) == 2 and all(_is_integer(field.strip()) for field in fields):
        key, offset = int(fields[0]), int(fields[1])
        if not -(1 << 63) <= key < (1 << 63):
            raise RecordIOError(f"{where}: key {key} does not fit a 64-bit integer")
        if offset >= (1 << 63):
            raise RecordIOError(f"{where}: key {key} points at offset {offset}, past any file")
        return key, offset
    shown = line.rstrip("\r\n")
    raise RecordIOError(f"{where}: expected 'key<TAB>offset' with two integers, got {shown!r}")


def _is_integer(field):
    digits = field[1:] if field.startswith("-") else field
    return digits.isdigit()


def duplicate_message(where, key, first_offset):
    return f"{where}: duplicate key {key} (first at offset {first_offset})"


def check_index_offset(key, offset, rec_size, where):
    if offset < 0 or (rec_size is not None and offset >= rec_size):
        raise RecordIOError(
            f"{where}: key {key} points at offset {offset}, outside the .rec "
            f"(expected 0 <= offset < {rec_size} bytes)"
        )
    # Records are padded to 4 bytes, so every record starts at a multiple of 4.
    if offset % 4:
        raise RecordIOError(
            f"{where}: key {key} points at offset {offset}, which is not a multiple of 4 "
            f"and so cannot be the start of a record"
        )
