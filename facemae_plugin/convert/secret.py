"""The publisher's seed: drawn from the operating system unless given, kept beside the output.

A seeded method's release (FaceMAE, noise, masked) is a function of the source photos, the
checkpoint and the seed. Published, the seed lets anyone holding the sources regenerate the
release byte for byte and so find every source. Without ``--seed`` the seed is drawn here, written
to ``OUT_DIR.secret.json`` (beside the output folder, never inside it, readable by its owner
alone) and read back by a resumed or repeated run; the output's provenance says ``"secret"``.
An explicit ``--seed`` is published as before, for reproducible research runs.
"""
import contextlib
import json
import os
import secrets
import shutil

from ..core.errors import FaceMAEError
from ..core.files import refuse_link, temp_name

SECRET_SUFFIX = ".secret.json"
SEED_BITS = 63  # non-negative int64: a seed torch, numpy and JSON all take as it is


class SecretError(FaceMAEError):
    """A secret file that cannot be read as this module writes it."""


def secret_path(out_dir):
    """``OUT_DIR.secret.json``: the secret of the output folder ``out_dir``."""
    return os.path.abspath(os.fspath(out_dir)).rstrip(os.sep) + SECRET_SUFFIX


def publisher_seed(out_dir, seed=None):
    """``(seed, public)``: ``seed`` itself (published) when given, else the secret of ``out_dir``.

    The secret is read from ``secret_path(out_dir)`` when it exists, or drawn and written there.
    Processes that start at once (the ranks of a sharded conversion) agree: the file appears whole
    under its name by a hard link, which only the first of them makes; the others read it.
    """
    if seed is not None:
        return int(seed), True
    path = secret_path(out_dir)
    refuse_link(path)
    if not os.path.lexists(path):
        _create_secret(path, secrets.randbits(SEED_BITS))
    return read_secret(path), False


@contextlib.contextmanager
def drawn_seed(out_dir, seed=None, work_dirs=(), overwrite=False):
    """``publisher_seed`` for the block that makes ``out_dir``: a secret drawn here goes again when the
    block fails on bad input (``FaceMAEError``, ``OSError``) before ``out_dir`` or any of ``work_dirs`` (where the
    output is made first) exists, so that a refused command leaves nothing behind; once output exists,
    a resume needs the secret and it stays.

    A work folder left by a stopped run was made with a secret; when that secret is gone, a new one
    would not regenerate what is there, so the run is refused, or with ``overwrite`` the work folder
    is removed and the run starts again."""
    path = secret_path(out_dir)
    fresh = seed is None and not os.path.lexists(path)
    if fresh:
        _refuse_orphaned_work(path, work_dirs, overwrite)
    drawn = publisher_seed(out_dir, seed)
    try:
        yield drawn
    except (FaceMAEError, OSError):  # what the command line reports in one line
        if fresh and not any(os.path.lexists(d) for d in (out_dir, *work_dirs)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        raise


def _refuse_orphaned_work(path, work_dirs, overwrite):
    for work in work_dirs:
        refuse_link(work)
        # a secret is written before its work folder: seen in this order, a missing secret is lost, not
        # about to be written by a process starting beside this one (ranks of one torchrun)
        if not os.path.lexists(work) or os.path.lexists(path):
            continue
        if not overwrite:
            raise SecretError(f"the secret of {work} is gone ({path} is missing), so its work cannot be resumed: "
                              "start again with --overwrite")
        shutil.rmtree(work)


def read_secret(path):
    refuse_link(path)
    try:
        with open(path, "rb") as f:
            seed = json.loads(f.read().decode("utf-8"))["seed"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecretError(f"{path}: unreadable secret ({type(exc).__name__}); expected JSON with an integer "
                          "seed, as facemae wrote it") from None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << SEED_BITS:
        raise SecretError(f"{path}: seed {seed!r} is not a {SEED_BITS}-bit non-negative integer")
    return seed


def _create_secret(path, seed):
    """``seed`` at ``path`` unless another process got there first: mode 0600 from its creation."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_name(path)
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(json.dumps({"seed": int(seed), "note": "keep private: with the checkpoint and the source "
                                "photos this seed regenerates the release"}).encode())
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
