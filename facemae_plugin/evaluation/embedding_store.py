"""Embeddings on disk: unit rows ``[N, D]`` in ``.npy`` files, written a batch at a time, read as memory maps.

An audit of a million faces holds two million 512-d embeddings (4 GiB in float32); kept in
memory they would set the audit's size limit. Rows are written as they are computed and read
back through the page cache, so resident memory stays at a batch plus what the search holds.
``float16`` halves the files; ``float32`` keeps the exact search's figures bit for bit.
"""
import hashlib
import json
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


class EmbeddingCache:
    """Embeddings of whole shards by one model, kept in ``folder`` for the next audit that needs them.

    A protocol audits many releases of one original with one attacker, and asks each time about the
    same training set: the original's and the training set's embeddings are the same every time.
    An entry is named by everything that decides its bytes: the shard's ``.idx`` sha256, the model
    file's sha256, the dtype, the precision, the runtime and the batch size. Its ``.json`` is written
    last, so an entry cut short is computed again.
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)

    def key(self, idx_sha256, model_sha256, dtype, precision, runtime, batch_size):
        digest = hashlib.sha256(json.dumps([idx_sha256, model_sha256, dtype, precision, runtime,
                                            batch_size]).encode())
        return digest.hexdigest()[:24]

    def rows_path(self, key):
        os.makedirs(self.folder, exist_ok=True)
        return os.path.join(self.folder, f"{key}.npy")

    def lookup(self, key):
        """``(rows [N, D] memory map, labels [N] int64)`` of a finished entry, or None."""
        if not os.path.isfile(os.path.join(self.folder, f"{key}.done.json")):
            return None
        try:
            return (np.load(self.rows_path(key), mmap_mode="c"),
                    np.load(os.path.join(self.folder, f"{key}.labels.npy")))
        except (OSError, ValueError):
            return None

    def commit(self, key, labels):
        """Mark the rows written at ``rows_path(key)`` finished, with their ``labels`` [N]."""
        from ..core.files import atomic_path, write_json

        with atomic_path(os.path.join(self.folder, f"{key}.labels.npy"), suffix=".npy") as tmp:
            np.save(tmp, np.asarray(labels, np.int64))
        write_json(os.path.join(self.folder, f"{key}.done.json"), {"rows": int(len(labels))})
