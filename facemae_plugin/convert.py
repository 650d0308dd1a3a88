"""Convert an InsightFace shard into a released one: every image replaced by its privatized version.

Pipeline, streaming, one process per shard:

    read + decode (worker processes) -> batch -> privatizer (this process; CPU or GPU)
        -> JPEG encode + pack (worker processes) -> write (this process, in order)

Batches ahead are decoded and batches behind are encoded in a process pool while the model works
on the current one, so a conversion runs about as fast as its slowest stage. At most
``2 * ahead`` batches are in flight, so memory stays flat whatever the dataset size.

Cheap per-image privatizers (identity, blur, pixelate, noise, masked: pure functions of image, key
and seed) have a torch-free twin (``Privatizer.worker_op()``, module ``pixelops``) with the same output
bytes; then each batch is a single worker task, read -> decode -> privatize -> encode, and this
process only writes. No pixels cross processes and no model thread competes with the codecs.
Model stages (FaceMAE) run here, with all of torch's threads: the codec work beside a model is a
few percent of its time (measured on 2 cores: capping torch at the cores the workers leave made
FaceMAE tiny 92 img/s instead of 144).

What is kept (FORMATS.md): the layout (A or B), every image key, each image's IRHeader bytes
(flag, scalar or array label, id, id2), the header record (key 0), the identity records and the
``property`` file. Only image payloads change (JPEG, quality 95 by default).

Keys with k > 1 reconstructions per image (the image at position p of the input's image keys,
reconstruction j; every copy keeps its source's IRHeader, so ``id`` still names the source record):

* layout A: image key ``1 + p*k + j``, so an identity's images stay contiguous; identity
  record i moves to ``a' + i`` with ``a' = 1 + (a-1)*k`` and range ``[1 + (s-1)*k, 1 + (e-1)*k)``;
  the header becomes ``[a', a' + identities)``. With k = 1 every key is unchanged.
* layout B: j = 0 keeps the source key; j >= 1 gets ``max_key + 1 + p*(k-1) + (j-1)``.

Shards: the image keys are cut into ``num_shards`` contiguous ranges *on batch boundaries*, so a
record is always computed in the same batch whatever the shard count, and 1 shard or 4 give the
same bytes. Shard I of N goes to ``OUT/shards/shard-IofN.rec/.idx`` (atomically) and then its
marker ``shard-IofN.done.json``; the last shard also writes the tail (identity and header records,
``property``, provenance). ``merge`` copies the framed shard bytes into ``OUT/train.rec`` and
rewrites the offsets of ``OUT/train.idx`` (no re-encoding); ``train.rec`` is renamed into place
last, so it exists only when the output is whole. A rerun skips the shards already marked done.
"""
import contextlib
import functools
import glob
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

# No torch at module level: the decode/encode worker processes import this module and need only
# numpy and OpenCV, so they start in well under a second. torch is imported where it is used.
from . import __version__
from .errors import FaceMAEError
from .files import LOCK_NAME, OutputLock, json_text, refuse_overlap, sha256_file, temp_name, write_bytes
from .recordio import IRHeader, RecordWriter, encode_image, pack, read_index, unpack
from .shard import IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, REC_NAME, FaceShard, scalar_label

SHARDS_DIR = "shards"
FORMAT_VERSION = 1
MAX_FLOAT32_KEY = 1 << 24  # identity ranges are float32 labels: exact integers only up to 2**24


class ConversionError(FaceMAEError):
    """A conversion that cannot run or cannot be merged; the message names the file and why."""


# --------------------------------------------------------------------------- keys and shards


class KeyPlan:
    """Input image keys and the output key of reconstruction j of the image at position p."""

    def __init__(self, shard, k):
        self.layout = shard.layout
        self.image_keys = shard.image_keys  # [N] int64, the order images are converted in
        self.k = int(k)
        self.max_key = max(shard.reader.keys) if shard.reader.keys else -1

    def __len__(self):
        return len(self.image_keys)

    def output_key(self, p, j):
        if self.layout == "A":
            return 1 + p * self.k + j  # image keys are 1..a-1, so the source key is p + 1
        if j == 0:
            return int(self.image_keys[p])
        return self.max_key + 1 + p * (self.k - 1) + (j - 1)

    def output_keys(self, first, count):
        """Keys of the records written for positions first..first+count-1, record-major."""
        return [self.output_key(p, j) for p in range(first, first + count) for j in range(self.k)]


