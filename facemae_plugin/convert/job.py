"""A conversion job: an input shard, a privatizer and settings in, a released shard out.

What is kept: the layout (A or B), every image key, each image's IRHeader bytes (flag, scalar or
array label, id, id2), the header record (key 0), the identity records and the ``property`` file.
Only image payloads change (JPEG, quality 95 by default). A rerun skips the shards already marked
done; a job holds a lock on its output folder while it runs.
"""
import contextlib
import hashlib
import os
import time

from .. import __version__
from ..core.errors import FaceMAEError
from ..core.files import OutputLock, json_text, refuse_overlap, write_bytes
from ..formats.recordio import RecordWriter
from ..formats.shard import PROPERTY_NAME, REC_NAME, FaceShard
from .keys import KEY_SCHEME, MAX_FLOAT32_KEY, KeyPlan, shard_range, tail_records
from .layout import SHARDS_DIR, ConversionError, ShardFolder, final_exists, is_ours, remove_final
from .merge import merge_locked
from .settings import ConvertSettings
from .workers import convert_range, convert_range_in_workers, default_workers, make_executor

FORMAT_VERSION = 1


class Conversion:
    """A conversion of ``in_dir`` into ``out_dir`` with one privatizer and fixed settings."""

    def __init__(self, in_dir, out_dir, privatizer, settings=ConvertSettings(), num_shards=1, progress=True):
        if int(num_shards) < 1:
            raise ConversionError(f"--num-shards must be >= 1, got {num_shards}")
        self.in_dir = os.path.abspath(os.fspath(in_dir))
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.shard = FaceShard(self.in_dir)
        self.privatizer = privatizer
        self.k = privatizer.k
        self.quality = int(settings.quality)
        self.batch_size = int(settings.batch_size)
        self.workers = default_workers() if settings.workers is None else int(settings.workers)
        self.num_shards = int(num_shards)
        self.progress = progress
        self.plan = KeyPlan(self.shard, self.k)
        self._check_input()
        # cheap per-image privatizers (pure functions of image, key, seed) run in the decode workers
        # as torch-free pixelops with the same bytes; model stages (FaceMAE) have none and run here
        self.worker_op = privatizer.worker_op()
        self.idx_sha256 = self.shard.idx_sha256
        self.fingerprint = self._fingerprint()
        self.shards = ShardFolder(os.path.join(self.out_dir, SHARDS_DIR), self.num_shards, self.fingerprint)

    def _check_input(self):
        try:
            self.privatizer.check_image_size(tuple(self.shard.image_size))
        except FaceMAEError as exc:
            raise ConversionError(f"{self.in_dir}: {exc}") from None
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
            # a secret seed reads "secret" in the provenance: its hash keeps shards of two secrets apart
            "seed_sha256": hashlib.sha256(str(self.privatizer.seed).encode()).hexdigest(),
            "quality": self.quality,
            "batch_size": self.batch_size,
            "num_shards": self.num_shards,
        }

    # ---------------------------------------------------------------- output directory

    def _make_output_folder(self):
        """Create ``OUT_DIR``, never where it is or holds the input."""
        refuse_overlap(self.out_dir, [self.shard.directory, self.shard.rec_path, self.shard.idx_path],
                       output_is_dir=True)
        os.makedirs(self.out_dir, exist_ok=True)

    def lock(self):
        """Hold ``OUT_DIR`` against other conversions and merges (created if needed, never over the input)."""
        self._make_output_folder()
        return OutputLock(self.out_dir)

    def prepare(self, overwrite=False, own_shards=None):
        """Refuse or clear existing output; ``own_shards`` are the shards ``overwrite`` may discard."""
        out = self.out_dir
        self._make_output_folder()
        if final_exists(out) and not overwrite:
            raise ConversionError(f"{out}: already holds a converted dataset ({REC_NAME}); "
                                  f"pass --overwrite to replace it")
        remove_final(out)  # or the leftovers of a merge killed before train.rec was renamed in
        foreign = sorted(name for name in os.listdir(out) if not is_ours(name))
        if foreign and not overwrite:
            raise ConversionError(f"{out}: holds other files ({', '.join(foreign[:3])}); expected a new or "
                                  f"empty directory, or pass --overwrite")
        os.makedirs(self.shards.folder, exist_ok=True)
        self.shards.clear_others(overwrite)
        if overwrite:
            for i in (range(self.num_shards) if own_shards is None else own_shards):
                self.shards.remove(i)

    # ---------------------------------------------------------------- running shards

    def run_shards(self, indices):
        """Convert each unfinished shard in ``indices``; returns (ran, skipped) index lists."""
        todo = [i for i in indices if not self.shards.done(i)]
        skipped = [i for i in indices if i not in todo]
        from tqdm import tqdm

        bar = tqdm(total=self.count(todo), desc="convert", unit="img", disable=not self.progress, smoothing=0.1)
        executor = make_executor(self.in_dir, self.workers) if todo else None
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
        self.shards.remove(i)  # leftovers of a killed run: temp files, a marker of an unfinished shard
        try:
            self._write_shard(i, executor, bar)
        except BaseException:  # a stop (Ctrl-C, SIGTERM) after a writer opened its files but before its block began
            self.shards.remove_temporary(i)
            raise

    def _write_shard(self, i, executor, bar):
        rec, idx, _ = self.shards.files(i)
        start, end = self.range(i)
        ahead = max(2, 2 * self.workers)
        with RecordWriter(rec, idx) as writer:
            if self.worker_op is not None:
                convert_range_in_workers(executor, self.worker_op, self.plan, start, end, self.batch_size,
                                          self.quality, writer, ahead, bar)
            else:
                convert_range(executor, self.privatizer, self.plan, start, end, self.batch_size, self.quality,
                               writer, ahead, bar)
        if i == self.num_shards - 1:
            self._write_tail()
        self.shards.mark_done(i, images=end - start, records=(end - start) * self.k)

    def _write_tail(self):
        """Identity and header records, ``property`` and provenance: everything but the images."""
        rec, idx = self.shards.tail_files()
        with RecordWriter(rec, idx) as writer:
            for key, record in tail_records(self.shard, self.k):
                writer.write_idx(key, record)
        property_path, provenance_path = self.shards.meta_files()
        source_property = os.path.join(self.shard.directory, PROPERTY_NAME)
        if os.path.isfile(source_property):
            with open(source_property, "rb") as f:
                write_bytes(property_path, f.read())
        write_bytes(provenance_path, json_text(self.provenance()).encode())

    def provenance(self):
        """``facemae_provenance.json``: what made the release (no shard count, workers or device).

        The source is named by its folder's name and ``.idx`` hash, never by where it lies on the
        publisher's machine; a secret seed reads ``"secret"`` (``privatizers.privatizer``).
        """
        return {
            "facemae_plugin": __version__,
            "source": {"name": os.path.basename(self.in_dir), "layout": self.shard.layout, "images": len(self.plan),
                       "identities": len(self.shard.identity_keys), "idx_sha256": self.idx_sha256},
            "privatizer": self.privatizer.provenance(),
            "k": self.k,
            "jpeg_quality": self.quality,
            "batch_size": self.batch_size,
            "released": {"images": len(self.plan) * self.k, "key_scheme": KEY_SCHEME[self.shard.layout]},
        }


