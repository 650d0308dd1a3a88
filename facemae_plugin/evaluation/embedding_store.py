"""Embeddings on disk: unit rows ``[N, D]`` in ``.npy`` files, written a batch at a time, read as memory maps.

An audit of a million faces holds two million 512-d embeddings (4 GiB in float32); kept in
memory they would set the audit's size limit. Rows are written as they are computed and read
back through the page cache, so resident memory stays at a batch plus what the search holds.
``float16`` halves the files; ``float32`` keeps the exact search's figures bit for bit.
"""
import os
import shutil
import tempfile

import numpy as np

from ..core.errors import UsageError

EMBEDDING_DTYPES = ("float32", "float16")


class EmbeddingRows:
    """Rows appended in order into ``path`` (a ``.npy`` of ``rows`` x ``dim`` once the first batch gives ``dim``)."""

    def __init__(self, path, rows, dtype="float32"):
        if dtype not in EMBEDDING_DTYPES:
            raise UsageError(f"embedding dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {dtype!r}")
        self.path, self.rows, self.dtype = os.fspath(path), int(rows), np.dtype(dtype)
        self.array = None  # the memory map, made by the first append
        self.filled = 0

    def append(self, batch):
        """Write ``batch`` [B, D] (any float dtype) after the rows written so far."""
        batch = np.asarray(batch)
        if self.array is None:
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                   shape=(self.rows, batch.shape[1]))
        self.array[self.filled:self.filled + len(batch)] = batch
        self.filled += len(batch)

    def finish(self):
        """The filled rows, read-only and memory-mapped ([rows, D]; [0, 0] when there were none)."""
        if self.filled != self.rows:
            raise RuntimeError(f"{self.path}: {self.filled} of {self.rows} rows written")
        if self.array is None:
            return np.zeros((0, 0), self.dtype)
        self.array.flush()
        del self.array
        self.array = None
        return np.load(self.path, mmap_mode="c")  # copy-on-write: torch wraps it without a copy or a warning


class ScratchFolder:
    """A hidden folder inside ``parent`` for an audit's embeddings, removed with its files on exit."""

    def __init__(self, parent):
        self.parent = os.fspath(parent)
        self.path = None

    def __enter__(self):
        os.makedirs(self.parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=".embeddings-", dir=self.parent)
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False
