"""facemae_plugin.formats.recordio against real MXNet 1.9.1 (run in its own venv).

Each case is a list of records written once by our ``RecordWriter`` and once by
``mx.recordio.MXIndexedRecordIO``; the two files must be byte-identical, MXNet
must read ours back (sequentially and by key) and we must read MXNet's. All
cases go to the oracle in one subprocess call, which reports sha256 digests of
what MXNet packed, read and unpacked; the expected values are always MXNet's
or the test's own inputs, never our output.
"""
import hashlib
import random
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facemae_plugin.formats.recordio import (
    MAGIC_BYTES,
    IndexedRecordReader,
    IRHeader,
    RecordReader,
    RecordWriter,
    decode_image,
    pack,
    pack_img,
    unpack,
)
from tests.mxnet_oracle import run_oracle_json, write_json

# Writes every case with MXNet, reads our files back with MXNet, and prints
# digests of everything as JSON (one result per case, in spec order).
ORACLE_CASES = r"""
import hashlib, json, os, sys
import numpy as np
import mxnet as mx

def digest(data):
    return hashlib.sha256(data).hexdigest() + ":" + str(len(data))

def record_bytes(case_dir, record):
    with open(os.path.join(case_dir, record["payload"]), "rb") as f:
        payload = f.read()
    if record["header"] is None:
        return payload
    flag, label, id_, id2 = record["header"]
    return mx.recordio.pack(mx.recordio.IRHeader(flag, label, id_, id2), payload)

def unpacked(record):
    header, payload = mx.recordio.unpack(record)
    label = header.label.tolist() if isinstance(header.label, np.ndarray) else header.label
    return [header.flag, label, header.id, header.id2, digest(payload)]

spec = json.load(open(sys.argv[1]))
results = []
for case in spec:
    d = case["dir"]
    writer = mx.recordio.MXIndexedRecordIO(os.path.join(d, "mx.idx"), os.path.join(d, "mx.rec"), "w")
    packed = []
    for record in case["records"]:
        data = record_bytes(d, record)
        packed.append(digest(data))
        writer.write_idx(record["key"], data)
    writer.close()

    sequential = []
    reader = mx.recordio.MXRecordIO(os.path.join(d, "ours.rec"), "r")
    while True:
        item = reader.read()
        if item is None:
            break
        sequential.append(digest(item))
    reader.close()

    indexed, unpacked_by_key = {}, {}
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(d, "ours.idx"), os.path.join(d, "ours.rec"), "r")
    for record in case["records"]:
        item = reader.read_idx(record["key"])
        indexed[str(record["key"])] = digest(item)
        if record["header"] is not None:
            unpacked_by_key[str(record["key"])] = unpacked(item)
    reader.close()
    results.append({"packed": packed, "sequential": sequential, "indexed": indexed,
                    "unpacked": unpacked_by_key, "keys": [int(k) for k in reader.keys]})
print(json.dumps(results))
"""

MAGIC = MAGIC_BYTES


@dataclass
class Record:
    key: int
    payload: bytes
    header: tuple = None  # (flag, label, id, id2) to pack; None writes the payload raw

    def data(self):
        return self.payload if self.header is None else pack(self.header, self.payload)


def digest(data):
    return hashlib.sha256(bytes(data)).hexdigest() + ":" + str(len(data))


def json_header(header):
    flag, label, id_, id2 = header
    if not isinstance(label, (int, float)):
        label = [float(v) for v in label]
    return [flag, label, id_, id2]


def write_case(case_dir, records):
    """Write ``records`` with our writer; returns the oracle's spec for the case."""
    case_dir.mkdir(parents=True)
    spec = []
    with RecordWriter(case_dir / "ours.rec", case_dir / "ours.idx") as writer:
        for i, record in enumerate(records):
            (case_dir / f"p{i}.bin").write_bytes(record.payload)
            writer.write_idx(record.key, record.data())
            header = None if record.header is None else json_header(record.header)
            spec.append({"key": record.key, "header": header, "payload": f"p{i}.bin"})
    return {"dir": str(case_dir), "records": spec}


def run_cases(mxnet_python, work_dir, cases):
    """Write each case ourselves, let MXNet write and read it; returns MXNet's report per case."""
    specs = [write_case(work_dir / name, records) for name, records in cases.items()]
    spec_path = write_json(work_dir / "spec.json", specs)
    return dict(zip(cases, run_oracle_json(mxnet_python, ORACLE_CASES, [spec_path], cwd=work_dir)))


