"""The files of a conversion's output folder: which are ours, how a finished one looks, how to clear it.

``OUT/train.rec``, ``train.idx``, ``property`` and ``facemae_provenance.json`` are the release;
``OUT/shards/`` holds the shards of a conversion until ``merge`` joins them; ``.facemae.lock`` is
the lock a running job holds. Anything else in OUT is the user's, and is never removed.
"""
import glob
import json
import os

from ..core.errors import FaceMAEError
from ..core.files import LOCK_NAME, json_text, sha256_file, write_bytes
from ..formats.shard import IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, REC_NAME

SHARDS_DIR = "shards"


class ConversionError(FaceMAEError):
    """A conversion that cannot run or cannot be merged; the message names the file and why."""


def remove_files(*patterns):
    for pattern in patterns:
        for path in glob.glob(glob.escape(os.path.dirname(pattern)) + "/" + os.path.basename(pattern)):
            os.remove(path)


def read_json_or_none(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def final_exists(out_dir):
    return os.path.isfile(os.path.join(out_dir, REC_NAME))


def remove_final(out_dir):
    for name in (REC_NAME, IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME):
        path = os.path.join(out_dir, name)
        remove_files(path, path + ".tmp-*")


def is_ours(name):
    base = name.split(".tmp-")[0]
    return base in (REC_NAME, IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, SHARDS_DIR, LOCK_NAME)


def differences(old, new):
    if not isinstance(old, dict):
        return "an unreadable marker"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "nothing visible"


class ShardFolder:
    """``OUT/shards/``: the files of shard I of N, their done markers, and clearing what is stale.

    A marker (``shard-IofN.done.json``) is written after its shard's files, with the conversion's
    fingerprint and the size and sha256 of each file; a shard is done only when its marker has
    this conversion's fingerprint and its files the recorded sizes (``merge`` checks the hashes).
    """

    def __init__(self, folder, num_shards, fingerprint):
        self.folder = folder
        self.num_shards = num_shards
        self.fingerprint = fingerprint

    def files(self, i):
        stem = os.path.join(self.folder, f"shard-{i}of{self.num_shards}")
        return stem + ".rec", stem + ".idx", stem + ".done.json"

    def tail_files(self):
        stem = os.path.join(self.folder, f"tail-of{self.num_shards}")
        return stem + ".rec", stem + ".idx"

    def meta_files(self):
        return os.path.join(self.folder, PROPERTY_NAME), os.path.join(self.folder, PROVENANCE_NAME)

    def remove(self, i):
        """Shard i's files, marker and temporary files (and the tail's, for the last shard)."""
        remove_files(*self._paths(i))
        self.remove_temporary(i)

    def remove_temporary(self, i):
        """Shard i's temporary files (and the tail's, for the last shard): never a finished file."""
        remove_files(*(path + ".tmp-*" for path in self._paths(i)))

    def _paths(self, i):
        return (*self.files(i), *((*self.tail_files(), *self.meta_files()) if i == self.num_shards - 1 else ()))

    def done(self, i):
        rec, idx, marker_path = self.files(i)
        marker = read_json_or_none(marker_path)
        if marker is None or marker.get("fingerprint") != self.fingerprint:
            return False
        return all(os.path.isfile(p) and os.path.getsize(p) == marker["bytes"][name]
                   for p, name in ((rec, "rec"), (idx, "idx")))

    def mark_done(self, i, images, records):
        rec, idx, marker = self.files(i)
        write_bytes(marker, json_text({
            "fingerprint": self.fingerprint, "shard": i, "images": images, "records": records,
            "bytes": {"rec": os.path.getsize(rec), "idx": os.path.getsize(idx)},
            "sha256": {"rec": sha256_file(rec), "idx": sha256_file(idx)}}).encode())

    def clear_others(self, overwrite):
        """Shards of another conversion (other settings, input or shard count) block this one."""
        for marker_path in sorted(glob.glob(os.path.join(glob.escape(self.folder), "shard-*.done.json"))):
            marker = read_json_or_none(marker_path)
            if marker is not None and marker.get("fingerprint") == self.fingerprint:
                continue
            if not overwrite:
                diff = differences(marker.get("fingerprint") if marker else None, self.fingerprint)
                raise ConversionError(f"{marker_path}: a shard of a different conversion (differs in "
                                      f"{diff}); pass --overwrite to discard it")
            stem = marker_path[: -len(".done.json")]
            remove_files(*(stem + ext + tmp for ext in (".rec", ".idx", ".done.json") for tmp in ("", ".tmp-*")))
