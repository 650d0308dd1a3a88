"""facemae_plugin.formats.recordio on its own: round trips, bad input, atomic writes, worker processes.

Byte compatibility with MXNet is proven in test_recordio_mxnet.py; here the
expected values are the test's inputs and the format rules in facemae_plugin/formats/recordio.py.
"""
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facemae_plugin.formats.recordio import (
    MAGIC,
    MAGIC_BYTES,
    IndexedRecordReader,
    IRHeader,
    RecordIOError,
    RecordReader,
    RecordWriter,
    decode_image,
    frame_record,
    pack,
    pack_img,
    read_index,
    unpack,
    unpack_img,
)

float32s = st.floats(width=32, allow_nan=False)
payloads = st.lists(
    st.one_of(st.just(MAGIC_BYTES), st.binary(max_size=9), st.sampled_from([b"\x0a\x23", b"\xd7\xce"])),
    max_size=10,
).map(b"".join)
ids = st.integers(0, 2**64 - 1)


# --------------------------------------------------------------------------- round trips


@given(float32s, ids, ids, st.binary(max_size=64))
def test_pack_unpack_scalar_label(label, id_, id2, payload):
    header, out = unpack(pack(IRHeader(7, label, id_, id2), payload))
    # A scalar label lives in the header and forces flag 0.
    assert header == IRHeader(0, label, id_, id2)
    assert out == payload


@given(st.lists(float32s, min_size=1, max_size=16), ids, payloads)
def test_pack_unpack_array_label(label, id_, payload):
    record = pack(IRHeader(0, np.array(label), id_, 0), payload)
    header, out = unpack(record)
    assert header.flag == len(label) and (header.id, header.id2) == (id_, 0)
    np.testing.assert_array_equal(header.label, np.asarray(label, dtype=np.float32))
    assert out == payload
    assert len(record) == 24 + 4 * len(label) + len(payload)


@given(st.lists(payloads, max_size=8))
def test_frames_read_back_in_order(items):
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp, "a.rec")
        with RecordWriter(rec) as writer:
            offsets = [writer.write(p) for p in items]
        data = rec.read_bytes()
        assert len(data) % 4 == 0
        assert offsets == sorted(offsets) and all(o % 4 == 0 for o in offsets)
        with RecordReader(rec) as reader:
            assert list(reader) == list(zip(offsets, items))
            reader.reset()
            assert [reader.read() for _ in items] + [reader.read()] == items + [None]


@given(payloads)
def test_frame_drops_only_aligned_magic(payload):
    """Framed size = payload + 8 per part - 4 per aligned magic, padded to 4 (the dmlc-core rule)."""
    aligned_magics = sum(
        1 for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC_BYTES
    )
    framed = frame_record(payload)
    parts = aligned_magics + 1
    body = len(payload) - 4 * aligned_magics
    assert len(framed) == 8 * parts + body + (-len(payload) % 4)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.integers(-(2**40), 2**40), payloads, max_size=12), st.randoms())
def test_indexed_round_trip_any_key_order(records, rnd):
    keys = list(records)
    rnd.shuffle(keys)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp, "a.rec")
        with RecordWriter(rec, Path(tmp, "a.idx")) as writer:
            for key in keys:
                writer.write_idx(key, records[key])
        with IndexedRecordReader(rec) as reader:
            assert reader.keys.tolist() == keys and len(reader) == len(keys)
            read_order = list(keys)
            rnd.shuffle(read_order)
            assert {k: reader.read_idx(k) for k in read_order} == records


def test_pack_img_round_trip():
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = (0, 0, 255)
    header, out = unpack_img(pack_img(IRHeader(0, 3.0, 1, 0), img, img_fmt=".png", quality=3))
    assert header == IRHeader(0, 3.0, 1, 0)
    np.testing.assert_array_equal(out, img)


# --------------------------------------------------------------------------- bad input


def write_shard(tmp_path, payloads_by_key):
    rec, idx = tmp_path / "s.rec", tmp_path / "s.idx"
    with RecordWriter(rec, idx) as writer:
        offsets = {k: writer.write_idx(k, p) for k, p in payloads_by_key.items()}
    return rec, idx, offsets