def check_case(case_dir, records, report):
    """Everything one case promises; assertion messages name the case directory."""
    ours_rec, mx_rec = (case_dir / "ours.rec").read_bytes(), (case_dir / "mx.rec").read_bytes()
    assert ours_rec == mx_rec, f"{case_dir}: .rec differs from MXNet's at byte {first_difference(ours_rec, mx_rec)}"
    assert (case_dir / "ours.idx").read_bytes() == (case_dir / "mx.idx").read_bytes(), f"{case_dir}: .idx differs"

    packed = report["packed"]
    # MXNet's pack agrees with ours on the same header and payload.
    assert [digest(r.data()) for r in records] == packed
    # MXNet reads our file back, in order and by key, and sees its own packed records.
    assert report["sequential"] == packed
    assert [report["indexed"][str(r.key)] for r in records] == packed
    assert report["keys"] == [r.key for r in records]
    check_mxnet_unpack(records, report["unpacked"])
    check_we_read_mxnet(case_dir, records, packed)


def check_mxnet_unpack(records, unpacked):
    """MXNet's unpack of our records gives back the inputs (labels rounded to float32)."""
    for record in records:
        if record.header is None:
            continue
        _, label, id_, id2 = record.header
        flag, mx_label, mx_id, mx_id2, mx_payload = unpacked[str(record.key)]
        if isinstance(label, (int, float)):
            assert (flag, mx_label) == (0, float(np.float32(label)))
        else:
            expected = np.asarray(label, dtype=np.float32)
            assert flag == expected.size
            np.testing.assert_array_equal(np.asarray(mx_label, dtype=np.float32), expected)
        assert (mx_id, mx_id2, mx_payload) == (id_, id2, digest(record.payload))


def check_we_read_mxnet(case_dir, records, packed):
    """Our readers return, for MXNet's file, exactly the records MXNet packed."""
    with RecordReader(case_dir / "mx.rec") as reader:
        assert [digest(payload) for _, payload in reader] == packed
    with IndexedRecordReader(case_dir / "mx.rec", case_dir / "mx.idx") as reader:
        assert reader.keys.tolist() == [r.key for r in records]
        assert [digest(reader.read_idx(r.key)) for r in records] == packed
        for record in records:
            if record.header is not None:
                header, payload = unpack(reader.read_idx(record.key))
                assert (header.id, header.id2, payload) == (record.header[2], record.header[3], record.payload)


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --------------------------------------------------------------------------- fixed cases


def magic_cases():
    """Raw payloads with the magic number where dmlc-core splits (aligned) and where it does not."""
    x4 = b"abcd"
    aligned = {
        "alone": MAGIC,
        "at_start": MAGIC + b"payload!",
        "at_end": b"payload!" + MAGIC,
        "start_and_end": MAGIC + x4 + MAGIC,
        "adjacent_pair": x4 + MAGIC + MAGIC + x4,
        "adjacent_run": MAGIC * 5,
        "several": x4 + MAGIC + x4 * 3 + MAGIC + x4 + MAGIC + b"tail",
        "at_end_unpadded_tail": MAGIC + b"xy",
    }
    unaligned = {
        "offset_1": b"a" + MAGIC + b"bcd",
        "offset_2": b"ab" + MAGIC,
        "offset_3": b"abc" + MAGIC + b"d",
        "straddles_aligned": b"ab" + MAGIC + MAGIC,  # second magic at offset 6
        "shifted_run": b"a" + MAGIC * 3,
        "partial_magic": MAGIC[:3] + b"\x00" + MAGIC[1:],
    }
    return aligned, unaligned


