"""The ``.idx`` of a RecordIO file as numpy arrays: a few bytes per key, parsed at C speed.

A dict of Python ints costs over 100 bytes per key, and forked DataLoader workers copy its pages
as reference counts touch them. ``RecordIndex`` keeps numpy arrays, which reference counting
never touches, so workers share their pages. It stores what the keys need: 8 bytes per key
(the offsets) when the file lists one contiguous ascending run of keys (InsightFace's and
MXNet's writers do), 16 when the keys are ascending with gaps or a shuffled run, 24 otherwise.

``read_index`` takes a fast path for files in the canonical form ``KEY\tOFFSET\n`` (optional
``-``, digits, an optional ``\r``): blocks of lines are checked with vectorised byte tests, then
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
_BLOCK = 1 << 22  # bytes parsed at a time: their temporaries are reused from block to block


class RecordIndex(Mapping):
    """``key -> offset`` of one ``.idx``, in file order; read-only.

    ``file_keys`` (int64 [N], file order) and ``file_offsets()``; ``offset(key)``,
    ``offsets_of(keys)`` and ``contains_many(keys)`` look keys up by binary search, or by
    arithmetic when the keys form one contiguous run.
    """

    def __init__(self, keys, offsets, order=None):
        """``keys``, ``offsets``: [N] in file order, keys unique; ``order``: their stable argsort, if known."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)  # [N] file order
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)  # [N] file order
        self._n = len(keys)
        self._first = int(keys.min()) if len(keys) else 0
        ascending = len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1]))
        run = bool(self._n) and int(keys.max()) - self._first == self._n - 1  # sorted keys are first..first+n-1
        if ascending:
            self._file_keys = None if run else keys
            self._sorted_keys, self._sorted_offsets = self._file_keys, offsets
        else:
            order = np.argsort(keys, kind="stable") if order is None else order
            self._file_keys = keys
            self._sorted_keys = None if run else keys[order]
            self._sorted_offsets = offsets[order]
        self._ascending = ascending

    @classmethod
    def run(cls, first, offsets):
        """The index of keys ``first, first + 1, ...`` listed in that order, at ``offsets``."""
        index = cls.__new__(cls)
        index._n, index._first, index._ascending = len(offsets), int(first), True
        index._file_keys = index._sorted_keys = None
        index._sorted_offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        return index

    @property
    def file_keys(self):
        """[N] int64 keys in file order (made on each call when they are one ascending run)."""
        if self._file_keys is None:
            return np.arange(self._first, self._first + self._n, dtype=np.int64)
        return self._file_keys

    @property
    def nbytes(self):
        """Bytes the index holds (arrays shared between roles counted once)."""
        arrays = {id(a): a for a in (self._file_keys, self._sorted_keys, self._sorted_offsets) if a is not None}
        return sum(a.nbytes for a in arrays.values())

    @property
    def max_key(self):
        if not self._n:
            return -1
        return self._first + self._n - 1 if self._sorted_keys is None else int(self._sorted_keys[-1])

    def __len__(self):
        return self._n

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
        return self._sorted_offsets if self._ascending else self.offsets_of(self._file_keys)

    def offsets_of(self, keys):
        """[M] int64 offsets of ``keys`` (each must be present), vectorised."""
        keys = np.asarray(keys, dtype=np.int64)
        found = self.contains_many(keys)
        if not found.all():
            raise KeyError(int(keys[~found][0]))
        if self._sorted_keys is None:
            return self._sorted_offsets[keys - self._first]
        return self._sorted_offsets[np.searchsorted(self._sorted_keys, keys)]

    def contains_many(self, keys):
        """[M] bool: which of ``keys`` the index holds, vectorised."""
        keys = np.asarray(keys, dtype=np.int64)
        if not self._n:
            return np.zeros(keys.shape, dtype=bool)
        if self._sorted_keys is None:
            return (keys >= self._first) & (keys <= self._first + self._n - 1)
        positions = np.minimum(np.searchsorted(self._sorted_keys, keys), self._n - 1)
        return self._sorted_keys[positions] == keys

    def _position(self, key):
        """Row of ``key`` in the ascending-key arrays, or None."""
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            return None
        key = int(key)
        if not self._n or not -(1 << 63) <= key < (1 << 63):
            return None
        if self._sorted_keys is None:
            position = key - self._first
            return position if 0 <= position < self._n else None
        position = int(np.searchsorted(self._sorted_keys, key))
        if position < self._n and int(self._sorted_keys[position]) == key:
            return position
        return None


def read_index(idx_path, rec_size=None):
    """Parse an ``.idx`` file into a ``RecordIndex`` (file order).

    Malformed lines, duplicate keys, keys outside int64, offsets that cannot be a record start
    (not a multiple of 4) and offsets past the end of the ``.rec`` (when ``rec_size`` is given)
    raise ``RecordIOError`` naming the file, line and key.
    """
    columns = _read_canonical(idx_path, rec_size)
    if columns is None:
        return read_index_lines(idx_path, rec_size)
    order = _check_parsed(idx_path, columns)
    _return_freed_memory()
    return columns.index(order)


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


def _read_canonical(idx_path, rec_size=None, block=_BLOCK):
    """The ``_Columns`` of a canonical file, parsed a block of whole lines at a time, or None.

    The newlines are counted first, so the columns are allocated once at their final size; while
    the keys are one ascending run only the offsets are kept.
    """
    with open(idx_path, "rb") as f:
        columns = _Columns(_count_lines(f, block), rec_size)
        f.seek(0)
        while True:
            data = f.read(block)
            if not data:
                break
            data += f.readline()  # finish the block's last line
            parsed = _parse_canonical(data)
            if parsed is None or not columns.add(*parsed):
                return None
    return columns