def one_line_error(call, *fragments):
    """``call`` raises a single-line RecordIOError whose text holds every fragment."""
    with pytest.raises(RecordIOError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} missing from {message!r}"
    return message


@pytest.fixture
def shard(tmp_path):
    return write_shard(tmp_path, {0: b"a" * 10, 1: b"b" * 20, 2: b"c" * 30})


def test_wrong_magic(shard):
    rec, idx, offsets = shard
    data = bytearray(rec.read_bytes())
    data[offsets[1]:offsets[1] + 4] = b"JUNK"
    rec.write_bytes(bytes(data))
    reader = IndexedRecordReader(rec)
    one_line_error(lambda: reader.read_idx(1), rec, "key 1", f"offset {offsets[1]}", "wrong magic", f"0x{MAGIC:08x}")
    assert reader.read_idx(2) == b"c" * 30  # one bad record does not poison the others
    sequential = RecordReader(rec)
    sequential.read()
    one_line_error(sequential.read, rec, f"offset {offsets[1]}", "wrong magic")


@pytest.mark.parametrize("cut, expected", [(5, "8-byte record head"), (8 + 29, "announces 30 bytes")])
def test_truncated_record(shard, cut, expected):
    rec, _, offsets = shard
    rec.write_bytes(rec.read_bytes()[: offsets[2] + cut])
    reader = IndexedRecordReader(rec)
    one_line_error(lambda: reader.read_idx(2), rec, "key 2", f"offset {offsets[2]}", "truncated", expected)
    assert reader.read_idx(1) == b"b" * 20


def test_truncated_inside_padding(tmp_path):
    rec, _, _ = write_shard(tmp_path, {0: b"abc"})
    rec.write_bytes(rec.read_bytes()[:-1])  # MXNet refuses a record whose padding is cut
    one_line_error(lambda: IndexedRecordReader(rec).read_idx(0), rec, "key 0", "truncated", "4 with padding")


def edit_idx(idx, lines):
    idx.write_text("".join(line + "\n" for line in lines))


def test_idx_offset_past_end(shard):
    rec, idx, _ = shard
    size = rec.stat().st_size
    edit_idx(idx, ["0\t0", f"1\t{size + 4}"])
    one_line_error(lambda: IndexedRecordReader(rec), f"{idx}:2", "key 1", f"offset {size + 4}", f"< {size}")


def test_idx_offset_inside_a_record(shard):
    rec, idx, offsets = shard
    edit_idx(idx, ["0\t0", f"1\t{offsets[1] + 8}"])  # aligned, but inside key 1's payload
    reader = IndexedRecordReader(rec)
    one_line_error(lambda: reader.read_idx(1), rec, "key 1", f"offset {offsets[1] + 8}", "not the start of a record")


def test_idx_offset_unaligned(shard):
    rec, idx, offsets = shard
    edit_idx(idx, [f"1\t{offsets[1] + 2}"])
    one_line_error(lambda: IndexedRecordReader(rec), f"{idx}:1", "key 1", "not a multiple of 4")


def test_idx_offset_at_a_continuation_part(tmp_path):
    rec, idx, _ = write_shard(tmp_path, {0: b"head" + MAGIC_BYTES + b"tail"})
    second_part = 8 + 4  # first part: 8-byte head + "head"
    edit_idx(idx, [f"0\t{second_part}"])
    one_line_error(lambda: IndexedRecordReader(rec).read_idx(0), rec, "key 0", "cflag 3", "expected 0 or 1")


def test_duplicate_key_in_idx(shard):
    rec, idx, offsets = shard
    edit_idx(idx, ["0\t0", f"1\t{offsets[1]}", f"0\t{offsets[2]}"])
    one_line_error(lambda: IndexedRecordReader(rec), f"{idx}:3", "duplicate key 0")


@pytest.mark.parametrize("line", ["1 0", "one\t0", "1\t0\t7", "1\t", "1\t0x10"])
def test_malformed_idx_line(tmp_path, line):
    idx = tmp_path / "bad.idx"
    edit_idx(idx, ["0\t0", line])
    one_line_error(lambda: read_index(idx), f"{idx}:2", "expected 'key<TAB>offset'", repr(line))