def fixed_cases():
    rng = np.random.default_rng(1234)
    aligned, unaligned = magic_cases()
    scalar = [
        Record(k, rng.bytes(int(rng.integers(0, 300))), (0, float(rng.normal() * 1000), k * 7, 2**64 - 1 - k))
        for k in range(20)
    ]
    arrays = [Record(0, b"", (0, [21.0, 25.0], 0, 0))] + [
        Record(k, rng.bytes(50), (0, rng.normal(size=k % 5 + 1).astype(np.float32).tolist(), k, 0))
        for k in range(1, 21)
    ] + [Record(k, b"", (0, [float(k), float(k + 1)], 0, 0)) for k in range(21, 25)]
    empty = [Record(0, b""), Record(1, b"", (0, 3.0, 0, 0)), Record(2, b"", (0, [1.0], 0, 0)), Record(3, b"")]
    big_magic = bytearray(rng.bytes(1_500_003))
    for offset in (0, 4, 1024, 1028, 700_001, 1_499_996):
        big_magic[offset:offset + 4] = MAGIC
    large = [
        Record(0, rng.bytes(1_200_000), (0, 5.0, 0, 0)),
        Record(1, bytes(big_magic)),
        Record(2, bytes(big_magic), (0, [1.0, 2.0, 3.0], 1, 2)),
        Record(3, rng.bytes(2_000_001)),
    ]
    keys = [int(k) for k in rng.permutation(10_000)[:40]] + [0, 2**40, -7]
    random.Random(5).shuffle(keys)
    random_keys = [Record(k, rng.bytes(int(rng.integers(0, 40))), (0, float(i), i, 0)) for i, k in enumerate(keys)]
    return {
        "scalar_labels": scalar,
        "array_labels": arrays,
        "empty_payloads": empty,
        "magic_aligned": [Record(i, p) for i, p in enumerate(aligned.values())],
        "magic_aligned_packed": [Record(i, p, (0, 1.0, i, 0)) for i, p in enumerate(aligned.values())],
        "magic_unaligned": [Record(i, p) for i, p in enumerate(unaligned.values())],
        "magic_in_array_label": [Record(0, MAGIC, (0, np.frombuffer(MAGIC * 2, np.float32).tolist(), 0, 0))],
        "large_payloads": large,
        "random_keys": random_keys,
    }


@pytest.fixture(scope="module")
def fixed_results(mxnet_python, tmp_path_factory):
    cases = fixed_cases()
    work_dir = tmp_path_factory.mktemp("mxnet_cases")
    return work_dir, cases, run_cases(mxnet_python, work_dir, cases)


@pytest.mark.parametrize("name", list(fixed_cases()))
def test_same_bytes_as_mxnet_and_readable_both_ways(fixed_results, name):
    work_dir, cases, reports = fixed_results
    check_case(work_dir / name, cases[name], reports[name])


def test_magic_cases_really_split(fixed_results):
    """The aligned-magic case must exercise multi-part records (cflag 1/2/3), the unaligned one must not."""
    work_dir, _, _ = fixed_results
    assert part_flags(work_dir / "magic_aligned" / "mx.rec") & {1, 2, 3} == {1, 2, 3}
    assert part_flags(work_dir / "magic_unaligned" / "mx.rec") == {0}


def part_flags(path):
    """cflags of every record part in a file written by MXNet (walked with plain struct reads)."""
    data, pos, flags = path.read_bytes(), 0, set()
    while pos < len(data):
        lrec = int.from_bytes(data[pos + 4:pos + 8], "little")
        flags.add(lrec >> 29)
        pos += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    return flags


# --------------------------------------------------------------------------- hypothesis, batched

chunks = st.one_of(
    st.just(MAGIC),
    st.binary(min_size=1, max_size=7),
    st.sampled_from([b"\x0a", b"\x23\xd7", b"\xce\x0a\x23", MAGIC[1:] + MAGIC[:1]]),
)
payloads = st.lists(chunks, max_size=8).map(b"".join)
labels = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=4),
)
headers = st.one_of(st.none(), st.tuples(st.just(0), labels, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)))
record_lists = st.lists(
    st.tuples(st.integers(0, 2**31), payloads, headers), min_size=1, max_size=6, unique_by=lambda r: r[0]
)


