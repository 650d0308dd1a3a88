"""The files of a conversion's output folder: which are ours, how a finished one looks, how to clear it.

``OUT/train.rec``, ``train.idx``, ``property`` and ``facemae_provenance.json`` are the release;
``OUT/shards/`` holds the shards of a conversion until ``merge`` joins them; ``.facemae.lock`` is
the lock a running job holds. Anything else in OUT is the user's, and is never removed.
"""
import glob
import json
import os

from ..core.errors import FaceMAEError
from ..core.files import LOCK_NAME
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
