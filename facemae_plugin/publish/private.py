"""What a release publishes and what it keeps private.

A release folder is what its user uploads, so it holds only what may be published: the released
shard, its cards and figures computed from released images or aggregates (``PUBLISHED``).
Everything that shows or encodes an original photo (sample sheets beside the originals, leak
examples, per-record rankings, embeddings, the attackers' galleries and training data) is made in
``OUT_DIR.private`` beside it, a folder readable by its owner alone, like the secret seed, and
named only on the console. Before the card is written the staging folder is swept down to
``PUBLISHED``, so no lock, scratch or stale file of a stopped run is ever renamed into ``OUT_DIR``.
"""
import contextlib
import os
import shutil

from ..core.files import make_private_dir
from ..formats.shard import IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, REC_NAME

FIGURES_DIR = "figures"  # inside the release: figures of released images and aggregates only
CARD_JSON = "RELEASE.json"
CARD_MD = "RELEASE.md"
SHARD_FILES = (REC_NAME, IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME)
HUB_DATA_DIR = "data"  # with --hub (``publish.hub``): the Parquet files, the Hub's card and the Croissant file
HUB_CARD = "README.md"
CROISSANT_JSON = "croissant.json"
HUB_FILES = (HUB_DATA_DIR, HUB_CARD, CROISSANT_JSON)
PUBLISHED = SHARD_FILES + (FIGURES_DIR, CARD_JSON, CARD_MD) + HUB_FILES


def fresh_private_dir(path):
    """``make_private_dir`` emptied of what an earlier run left (``path`` itself kept, so its mode holds)."""
    make_private_dir(path)
    for name in os.listdir(path):
        remove_entry(os.path.join(path, name))
    return path


@contextlib.contextmanager
def private_workspace(path, work_dir):
    """``fresh_private_dir(path)`` for the block that makes a release in ``work_dir``: when the block
    fails on bad input (``FaceMAEError``) before ``work_dir`` exists and ``path`` was made here, ``path``
    goes again, so a refused command leaves nothing behind."""
    from ..core.errors import FaceMAEError

    created = not os.path.lexists(path)
    fresh_private_dir(path)
    try:
        yield path
    except FaceMAEError:
        if created and not os.path.lexists(work_dir):
            shutil.rmtree(path, ignore_errors=True)
        raise


def sweep(folder, keep=PUBLISHED):
    """Remove every entry of ``folder`` whose name is not in ``keep``; returns the names removed."""
    removed = []
    for name in sorted(os.listdir(folder)):
        if name not in keep:
            remove_entry(os.path.join(folder, name))
            removed.append(name)
    return removed


def remove_entry(path):
    """A file, link or folder at ``path`` gone (a link itself, never what it points to)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