def test_hypothesis_records_match_mxnet(mxnet_python, tmp_path):
    """Many generated record lists, all checked against MXNet in a single oracle call."""
    examples = []

    @settings(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(record_lists)
    def collect(records):
        examples.append([Record(key, payload, header) for key, payload, header in records])

    collect()
    cases = {f"example_{i}": records for i, records in enumerate(examples)}
    reports = run_cases(mxnet_python, tmp_path, cases)
    for name, records in cases.items():
        check_case(tmp_path / name, records, reports[name])


# --------------------------------------------------------------------------- images

ORACLE_IMAGES = r"""
import json, os, sys
import numpy as np
import mxnet as mx

work = sys.argv[1]
spec = json.load(open(os.path.join(work, "images.json")))
images = np.load(os.path.join(work, "images.npy"))
writer = mx.recordio.MXIndexedRecordIO(os.path.join(work, "mx.idx"), os.path.join(work, "mx.rec"), "w")
for i, image in enumerate(images):
    header = mx.recordio.IRHeader(0, float(spec["labels"][i]), i, 0)
    writer.write_idx(i, mx.recordio.pack_img(header, image, quality=spec["quality"]))
writer.close()

def decode_all(idx, rec):
    reader = mx.recordio.MXIndexedRecordIO(os.path.join(work, idx), os.path.join(work, rec), "r")
    pairs = [mx.recordio.unpack_img(reader.read_idx(k)) for k in reader.keys]
    labels = [float(h.label) for h, _ in pairs]
    return labels, np.stack([img for _, img in pairs])

labels, decoded = decode_all("mx.idx", "mx.rec")
np.save(os.path.join(work, "mx_decoded_mx.npy"), decoded)
our_labels, ours_decoded = decode_all("ours.idx", "ours.rec")
np.save(os.path.join(work, "mx_decoded_ours.npy"), ours_decoded)
print(json.dumps({"labels": labels, "our_labels": our_labels}))
"""


def smooth_images(count, rng):
    """Face-crop-sized BGR images with smooth content, like photos rather than noise."""
    small = rng.integers(0, 256, size=(count, 8, 8, 3)).astype(np.uint8)
    return np.stack([cv2.resize(img, (112, 112), interpolation=cv2.INTER_CUBIC) for img in small])


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def image_results(mxnet_python, tmp_path_factory):
    work = tmp_path_factory.mktemp("mxnet_images")
    images = smooth_images(12, np.random.default_rng(7))
    labels = [float(i // 3) for i in range(len(images))]
    np.save(work / "images.npy", images)
    write_json(work / "images.json", {"labels": labels, "quality": 95})
    with RecordWriter(work / "ours.rec", work / "ours.idx") as writer:
        for i, image in enumerate(images):
            writer.write_idx(i, pack_img(IRHeader(0, labels[i], i, 0), image, quality=95))
    report = run_oracle_json(mxnet_python, ORACLE_IMAGES, [work], cwd=work)
    return work, images, labels, report


def test_we_read_mxnet_pack_img_records(image_results):
    """MXNet's JPEG records: our unpack gives its labels, our cv2 decodes the same pixels as its cv2."""
    work, images, labels, report = image_results
    assert report["labels"] == labels
    mx_decoded = np.load(work / "mx_decoded_mx.npy")
    with IndexedRecordReader(work / "mx.rec") as reader:
        for key in reader.keys:
            header, payload = unpack(reader.read_idx(key))
            assert (header.flag, header.label, header.id) == (0, labels[key], key)
            ours = decode_image(payload, iscolor=-1)
            # Same JPEG bytes, two OpenCV builds: the decoders agree to the pixel.
            np.testing.assert_array_equal(ours, mx_decoded[key])
            assert psnr(ours, images[key]) > 35


def test_same_record_bytes_for_mxnet_jpegs(image_results):
    """Re-packing MXNet's own JPEG bytes under the same headers gives MXNet's file byte for byte."""
    work, _, labels, _ = image_results
    with IndexedRecordReader(work / "mx.rec") as reader:
        records = [(key, unpack(reader.read_idx(key))[1]) for key in reader.keys]
    with RecordWriter(work / "repacked.rec", work / "repacked.idx") as writer:
        for key, jpeg in records:
            writer.write_idx(key, pack(IRHeader(0, labels[key], key, 0), jpeg))
    assert (work / "repacked.rec").read_bytes() == (work / "mx.rec").read_bytes()
    assert (work / "repacked.idx").read_bytes() == (work / "mx.idx").read_bytes()


def test_mxnet_reads_our_pack_img_records(image_results):
    """MXNet's unpack_img decodes our JPEG records to the images we encoded."""
    work, images, labels, report = image_results
    assert report["our_labels"] == labels
    mx_decoded = np.load(work / "mx_decoded_ours.npy")
    with IndexedRecordReader(work / "ours.rec") as reader:
        for key, image in enumerate(images):
            jpeg = unpack(reader.read_idx(key))[1]
            ours = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(mx_decoded[key], ours)
            assert psnr(mx_decoded[key], image) > 35