def shard_range(num_images, batch_size, num_shards, shard):
    """``[start, end)`` image positions of shard ``shard`` of ``num_shards``, on batch boundaries."""
    num_batches = -(-num_images // batch_size)
    first = shard * num_batches // num_shards
    last = (shard + 1) * num_batches // num_shards
    return first * batch_size, min(last * batch_size, num_images)


# --------------------------------------------------------------------------- worker side


_WORKER_SHARD = None  # the input shard, opened once per worker process


_PARENT_POLL_S = 1.0


def _init_worker(in_dir, converter_pid=None):
    global _WORKER_SHARD
    import cv2

    cv2.setNumThreads(1)  # one JPEG per task; the pool gives the parallelism
    _WORKER_SHARD = FaceShard(in_dir)
    if converter_pid is not None:
        threading.Thread(target=_exit_when_gone, args=(converter_pid,), daemon=True).start()


def _exit_when_gone(pid):
    """Exit this worker once the converter process `pid` is gone.

    A worker's parent is the forkserver, not the converter, and it holds the write end of its own task
    queue, so nothing else wakes it when the converter is killed outright: it would wait forever.
    """
    while True:
        time.sleep(_PARENT_POLL_S)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # exists, owned by someone else: cannot be our converter's pid reused yet


def _decode_batch(keys):
    """Keys -> (IRHeader bytes of each record [B], RGB uint8 [B, H, W, 3])."""
    shard = _WORKER_SHARD
    prefixes, images = [], []
    for key in keys:
        where = f"{shard.rec_path} key {key}"
        record = shard.reader.read_idx(key)
        header, payload = unpack(record, where)
        scalar_label(header.label, where)  # an image record must carry an identity label
        prefixes.append(record[: len(record) - len(payload)])  # header + float32 label array, verbatim
        images.append(shard.decode(key, payload))
    return prefixes, np.stack(images)


def _encode_batch(prefixes, rgb, quality):
    """IRHeader bytes [M] and RGB uint8 [M, H, W, 3] -> packed records [M] (BGR JPEG like pack_img)."""
    return [prefix + encode_image(np.ascontiguousarray(image[:, :, ::-1]), quality)
            for prefix, image in zip(prefixes, rgb)]


def _convert_batch(keys, op, k, quality):
    """Worker: read, decode, privatize with a torch-free ``pixelops`` op, encode -> records [B * k]."""
    prefixes, rgb = _decode_batch(keys)
    out_prefixes = [prefix for prefix in prefixes for _ in range(k)]
    return _encode_batch(out_prefixes, op(rgb, keys), quality)


class _InlineExecutor:
    """``workers=0``: every task runs in this process at submit time (debugging, tiny inputs)."""

    def __init__(self, in_dir):
        _init_worker(in_dir)

    def submit(self, fn, *args):
        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def _make_executor(in_dir, workers):
    if workers == 0:
        return _InlineExecutor(in_dir)
    # forkserver: workers start from a clean process, never a fork of one running torch/OpenMP threads
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    context = mp.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(in_dir, os.getpid()))


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers():
    return max(1, _cores() - 1)  # one core stays with the model process


# --------------------------------------------------------------------------- the pipeline


def privatize_batch(privatizer, rgb, keys):
    """RGB uint8 [B, H, W, 3] -> RGB uint8 [B * k, H, W, 3], record-major."""
    import torch

    from .data import denormalise

    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # data.normalise
    out = privatizer.variants(images.contiguous(), keys)  # [B, k, 3, H, W]
    return denormalise(out.reshape(-1, *out.shape[2:]))


