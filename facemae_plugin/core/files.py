"""Files the plugin writes: atomically, never through a link, never over an input.

One home for writing: ``atomic_path`` / ``atomic_file`` (a temporary name in the target's folder,
fsynced, renamed into place, removed on any failure), ``write_bytes`` / ``write_json`` on top,
``sha256_file``, the checks every verb makes before it writes (``refuse_existing``,
``refuse_overlap``) and ``OutputLock``, which keeps a second process out of an output folder.
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid

from .errors import OutputError

LOCK_NAME = ".facemae.lock"
TMP_MARK = ".tmp-"
PRIVATE_SUFFIX = ".private"


def private_path(out_dir):
    """``OUT_DIR.private``: beside an output a user may publish, where what shows its originals is kept."""
    return os.path.abspath(os.fspath(out_dir)).rstrip(os.sep) + PRIVATE_SUFFIX


def make_private_dir(path):
    """``path`` as a folder only its owner can open (mode 0700, also when it existed); returns it."""
    refuse_link(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def temp_name(path):
    """A fresh name beside ``path`` (same folder, so the rename is atomic)."""
    return f"{path}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def refuse_link(path):
    """Refuse to write at ``path`` when it is a symbolic link: it could point anywhere."""
    if os.path.islink(path):
        raise OutputError(f"{path}: is a symbolic link; refusing to write through it")


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """A temporary path beside ``path`` (ending in ``suffix``) that becomes ``path`` when the block
    ends without an exception; on any failure it is removed. Its folder is created if needed."""
    path = os.fspath(path)
    refuse_link(path)
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory, expected a file name to write")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path) + suffix
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Open a temporary file that becomes ``path`` when the block ends without an exception."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, newline=None if "b" in mode else "\n") as f:
            yield f


def write_bytes(path, data):
    with atomic_file(path, "wb") as f:
        f.write(data)


def json_text(value, sort_keys=True, default=None):
    return json.dumps(value, indent=2, sort_keys=sort_keys, default=default) + "\n"


def write_json(path, value, sort_keys=True, default=None):
    """``value`` as indented JSON, atomically (creating its folder); returns the path.

    The text is made before any file is opened, so a value that cannot be encoded leaves nothing behind.
    """
    path = os.fspath(path)
    write_bytes(path, json_text(value, sort_keys, default).encode())
    return path


def sha256_file(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_existing(path, overwrite, what="output"):
    """Refuse an existing ``path`` unless ``overwrite``; links are refused either way."""
    path = os.fspath(path)
    refuse_link(path)
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{path}: {what} exists; pass --overwrite to replace it")


def _real(path):
    return os.path.realpath(os.fspath(path))


def _inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def refuse_overlap(output, inputs, output_is_dir=False, walked=()):
    """Refuse an output that is one of ``inputs`` or ``walked``, or holds one (a folder output).

    An output may lie inside an input folder (``convert DS DS/released``), since only the files
    named in it are read; not inside a ``walked`` folder, which is read whole, so the output
    would become input. Paths are compared after resolving links, so ``DS/train.rec`` as the
    input and ``DS`` as the output, or a link to the input, are caught.
    """
    out = _real(output)
    for given in [*inputs, *walked]:
        real = _real(given)
        if out == real or (output_is_dir and _inside(real, out)):
            raise OutputError(f"{output}: is (or overlaps) the input {given}; choose another output")
    for given in walked:
        if _inside(out, _real(given)):
            raise OutputError(f"{output}: lies inside the input folder {given}, which is read whole; "
                              "choose another output")


def replace_dir(tmp_dir, final_dir):
    """Move a finished folder ``tmp_dir`` to ``final_dir``, removing an old ``final_dir`` first."""
    refuse_link(final_dir)
    if os.path.lexists(final_dir):
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


class OutputLock:
    """An exclusive lock on an output folder, held while one process writes there.

    ``flock`` on ``FOLDER/.facemae.lock``: released by the kernel when the process dies, so a
    killed run never leaves a stale lock. The holder writes its pid into the file so that a second
    process can say who holds it, and empties it again when done.
    """

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd = None

    def __enter__(self):
        refuse_link(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputError(f"{self.folder}: another facemae process (pid {self._holder()}) is writing "
                              f"here; wait for it or choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self):
        try:
            with open(self.path) as f:
                return f.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def __exit__(self, *exc):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no holder; the file stays (removing it would race a new holder)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
