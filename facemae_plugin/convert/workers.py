"""The torch-free half of a conversion: worker processes that read, decode, privatize and encode.

Pipeline, streaming, one process per shard:

    read + decode (worker processes) -> batch -> privatizer (this process; CPU or GPU)
        -> JPEG encode + pack (worker processes) -> write (this process, in order)

Batches ahead are decoded and batches behind are encoded in a process pool while the model works
on the current one, so a conversion runs about as fast as its slowest stage. At most
``2 * ahead`` batches are in flight, so memory stays flat whatever the dataset size.

Cheap per-image privatizers (identity, blur, pixelate, noise, masked: pure functions of image, key
and seed) have a torch-free twin (``Privatizer.worker_op()``, module ``privatizers.pixelops``) with the
same output bytes; then each batch is a single worker task, read -> decode -> privatize -> encode,
and this process only writes. No pixels cross processes and no model thread competes with the
codecs. Model stages (FaceMAE) run in the converting process with all of torch's threads, since
the codec work beside a model is a small part of its time (``benchmarks/convert_bench.py``).
"""
import functools
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

# No torch at module level: the decode/encode worker processes import this module and need only
# numpy and OpenCV, so they start in well under a second. torch is imported where it is used.
from ..formats.recordio import encode_image, unpack
from ..formats.shard import FaceShard, scalar_label


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


def convert_batch(keys, op, k, quality):
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


def make_executor(in_dir, workers):
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
    from ..data.dataset import denormalise, normalise_batch

    images = normalise_batch(rgb)  # [B, 3, H, W]
    out = privatizer.variants(images.contiguous(), keys)  # [B, k, 3, H, W]
    return denormalise(out.reshape(-1, *out.shape[2:]))


def _write_oldest(encoding, writer, bar, k):
    """Wait for the oldest batch's packed records and write them under their output keys."""
    keys, future = encoding.popleft()
    for key, payload in zip(keys, future.result()):
        writer.write_idx(key, payload)
    bar.update(len(keys) // k)


def convert_range(executor, privatizer, plan, start, end, batch_size, quality, writer, ahead, bar):
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


TRIM_EVERY = 8  # batches between heap trims: a trim costs milliseconds, so not after every batch


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on other C libraries (musl, macOS)."""
    import ctypes

    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def _release_free_memory():
    """Hand the heap pages freed by the batches since the last trim back to the OS.

    Each batch allocates and frees a few MB-sized buffers (pixels, float tensors, pickles). glibc
    serves them from its heap once its dynamic mmap threshold has risen past their size, and the
    freed chunks fragment; without this the converter's RSS creeps up with the number of batches
    (``benchmarks/convert_bench.py`` reports the peak RSS).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def convert_range_in_workers(executor, op, plan, start, end, batch_size, quality, writer, ahead, bar):
    """Like ``convert_range`` for a privatizer with a worker op: each batch is one worker task
    (read, decode, privatize, encode), so no pixels cross processes and this process only writes."""
    pending = deque()  # (output keys, future) in order
    for first in range(start, end, batch_size):
        keys = plan.image_keys[first:min(first + batch_size, end)].tolist()
        pending.append((plan.output_keys(first, len(keys)),
                        executor.submit(convert_batch, keys, op, plan.k, quality)))
        if len(pending) >= 2 * ahead:
            _write_oldest(pending, writer, bar, plan.k)
    while pending:
        _write_oldest(pending, writer, bar, plan.k)