def convert(in_dir, out_dir, privatizer, settings=ConvertSettings(), num_shards=1, shard=None, overwrite=False,
            progress=True, distributed=False, keep_shards=False):
    """Convert ``in_dir`` into ``out_dir`` with ``settings`` (``ConvertSettings``); returns a summary dict.

    ``shard=None`` runs every unfinished shard, then merges. ``shard=I`` runs only shard I (merge
    later with ``merge``); with ``distributed=True`` (torchrun, one rank per shard) rank 0 prepares
    the output and merges once every rank is done.
    """
    started = time.perf_counter()
    job = Conversion(in_dir, out_dir, privatizer, settings, num_shards, progress)
    if shard is not None and not 0 <= int(shard) < job.num_shards:
        raise ConversionError(f"--shard {shard} is outside 0..{job.num_shards - 1} (--num-shards {job.num_shards})")
    if distributed:
        ran, skipped, merged = _convert_distributed(job, int(shard), overwrite, keep_shards)
    else:
        with job.lock():
            job.prepare(overwrite, own_shards=None if shard is None else [int(shard)])
            indices = range(job.num_shards) if shard is None else [int(shard)]
            ran, skipped = job.run_shards(indices)
            merged = merge_locked(job.out_dir, False, keep_shards) if shard is None else None
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
        merged = merge_locked(job.out_dir, False, keep_shards) if rank == 0 else None
        dist.barrier()
    return ran, skipped, merged