def test_writer_rejects_duplicate_key(tmp_path):
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        writer.write_idx(5, b"x")
        one_line_error(lambda: writer.write_idx(5, b"y"), "a.rec", "key 5")
        writer.write_idx(6, b"z")
    assert IndexedRecordReader(tmp_path / "a.rec").keys.tolist() == [5, 6]


@pytest.mark.parametrize("payload", [b"", b"not an image", b"\xff\xd8\xff\xe0" + b"\0" * 40])
def test_undecodable_image(payload):
    one_line_error(lambda: decode_image(payload, where="s.rec key 4"), "s.rec key 4", "not a decodable image")
    record = pack(IRHeader(0, 1.0, 4, 0), payload)
    one_line_error(lambda: unpack_img(record, where="s.rec key 4"), "s.rec key 4", "not a decodable image")


def test_flag_announces_more_labels_than_bytes():
    record = struct.pack("IfQQ", 5, 0.0, 1, 0) + b"\0" * 8  # five float32 labels need 20 bytes
    one_line_error(lambda: unpack(record, where="s.rec key 9"), "s.rec key 9", "flag=5", "20 bytes", "only 8")
    one_line_error(lambda: unpack(b"\0" * 10, where="s.rec key 9"), "s.rec key 9", "24-byte IRHeader")


# --------------------------------------------------------------------------- atomic output


def test_exception_leaves_no_files(tmp_path):
    with pytest.raises(KeyError):
        with RecordWriter(tmp_path / "out.rec", tmp_path / "out.idx") as writer:
            writer.write_idx(0, b"x" * 100)
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_previous_files(tmp_path):
    rec, idx, _ = write_shard(tmp_path, {0: b"old"})
    before = rec.read_bytes(), idx.read_bytes()
    with pytest.raises(RuntimeError):
        with RecordWriter(rec, idx) as writer:
            writer.write_idx(0, b"new")
            assert (rec.read_bytes(), idx.read_bytes()) == before  # nothing visible until close
            raise RuntimeError
    assert (rec.read_bytes(), idx.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.idx", "s.rec"]


# --------------------------------------------------------------------------- processes


class KeyedDataset:
    """Minimal map-style dataset: what a DataLoader worker read, and in which process."""

    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        key = int(self.reader.keys[i])
        return key, self.reader.read_idx(key), os.getpid()


def test_dataloader_fork_workers(tmp_path):
    torch = pytest.importorskip("torch")
    records = {k: bytes([k % 256]) * (k * 37 % 500) + MAGIC_BYTES * (k % 3) for k in range(64)}
    rec, _, _ = write_shard(tmp_path, records)
    reader = IndexedRecordReader(rec)
    reader.read_idx(0)  # the parent has used the file before the workers fork
    loader = torch.utils.data.DataLoader(
        KeyedDataset(reader), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    batches = iter(loader)  # forks the workers
    reader.close()  # workers must not depend on the parent's handle
    seen, pids = {}, set()
    for key, payload, pid in batches:
        seen[key] = payload
        pids.add(pid)
    assert seen == records
    assert os.getpid() not in pids and len(pids) == 2


def test_readers_survive_pickling(tmp_path):
    records = {k: os.urandom(k * 3) + MAGIC_BYTES for k in range(10)}
    rec, _, _ = write_shard(tmp_path, records)
    indexed = IndexedRecordReader(rec)
    copy = pickle.loads(pickle.dumps(indexed))
    indexed.close()  # the copy opened the file for itself
    assert {k: copy.read_idx(k) for k in copy.keys} == records
    one_line_error(lambda: indexed.read_idx(0), rec, "closed")
    sequential = RecordReader(rec)
    sequential.read()
    resumed = pickle.loads(pickle.dumps(sequential))
    sequential.close()
    assert [payload for _, payload in resumed] == [records[k] for k in range(1, 10)]


def test_file_truncated_under_an_open_reader(shard):
    """A shard cut while a reader holds it open: an error naming the record, not a crash."""
    rec, _, offsets = shard
    reader = IndexedRecordReader(rec)
    os.truncate(rec, offsets[2] + 12)
    one_line_error(lambda: reader.read_idx(2), rec, "key 2", "truncated", "file has 4 bytes left")