def _write_oldest(encoding, writer, bar, k):
    """Wait for the oldest batch's packed records and write them under their output keys."""
    keys, future = encoding.popleft()
    for key, payload in zip(keys, future.result()):
        writer.write_idx(key, payload)
    bar.update(len(keys) // k)


def _convert_range(executor, privatizer, plan, start, end, batch_size, quality, writer, ahead, bar):
    """Convert image positions [start, end) into ``writer``, keeping at most 2*ahead batches in flight."""
    firsts = iter(range(start, end, batch_size))
    decoding = deque()  # (first position, keys, future) in order
    encoding = deque()  # (output keys, future) in order

    def submit_decode():
        first = next(firsts, None)
        if first is not None:
            keys = plan.image_keys[first:min(first + batch_size, end)].tolist()
            decoding.append((first, keys, executor.submit(_decode_batch, keys)))

    for _ in range(ahead):
        submit_decode()
    while decoding:
        first, keys, future = decoding.popleft()
        submit_decode()
        prefixes, rgb = future.result()
        out_rgb = privatize_batch(privatizer, rgb, keys)
        out_prefixes = [prefix for prefix in prefixes for _ in range(plan.k)]
        encoding.append((plan.output_keys(first, len(keys)),
                         executor.submit(_encode_batch, out_prefixes, out_rgb, quality)))
        while encoding and (len(encoding) > ahead or encoding[0][1].done()):
            _write_oldest(encoding, writer, bar, plan.k)
        if (first - start) // batch_size % TRIM_EVERY == TRIM_EVERY - 1:
            _release_free_memory()
    while encoding:
        _write_oldest(encoding, writer, bar, plan.k)


TRIM_EVERY = 8  # batches between heap trims: each costs ~20 ms, 5% of a FaceMAE tiny batch on 2 cores


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on other C libraries (musl, macOS)."""
    import ctypes

    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def _release_free_memory():
    """Hand the heap pages freed by the batches since the last trim back to the OS.

    Each batch allocates and frees a few MB-sized buffers (pixels, float tensors, pickles). glibc
    serves them from its heap once its dynamic mmap threshold has risen past their size, and the
    freed chunks fragment; without this the converter's RSS crept up with the number of batches
    (copy through this process, 2 workers: peak 867 / 893-1077 MB at 1000 / 4000 images).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _convert_range_in_workers(executor, op, plan, start, end, batch_size, quality, writer, ahead, bar):
    """Like ``_convert_range`` for a privatizer with a worker op: each batch is one worker task
    (read, decode, privatize, encode), so no pixels cross processes and this process only writes."""
    pending = deque()  # (output keys, future) in order
    for first in range(start, end, batch_size):
        keys = plan.image_keys[first:min(first + batch_size, end)].tolist()
        pending.append((plan.output_keys(first, len(keys)),
                        executor.submit(_convert_batch, keys, op, plan.k, quality)))
        if len(pending) >= 2 * ahead:
            _write_oldest(pending, writer, bar, plan.k)
    while pending:
        _write_oldest(pending, writer, bar, plan.k)


# --------------------------------------------------------------------------- small file helpers


def _remove(*patterns):
    for pattern in patterns:
        for path in glob.glob(glob.escape(os.path.dirname(pattern)) + "/" + os.path.basename(pattern)):
            os.remove(path)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- one conversion job


class Conversion:
    """A conversion of ``in_dir`` into ``out_dir`` with one privatizer and fixed settings."""

    def __init__(self, in_dir, out_dir, privatizer, quality=95, batch_size=64, workers=None,
                 num_shards=1, progress=True):
        _check_settings(quality, batch_size, workers, num_shards)
        self.in_dir = os.path.abspath(os.fspath(in_dir))
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.shard = FaceShard(self.in_dir)
        self.privatizer = privatizer
        self.k = privatizer.k
        self.quality = int(quality)
        self.batch_size = int(batch_size)
        self.workers = default_workers() if workers is None else int(workers)
        self.num_shards = int(num_shards)
        self.progress = progress
        self.plan = KeyPlan(self.shard, self.k)
        self._check_input()
        # cheap per-image privatizers (pure functions of image, key, seed) run in the decode workers
        # as torch-free pixelops with the same bytes; model stages (FaceMAE) have none and run here
        worker_op = getattr(privatizer, "worker_op", None)
        self.worker_op = worker_op() if worker_op is not None else None
        self.shards_dir = os.path.join(self.out_dir, SHARDS_DIR)
        self.idx_sha256 = sha256_file(self.shard.idx_path)
        self.fingerprint = self._fingerprint()

    def _check_input(self):
        check_size = getattr(self.privatizer, "check_image_size", None)
        if check_size is not None:
            check_size(tuple(self.shard.image_size))
        model = getattr(self.privatizer, "model", None)
        if model is not None and tuple(self.shard.image_size) != (model.img_size, model.img_size):
            size = self.shard.image_size
            raise ConversionError(f"{self.in_dir}: images are {size[1]}x{size[0]} (property), the "
                                  f"FaceMAE model expects {model.img_size}x{model.img_size}")
        if self.shard.layout == "A":
            last_key = self.plan.output_key(len(self.plan), 0) + len(self.shard.identity_keys)
            if last_key > MAX_FLOAT32_KEY:
                raise ConversionError(f"{self.in_dir}: {len(self.plan)} images x k={self.k} need keys up to "
                                      f"{last_key}, past 2**24, where float32 range labels stop being exact")

    def _fingerprint(self):
        """Everything that decides the bytes of a shard; shards of different fingerprints never mix.

        The input is named by its ``.idx`` hash and its ``.rec`` size and modification time (hashing
        a multi-GB ``.rec`` at every start would cost minutes): a ``.rec`` edited in place changes
        its modification time, so a resumed run refuses shards made from the old bytes.
        """
        stat = os.stat(self.shard.rec_path)
        return {
            "format": FORMAT_VERSION,
            "facemae_plugin": __version__,
            "input": {"dir": self.in_dir, "rec_bytes": stat.st_size, "rec_mtime_ns": stat.st_mtime_ns,
                      "idx_sha256": self.idx_sha256},
            "privatizer": self.privatizer.provenance(),
            "quality": self.quality,
            "batch_size": self.batch_size,
            "num_shards": self.num_shards,
        }

    # ---------------------------------------------------------------- output directory

    def lock(self):
        """Hold ``OUT_DIR`` against other conversions and merges (created if needed, never over the input)."""
        refuse_overlap(self.out_dir, [self.shard.directory, self.shard.rec_path, self.shard.idx_path],
                       output_is_dir=True)
        os.makedirs(self.out_dir, exist_ok=True)
        return OutputLock(self.out_dir)

    def prepare(self, overwrite=False, own_shards=None):
        """Refuse or clear existing output; ``own_shards`` are the shards ``overwrite`` may discard."""
        out = self.out_dir
        shard = self.shard
        refuse_overlap(out, [shard.directory, shard.rec_path, shard.idx_path], output_is_dir=True)
        os.makedirs(out, exist_ok=True)
        if _final_exists(out) and not overwrite:
            raise ConversionError(f"{out}: already holds a converted dataset ({REC_NAME}); "
                                  f"pass --overwrite to replace it")
        _remove_final(out)  # or the leftovers of a merge killed before train.rec was renamed in
        foreign = sorted(name for name in os.listdir(out) if not _is_ours(name))
        if foreign and not overwrite:
            raise ConversionError(f"{out}: holds other files ({', '.join(foreign[:3])}); expected a new or "
                                  f"empty directory, or pass --overwrite")
        os.makedirs(self.shards_dir, exist_ok=True)
        self._clear_other_shards(overwrite)
        if overwrite:
            for i in (range(self.num_shards) if own_shards is None else own_shards):
                self._remove_shard(i)

    def _clear_other_shards(self, overwrite):
        """Shards of another conversion (other settings, input or shard count) block this one."""
        for marker_path in sorted(glob.glob(os.path.join(glob.escape(self.shards_dir), "shard-*.done.json"))):
            marker = _read_json(marker_path)
            if marker is not None and marker.get("fingerprint") == self.fingerprint:
                continue
            if not overwrite:
                diff = _differences(marker.get("fingerprint") if marker else None, self.fingerprint)
                raise ConversionError(f"{marker_path}: a shard of a different conversion (differs in "
                                      f"{diff}); pass --overwrite to discard it")
            stem = marker_path[: -len(".done.json")]
            _remove(*(stem + ext + tmp for ext in (".rec", ".idx", ".done.json") for tmp in ("", ".tmp-*")))

    def _files(self, i):
        stem = os.path.join(self.shards_dir, f"shard-{i}of{self.num_shards}")
        return stem + ".rec", stem + ".idx", stem + ".done.json"

    def _tail_files(self):
        stem = os.path.join(self.shards_dir, f"tail-of{self.num_shards}")
        return stem + ".rec", stem + ".idx"

    def _remove_shard(self, i):
        rec, idx, marker = self._files(i)
        _remove(marker, marker + ".tmp-*", rec, idx, rec + ".tmp-*", idx + ".tmp-*")
        if i == self.num_shards - 1:
            for path in (*self._tail_files(), *self._meta_files()):
                _remove(path, path + ".tmp-*")

    def _meta_files(self):
        return (os.path.join(self.shards_dir, PROPERTY_NAME), os.path.join(self.shards_dir, PROVENANCE_NAME))

    def shard_done(self, i):
        rec, idx, marker_path = self._files(i)
        marker = _read_json(marker_path)
        if marker is None or marker.get("fingerprint") != self.fingerprint:
            return False
        return all(os.path.isfile(p) and os.path.getsize(p) == marker["bytes"][name]
                   for p, name in ((rec, "rec"), (idx, "idx")))

    # ---------------------------------------------------------------- running shards

    def run_shards(self, indices):
        """Convert each unfinished shard in ``indices``; returns (ran, skipped) index lists."""
        todo = [i for i in indices if not self.shard_done(i)]
        skipped = [i for i in indices if i not in todo]
        from tqdm import tqdm

        bar = tqdm(total=self.count(todo), desc="convert", unit="img", disable=not self.progress, smoothing=0.1)
        executor = _make_executor(self.in_dir, self.workers) if todo else None
        try:
            for i in todo:
                self._run_shard(i, executor, bar)
        except BaseException:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        if executor is not None:
            executor.shutdown()
        return todo, skipped

    def range(self, i):
        return shard_range(len(self.plan), self.batch_size, self.num_shards, i)

    def count(self, indices):
        """Images in the shards ``indices``."""
        return sum(end - start for start, end in map(self.range, indices))

    def _run_shard(self, i, executor, bar):
        self._remove_shard(i)  # leftovers of a killed run: temp files, a marker of an unfinished shard
        rec, idx, marker = self._files(i)
        start, end = self.range(i)
        ahead = max(2, 2 * self.workers)
        with RecordWriter(rec, idx) as writer:
            if self.worker_op is not None:
                _convert_range_in_workers(executor, self.worker_op, self.plan, start, end, self.batch_size,
                                          self.quality, writer, ahead, bar)
            else:
                _convert_range(executor, self.privatizer, self.plan, start, end, self.batch_size, self.quality,
                               writer, ahead, bar)
        if i == self.num_shards - 1:
            self._write_tail()
        sizes = {"rec": os.path.getsize(rec), "idx": os.path.getsize(idx)}
        hashes = {"rec": sha256_file(rec), "idx": sha256_file(idx)}
        write_bytes(marker, json_text({"fingerprint": self.fingerprint, "shard": i, "images": end - start,
                                       "records": (end - start) * self.k, "bytes": sizes,
                                       "sha256": hashes}).encode())

    def _write_tail(self):
        """Identity and header records, ``property`` and provenance: everything but the images."""
        rec, idx = self._tail_files()
        with RecordWriter(rec, idx) as writer:
            for key, record in tail_records(self.shard, self.k):
                writer.write_idx(key, record)
        property_path, provenance_path = self._meta_files()
        source_property = os.path.join(self.shard.directory, PROPERTY_NAME)
        if os.path.isfile(source_property):
            with open(source_property, "rb") as f:
                write_bytes(property_path, f.read())
        write_bytes(provenance_path, json_text(self.provenance()).encode())

    def provenance(self):
        """``facemae_provenance.json``: what made the release (no shard count, workers or device)."""
        return {
            "facemae_plugin": __version__,
            "source": {"dir": self.in_dir, "layout": self.shard.layout, "images": len(self.plan),
                       "identities": len(self.shard.identity_keys), "idx_sha256": self.idx_sha256},
            "privatizer": self.privatizer.provenance(),
            "k": self.k,
            "jpeg_quality": self.quality,
            "batch_size": self.batch_size,
            "released": {"images": len(self.plan) * self.k, "key_scheme": KEY_SCHEME[self.shard.layout]},
        }


KEY_SCHEME = {
    "A": "image p (0-based among keys 1..a-1), reconstruction j -> key 1 + p*k + j; identity i -> "
         "1 + (a-1)*k + i with range [1 + (s-1)*k, 1 + (e-1)*k); header [1 + (a-1)*k, that + identities)",
    "B": "reconstruction 0 keeps the source key; reconstruction j >= 1 of image p (idx order) -> "
         "max_key + 1 + p*(k-1) + (j-1)",
}


def tail_records(shard, k):
    """``(key, record)`` of layout A's identity records then header record, remapped for k copies."""
    if shard.layout != "A":
        return []
    first_identity, end = shard.header_range
    new_first = 1 + (first_identity - 1) * k
    records = []
    ranges = shard.identity_ranges() if k > 1 else {}
    for i, key in enumerate(shard.identity_keys.tolist()):
        record = shard.reader.read_idx(key)
        if k > 1:
            header, payload = unpack(record, f"{shard.rec_path} key {key}")
            start, stop = ranges[i]
            record = pack(IRHeader(0, [1 + (start - 1) * k, 1 + (stop - 1) * k], header.id, header.id2), payload)
        records.append((new_first + i if k > 1 else key, record))
    record = shard.reader.read_idx(0)
    if k > 1:
        header, payload = unpack(record, f"{shard.rec_path} key 0")
        record = pack(IRHeader(0, [new_first, new_first + end - first_identity], header.id, header.id2), payload)
    records.append((0, record))
    return records


# --------------------------------------------------------------------------- merge


def merge(out_dir, overwrite=False, keep_shards=False):
    """Join finished shards into ``OUT/train.rec/.idx`` by copying framed bytes; returns a summary."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(os.path.join(out_dir, SHARDS_DIR)):
        raise ConversionError(f"{os.path.join(out_dir, SHARDS_DIR)}: no shards to merge (expected the folder "
                              f"facemae convert writes)")
    with OutputLock(out_dir):
        return _merge_locked(out_dir, overwrite, keep_shards)


def _merge_locked(out_dir, overwrite, keep_shards):
    shards_dir = os.path.join(out_dir, SHARDS_DIR)
    by_count = _finished_markers(shards_dir)
    if not by_count:
        raise ConversionError(f"{shards_dir}: no finished shard (shard-IofN.done.json) to merge")
    if len(by_count) > 1:
        raise ConversionError(f"{shards_dir}: holds shards of conversions into {sorted(by_count)} shards; "
                              f"rerun convert with --overwrite")
    (num_shards, markers), = by_count.items()
    missing = [i for i in range(num_shards) if i not in markers]
    if missing:
        raise ConversionError(f"{shards_dir}: shard(s) {missing} of {num_shards} are not finished; run "
                              f"facemae convert ... --num-shards {num_shards} --shard I for them first")
    fingerprints = {json.dumps(m["fingerprint"], sort_keys=True) for m in markers.values()}
    if len(fingerprints) > 1:
        raise ConversionError(f"{shards_dir}: the shards come from conversions with different settings; "
                              f"rerun convert with --overwrite")
    if _final_exists(out_dir):
        if not overwrite:
            raise ConversionError(f"{out_dir}: already holds {REC_NAME}; pass --overwrite to replace it")
        _remove_final(out_dir)
    parts = [_checked_part(shards_dir, i, num_shards, markers[i]) for i in range(num_shards)]
    tail = tuple(os.path.join(shards_dir, f"tail-of{num_shards}{ext}") for ext in (".rec", ".idx"))
    if not all(os.path.isfile(p) for p in tail):
        raise ConversionError(f"{tail[0]}: missing; the last shard should have written it, rerun convert")
    for name in (PROPERTY_NAME, PROVENANCE_NAME):  # before train.rec, which marks the output whole
        source = os.path.join(shards_dir, name)
        if os.path.isfile(source):
            with open(source, "rb") as f:
                write_bytes(os.path.join(out_dir, name), f.read())
    expected = [(markers[i]["sha256"]["rec"], markers[i]["sha256"]["idx"]) for i in range(num_shards)]
    records = concatenate_records([*parts, tail], os.path.join(out_dir, REC_NAME), os.path.join(out_dir, IDX_NAME),
                                  expected_sha256=[*expected, None])
    if not keep_shards:
        shutil.rmtree(shards_dir)
    return {"out_dir": out_dir, "shards": num_shards, "records": records,
            "images": sum(m["records"] for m in markers.values())}


def _finished_markers(shards_dir):
    """``{shard count: {shard index: marker}}`` of every done marker, read from their names."""
    if not os.path.isdir(shards_dir):
        raise ConversionError(f"{shards_dir}: no shards to merge (expected the folder facemae convert writes)")
    markers = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(shards_dir), "shard-*of*.done.json"))):
        name = os.path.basename(path)[len("shard-"):-len(".done.json")]
        index, _, count = name.partition("of")
        marker = _read_json(path)
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise ConversionError(f"{path}: not a shard marker name (expected shard-IofN.done.json, I < N); "
                                  f"remove it or rerun convert with --overwrite")
        if not _valid_marker(marker):
            raise ConversionError(f"{path}: unreadable shard marker; rerun convert to redo that shard")
        markers.setdefault(int(count), {})[int(index)] = marker
    return markers


def _valid_marker(marker):
    """A marker as ``_run_shard`` writes it: fingerprint, record count, byte sizes and sha256 of both files."""
    def pair(value, kind):
        return isinstance(value, dict) and all(isinstance(value.get(name), kind) for name in ("rec", "idx"))

    return (isinstance(marker, dict) and isinstance(marker.get("fingerprint"), dict)
            and isinstance(marker.get("records"), int) and pair(marker.get("bytes"), int)
            and pair(marker.get("sha256"), str))


def _checked_part(shards_dir, i, num_shards, marker):
    stem = os.path.join(shards_dir, f"shard-{i}of{num_shards}")
    for ext, name in ((".rec", "rec"), (".idx", "idx")):
        path = stem + ext
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size != marker["bytes"][name]:
            raise ConversionError(f"{path}: expected {marker['bytes'][name]} bytes as its marker says, "
                                  f"found {'no file' if size is None else size}; rerun convert to redo it")
    return stem + ".rec", stem + ".idx"


def concatenate_records(parts, rec_path, idx_path, expected_sha256=None):
    """Copy framed records of ``[(rec, idx), ...]`` into one .rec/.idx, shifting offsets; returns count.

    ``expected_sha256[i]`` (``(rec, idx)`` hex digests, or None) is checked against part i's bytes as
    they are copied: a part changed since its marker was written fails the merge, and nothing is
    renamed into place.
    """
    expected_sha256 = expected_sha256 or [None] * len(parts)
    rec_tmp, idx_tmp = temp_name(rec_path), temp_name(idx_path)
    count = 0
    try:
        with open(rec_tmp, "wb") as rec_out, open(idx_tmp, "w", newline="\n") as idx_out:
            base = 0
            for (part_rec, part_idx), expected in zip(parts, expected_sha256):
                size = os.path.getsize(part_rec)
                if expected is not None:
                    _check_sha256(part_idx, sha256_file(part_idx), expected[1])
                index = read_index(part_idx, rec_size=size)
                digest = _copy_hashed(part_rec, rec_out)
                if expected is not None:
                    _check_sha256(part_rec, digest, expected[0])
                idx_out.writelines(f"{key}\t{base + offset}\n" for key, offset in index.items())
                base += size
                count += len(index)
            for handle in (rec_out, idx_out):
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(idx_tmp, idx_path)
        os.replace(rec_tmp, rec_path)  # last: a train.rec exists only when both are whole
    finally:
        _remove(rec_tmp, idx_tmp)
    return count


def _copy_hashed(path, out, block=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _check_sha256(path, found, expected):
    if found != expected:
        raise ConversionError(f"{path}: its bytes changed since the shard was finished (sha256 {found[:12]}..., "
                              f"marker says {expected[:12]}...); rerun convert with --overwrite to redo it")


# --------------------------------------------------------------------------- the entry point


def convert(in_dir, out_dir, privatizer, quality=95, batch_size=64, workers=None, num_shards=1, shard=None,
            overwrite=False, progress=True, distributed=False, keep_shards=False):
    """Convert ``in_dir`` into ``out_dir``; returns a summary dict.

    ``shard=None`` runs every unfinished shard, then merges. ``shard=I`` runs only shard I (merge
    later with ``merge``); with ``distributed=True`` (torchrun, one rank per shard) rank 0 prepares
    the output and merges once every rank is done.
    """
    started = time.perf_counter()
    job = Conversion(in_dir, out_dir, privatizer, quality, batch_size, workers, num_shards, progress)
    if shard is not None and not 0 <= int(shard) < job.num_shards:
        raise ConversionError(f"--shard {shard} is outside 0..{job.num_shards - 1} (--num-shards {job.num_shards})")
    if distributed:
        ran, skipped, merged = _convert_distributed(job, int(shard), overwrite, keep_shards)
    else:
        with job.lock():
            job.prepare(overwrite, own_shards=None if shard is None else [int(shard)])
            indices = range(job.num_shards) if shard is None else [int(shard)]
            ran, skipped = job.run_shards(indices)
            merged = _merge_locked(job.out_dir, False, keep_shards) if shard is None else None
    seconds = time.perf_counter() - started
    images = job.count(ran)
    job.shard.close()
    return {
        "out_dir": job.out_dir, "layout": job.shard.layout, "method": privatizer.provenance()["method"],
        "images_in": len(job.plan), "images_out": len(job.plan) * job.k, "k": job.k,
        "num_shards": job.num_shards, "shards_run": list(ran), "shards_skipped": list(skipped),
        "merged": merged is not None, "images_converted": images, "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
    }


def _convert_distributed(job, rank, overwrite, keep_shards):
    """One torchrun rank: rank 0 prepares, every rank converts its shard, rank 0 merges."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))
    with job.lock() if rank == 0 else contextlib.nullcontext():  # rank 0 holds OUT for the whole job
        if rank == 0:
            job.prepare(overwrite)
        dist.barrier()
        ran, skipped = job.run_shards([rank])
        dist.barrier()
        merged = _merge_locked(job.out_dir, False, keep_shards) if rank == 0 else None
        dist.barrier()
    return ran, skipped, merged


def privatizer_from_args(args):
    """The privatizer ``facemae convert``'s flags describe (only the flags of its method are used)."""
    from .privatize import make_privatizer

    method = args.method
    if method == "facemae":
        import torch

        device = args.device
        if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        return make_privatizer(method, checkpoint=args.checkpoint, mask_ratio=args.mask_ratio, output=args.output,
                               seed=args.seed, k=args.k, device=device, autocast=args.autocast)
    if method == "blur":
        return make_privatizer(method, sigma=args.sigma, k=args.k)
    if method == "pixelate":
        return make_privatizer(method, block_size=args.block_size, k=args.k)
    if method == "noise":
        return make_privatizer(method, std=args.noise_std, seed=args.seed, k=args.k)
    patch_size = args.patch_size
    if patch_size is None and args.checkpoint:  # the masks FaceMAE with this checkpoint would use
        from .models.mae import FaceMAE

        patch_size = FaceMAE.from_checkpoint(args.checkpoint).patch_size
    return make_privatizer(method, patch_size=patch_size or 8, mask_ratio=args.mask_ratio, seed=args.seed,
                           k=args.k)


# --------------------------------------------------------------------------- helpers


def _check_settings(quality, batch_size, workers, num_shards):
    if not 0 <= int(quality) <= 100:
        raise ConversionError(f"JPEG quality must be in 0..100, got {quality}")
    if int(batch_size) < 1:
        raise ConversionError(f"batch size must be >= 1, got {batch_size}")
    if workers is not None and int(workers) < 0:
        raise ConversionError(f"workers must be >= 0 (0 = decode/encode in this process), got {workers}")
    if int(num_shards) < 1:
        raise ConversionError(f"--num-shards must be >= 1, got {num_shards}")


def _final_exists(out_dir):
    return os.path.isfile(os.path.join(out_dir, REC_NAME))


def _remove_final(out_dir):
    for name in (REC_NAME, IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME):
        path = os.path.join(out_dir, name)
        _remove(path, path + ".tmp-*")


def _is_ours(name):
    base = name.split(".tmp-")[0]
    return base in (REC_NAME, IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, SHARDS_DIR, LOCK_NAME)


def _differences(old, new):
    if not isinstance(old, dict):
        return "an unreadable marker"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "nothing visible"