def _count_lines(f, block):
    """Newlines in ``f``, plus one for a last line without one."""
    count, last = 0, b"\n"
    while True:
        data = f.read(block)
        if not data:
            return count + (last != b"\n")
        count += data.count(b"\n")
        last = data[-1:]


class _Columns:
    """The keys and offsets of a file, filled block by block into arrays of the final size.

    Each block's offsets are checked as they arrive (``first_bad``: the first row whose offset
    cannot start a record) and whether the keys still ascend (``ascending``: then none repeats).
    """

    def __init__(self, capacity, rec_size=None):
        self.offsets = np.empty(capacity, np.int64)
        self.keys = None  # only once the keys stop being one ascending run
        self.first, self.n = 0, 0
        self.rec_size = rec_size
        self.first_bad = None
        self.ascending = True

    def add(self, keys, offsets):
        """Append a block's columns; False when the file holds more lines than were counted."""
        m = len(keys)
        if self.n + m > len(self.offsets):
            return False
        if not self.n and m:
            self.first = int(keys[0])
        if self.keys is None and m and not _continues_run(keys, self.first + self.n):
            self.keys = np.empty(len(self.offsets), np.int64)
            self.keys[:self.n] = np.arange(self.first, self.first + self.n)
        if self.keys is not None:
            if self.ascending and m:
                previous = self.keys[self.n - 1] if self.n else keys[0] - 1
                self.ascending = bool(keys[0] > previous and np.all(keys[1:] > keys[:-1]))
            self.keys[self.n:self.n + m] = keys
        self.offsets[self.n:self.n + m] = offsets
        if self.first_bad is None:
            bad = _bad_offsets(offsets, self.rec_size)
            if bad.any():
                self.first_bad = self.n + int(np.argmax(bad))
        self.n += m
        return True

    def key_at(self, row):
        return self.first + row if self.keys is None else int(self.keys[row])

    def index(self, order=None):
        """The ``RecordIndex``; ``order``: the keys' stable argsort when ``_check_parsed`` made one."""
        offsets = self.offsets[:self.n]
        if self.keys is None:
            return RecordIndex.run(self.first, offsets)
        return RecordIndex(self.keys[:self.n], offsets, order)


def _bad_offsets(offsets, rec_size):
    """[M] bool: offsets that cannot start a record (negative, misaligned, past the .rec)."""
    bad = (offsets < 0) | ((offsets & 3) != 0)
    return bad | (offsets >= rec_size) if rec_size is not None else bad


def _continues_run(keys, start):
    """Whether ``keys`` are ``start, start + 1, ...``."""
    return int(keys[0]) == start and (len(keys) == 1 or bool(np.all(np.diff(keys) == 1)))


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
    lines = _count_plain_lines(b)
    if lines is None:
        lines = _count_signed_lines(b)
    if lines is None:
        return None
    values = np.fromstring(data, dtype=np.int64, sep=" ")  # [2 * lines] C parse; tabs and newlines are whitespace
    if len(values) != 2 * lines:
        return None
    return values[0::2].copy(), values[1::2].copy()


def _count_plain_lines(b):
    """Lines of ``b`` if every one is ``DIGITS\tDIGITS\n`` (what writers produce), else None. A few passes."""
    if np.any(b > 57):  # above '9': letters, bytes beyond ASCII
        return None
    separators = np.flatnonzero(b < 48)  # [2 * lines] tab, newline, tab, newline... if plain
    if b[-1] != _NEWLINE:
        separators = np.append(separators, len(b))  # a last line without a newline
    found = b[separators[:-1]] if b[-1] != _NEWLINE else b[separators]
    if len(separators) % 2 or not (np.all(found[0::2] == _TAB) and np.all(found[1::2] == _NEWLINE)):
        return None
    lengths = np.diff(separators) - 1  # [2 * lines - 1] digits of every field but the first
    if not (1 <= separators[0] <= _DIGITS_MAX and np.all(lengths >= 1) and np.all(lengths <= _DIGITS_MAX)):
        return None
    return len(separators) // 2


def _count_signed_lines(b):
    """Lines of ``b`` if every one is canonical with signs or a ``\r`` allowed, else None."""
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
    return len(ends)


def _byte_before(b, ends):
    """[lines] the byte before each line end (0 where the line is empty)."""
    before = np.zeros(len(ends), dtype=np.uint8)
    inside = ends > 0
    before[inside] = b[ends[inside] - 1]
    return before


def _check_parsed(idx_path, columns):
    """The reference parser's per-line checks, vectorised; the first bad line in file order raises.

    Returns the keys' stable argsort when repeats had to be looked for (keys not ascending), so
    that the index is built without sorting them again; else None.
    """
    offsets = columns.offsets[:columns.n]  # [N] file order
    first_bad = columns.n if columns.first_bad is None else columns.first_bad
    order = None
    if not columns.ascending:  # ascending keys cannot repeat
        keys = columns.keys[:columns.n]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        repeats = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if len(repeats):
            first_repeat = int(order[repeats + 1].min())
            if first_repeat <= first_bad:  # a line is checked for a repeated key first
                key = int(keys[first_repeat])
                first = int(order[np.searchsorted(sorted_keys, key)])
                raise RecordIOError(duplicate_message(f"{idx_path}:{first_repeat + 1}", key, int(offsets[first])))
    if first_bad < columns.n:
        check_index_offset(columns.key_at(first_bad), int(offsets[first_bad]), columns.rec_size,
                           f"{idx_path}:{first_bad + 1}")
    return order


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
