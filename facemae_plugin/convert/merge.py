"""Join finished shards into one release by copying framed bytes, checking each shard's hash.

Shard I of N goes to ``OUT/shards/shard-IofN.rec/.idx`` (atomically) and then its marker
``shard-IofN.done.json`` (fingerprint, sizes and sha256 of both files); the last shard also writes
the tail (identity and header records, ``property``, provenance). ``merge`` copies the framed shard
bytes into ``OUT/train.rec`` and rewrites the offsets of ``OUT/train.idx`` (no re-encoding);
``train.rec`` is renamed into place last, so it exists only when the output is whole.
"""
import glob
import hashlib
import json
import os
import shutil

from ..core.files import OutputLock, sha256_file, temp_name, write_bytes
from ..formats.recordindex import read_index, write_index_lines
from ..formats.shard import IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, REC_NAME
from .layout import SHARDS_DIR, ConversionError, final_exists, read_json_or_none, remove_files, remove_final


def merge(out_dir, overwrite=False, keep_shards=False):
    """Join finished shards into ``OUT/train.rec/.idx`` by copying framed bytes; returns a summary."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(os.path.join(out_dir, SHARDS_DIR)):
        raise ConversionError(f"{os.path.join(out_dir, SHARDS_DIR)}: no shards to merge (expected the folder "
                              f"facemae convert writes)")
    with OutputLock(out_dir):
        return merge_locked(out_dir, overwrite, keep_shards)


def merge_locked(out_dir, overwrite, keep_shards):
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
    if final_exists(out_dir):
        if not overwrite:
            raise ConversionError(f"{out_dir}: already holds {REC_NAME}; pass --overwrite to replace it")
        remove_final(out_dir)
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
        marker = read_json_or_none(path)
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
                write_index_lines(idx_out, index.file_keys, index.file_offsets() + base)
                base += size
                count += len(index)
            for handle in (rec_out, idx_out):
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(idx_tmp, idx_path)
        os.replace(rec_tmp, rec_path)  # last: a train.rec exists only when both are whole
    finally:
        remove_files(rec_tmp, idx_tmp)
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
