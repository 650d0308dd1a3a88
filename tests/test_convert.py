"""`facemae convert` / `merge`: layouts kept, images are reconstructions, shards, resume, errors.

References: the model's own ``reconstruct`` of each decoded input image (one at a time), OpenCV
decoding, the IRHeader bytes of the input records, arcface_torch's reading rules, and real MXNet
(oracle venv) reading every converted record.
"""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from facemae_plugin.cli import main
from facemae_plugin.convert import ConvertSettings, convert
from facemae_plugin.convert.keys import shard_range
from facemae_plugin.convert.workers import convert_batch, make_executor
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.privatizers.baselines import GaussianBlur, Identity, MaskedOnly, Pixelate
from facemae_plugin.formats.recordio import IndexedRecordReader, IRHeader, RecordWriter, encode_image, pack, unpack
from facemae_plugin.core.keyseed import variant_key
from facemae_plugin.privatizers.facemae import ReconstructionStage
from facemae_plugin.privatizers.privatizer import Privatizer
from tests.conftest import smooth_image, write_layout_a
from tests.mxnet_oracle import read_json, run_oracle

SEED = 3
OUTPUT_FILES = ("train.rec", "train.idx", "property", "facemae_provenance.json")


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "facemae.pt"
    torch.manual_seed(0)
    create_facemae("tiny", depth=1, decoder_depth=1).save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def shard_a(tmp_path_factory):
    """Layout A, 5 identities, 20 images, written by FaceShardWriter."""
    path = tmp_path_factory.mktemp("in") / "a"
    write_layout_a(path, [3, 5, 2, 4, 6], seed=1)
    return path


def write_layout_a_array_labels(out_dir, images_per_identity, seed=0):
    """Layout A by hand: array labels [identity, 0.5, key] and id2 = 3 * key on every image."""
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    with RecordWriter(out_dir / "train.rec", out_dir / "train.idx") as writer:
        key, ranges = 1, []
        for identity, count in enumerate(images_per_identity):
            ranges.append((key, key + count))
            for _ in range(count):
                header = IRHeader(0, [identity, 0.5, key], key, 3 * key)
                writer.write_idx(key, pack(header, encode_image(smooth_image(rng))))
                key += 1
        first = key
        for i, (start, end) in enumerate(ranges):
            writer.write_idx(first + i, pack(IRHeader(0, [start, end], first + i, 0), b""))
        writer.write_idx(0, pack(IRHeader(0, [first, first + len(ranges)], 0, 0), b""))
    (out_dir / "property").write_text(f"{len(images_per_identity)},112,112\n")


def write_layout_b(out_dir, keys, labels, seed=0):
    """im2rec-style layout B: keys in the given (unsorted) order, a few array labels, no property."""
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    with RecordWriter(out_dir / "train.rec", out_dir / "train.idx") as writer:
        for key, label in zip(keys, labels):
            writer.write_idx(key, pack(IRHeader(0, label, key, 7), encode_image(smooth_image(rng))))


def read_records(directory):
    """``{key: (IRHeader bytes, payload)}`` in .idx order."""
    reader = IndexedRecordReader(directory / "train.rec", directory / "train.idx")
    records = {}
    for key in reader.keys:
        record = reader.read_idx(key)
        _, payload = unpack(record)
        records[key] = (record[: len(record) - len(payload)], payload)
    reader.close()
    return records


def decode_rgb(payload):
    return cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def reconstruct_reference(model, rgb, mask_key, seed=SEED, output="full", quality=95):
    """uint8 RGB: the model's reconstruct() of one decoded input image under ``mask_key``, after the
    same JPEG round trip (OpenCV, BGR) the released image went through."""
    image = torch.from_numpy((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None]
    out, _ = model.reconstruct(image, 0.75, output, keys=[mask_key], seed=seed)
    pixels = ((out[0].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(pixels[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return decode_rgb(jpeg.tobytes())


def stage(checkpoint, **kwargs):
    return ReconstructionStage.from_checkpoint(checkpoint, seed=kwargs.pop("seed", SEED), device="cpu", **kwargs)


def run_convert(in_dir, out_dir, privatizer, batch_size=4, workers=0, quality=95, **kwargs):
    settings = ConvertSettings(quality=quality, batch_size=batch_size, workers=workers)
    return convert(in_dir, out_dir, privatizer, settings, progress=False, **kwargs)


def output_bytes(directory):
    return {name: (directory / name).read_bytes() for name in OUTPUT_FILES if (directory / name).exists()}


def cli(*args):
    return main(["convert", *map(str, args), "--quiet"])


# --------------------------------------------------------------------------- contents


def test_converted_images_are_the_models_reconstructions(shard_a, checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run_convert(shard_a, out, stage(checkpoint))
    assert (result["images_in"], result["images_out"], result["merged"]) == (20, 20, True)
    source, converted = read_records(shard_a), read_records(out)
    assert list(converted) == [k for k in source if k not in (0,) and k <= 20] + list(range(21, 26)) + [0]
    assert set(converted) == set(source)
    model = stage(checkpoint).model
    errors, wrong_seed = [], []
    for key in range(1, 21):
        assert converted[key][0] == source[key][0]  # IRHeader bytes: flag, label, id, id2
        rgb = decode_rgb(converted[key][1])
        expected = reconstruct_reference(model, decode_rgb(source[key][1]), key)
        errors.append(np.abs(rgb.astype(int) - expected).mean())
        wrong_seed.append(np.abs(rgb.astype(int) - reconstruct_reference(model, decode_rgb(source[key][1]), key,
                                                                           seed=SEED + 1)).mean())
    assert max(errors) < 0.5  # float noise between batched and single-image passes, at most
    assert min(wrong_seed) > 3 * max(errors)  # the comparison can tell masks apart
    for key in range(21, 26):  # identity records and header copied verbatim (k = 1)
        assert converted[key] == source[key]
    assert converted[0] == source[0]
    assert (out / "property").read_bytes() == (shard_a / "property").read_bytes()
    provenance = json.loads((out / "facemae_provenance.json").read_text())
    assert provenance["privatizer"]["checkpoint"] == os.path.basename(checkpoint)  # its sha256 identifies it
    assert provenance["privatizer"]["seed"] == SEED and provenance["source"]["images"] == 20
    assert not (out / "shards").exists()


def test_jpeg_quality_is_configurable(shard_a, checkpoint, tmp_path):
    run_convert(shard_a, tmp_path / "q95", stage(checkpoint))
    run_convert(shard_a, tmp_path / "q50", stage(checkpoint), quality=50)
    size95 = (tmp_path / "q95" / "train.rec").stat().st_size
    size50 = (tmp_path / "q50" / "train.rec").stat().st_size
    assert size50 < 0.7 * size95
    source, converted = read_records(shard_a), read_records(tmp_path / "q50")
    model = stage(checkpoint).model
    for key in (1, 20):
        expected = reconstruct_reference(model, decode_rgb(source[key][1]), key, quality=50)
        assert np.abs(decode_rgb(converted[key][1]).astype(int) - expected).mean() < 0.5


def arcface_rules(directory):
    """What MXFaceDataset does: key 0 header -> image keys range(1, a), their labels."""
    reader = IndexedRecordReader(directory / "train.rec", directory / "train.idx")
    header, _ = unpack(reader.read_idx(0))
    a, b = int(header.label[0]), int(header.label[1])
    labels = {}
    for key in range(1, a):
        h, _ = unpack(reader.read_idx(key))
        labels[key] = int(h.label if np.isscalar(h.label) else h.label[0])
    ranges = [tuple(int(v) for v in unpack(reader.read_idx(key))[0].label) for key in range(a, b)]
    return labels, ranges


def test_k_reconstructions_keep_layout_a_consistent(shard_a, checkpoint, tmp_path):
    k = 3
    out = tmp_path / "out"
    run_convert(shard_a, out, stage(checkpoint, k=k), batch_size=5)
    labels_in, ranges_in = arcface_rules(shard_a)
    labels_out, ranges_out = arcface_rules(out)
    assert len(labels_out) == k * len(labels_in) and len(ranges_out) == len(ranges_in)
    for identity, ((start, end), (new_start, new_end)) in enumerate(zip(ranges_in, ranges_out)):
        assert (new_start, new_end) == (1 + (start - 1) * k, 1 + (end - 1) * k)  # contiguous per identity
        assert all(labels_out[key] == labels_in[start] for key in range(new_start, new_end))
    source, converted = read_records(shard_a), read_records(out)
    model = stage(checkpoint).model
    for key in (1, 9, 20):
        rgb_in = decode_rgb(source[key][1])
        copies = [decode_rgb(converted[1 + (key - 1) * k + j][1]) for j in range(k)]
        for j, rgb in enumerate(copies):
            assert converted[1 + (key - 1) * k + j][0] == source[key][0]  # header kept, id names the source
            expected = reconstruct_reference(model, rgb_in, variant_key(key, j))
            assert np.abs(rgb.astype(int) - expected).mean() < 0.5
        assert np.abs(copies[0].astype(int) - copies[1]).mean() > 3.0  # each copy has its own mask


def test_layout_b_keeps_keys_labels_and_appends_variants(checkpoint, tmp_path):
    keys = [7, 2, 30, 4, 11, 5]
    labels = [1.0, 0.0, [2.0, 9.0], 1.0, [0.0, 1.5, 2.5], 2.0]
    write_layout_b(tmp_path / "b", keys, labels)
    run_convert(tmp_path / "b", tmp_path / "k1", stage(checkpoint), batch_size=4)
    source, converted = read_records(tmp_path / "b"), read_records(tmp_path / "k1")
    assert list(converted) == keys  # same keys, same order, no header added
    assert all(converted[key][0] == source[key][0] for key in keys)
    assert not (tmp_path / "k1" / "property").exists()

    run_convert(tmp_path / "b", tmp_path / "k2", stage(checkpoint, k=2), batch_size=4)
    doubled = read_records(tmp_path / "k2")
    extra = [31 + p for p in range(len(keys))]  # max_key + 1 + p*(k-1) + (j-1)
    assert sorted(doubled) == sorted(keys + extra)
    model = stage(checkpoint).model
    for p, key in enumerate(keys):
        assert doubled[key][0] == doubled[extra[p]][0] == source[key][0]
        expected = reconstruct_reference(model, decode_rgb(source[key][1]), variant_key(key, 1))
        assert np.abs(decode_rgb(doubled[extra[p]][1]).astype(int) - expected).mean() < 0.5


MXNET_READ_BOTH = r"""
import json, sys
import numpy as np
import mxnet as mx

def describe(shard):
    rec = mx.recordio.MXIndexedRecordIO(shard + "/train.idx", shard + "/train.rec", "r")
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    a, b = int(header.label[0]), int(header.label[1])
    records = {}
    shapes = set()
    for key in rec.keys:
        h, payload = mx.recordio.unpack(rec.read_idx(key))
        label = [float(v) for v in np.atleast_1d(h.label)]
        records[str(key)] = [int(h.flag), label, int(h.id), int(h.id2)]
        if 1 <= key < a:
            shapes.add(mx.image.imdecode(payload).shape)
    labels = []
    for key in range(1, a):  # MXFaceDataset
        h, _ = mx.recordio.unpack(rec.read_idx(key))
        labels.append(int(h.label if isinstance(h.label, (int, float)) else h.label[0]))
    return {"header": [a, b], "keys": [int(k) for k in rec.keys], "records": records, "labels": labels,
            "shapes": sorted(map(list, shapes))}

json.dump({"in": describe(sys.argv[1]), "out": describe(sys.argv[2])}, open(sys.argv[3], "w"))
"""


def test_mxnet_reads_every_converted_record_like_the_input(checkpoint, tmp_path, mxnet_python):
    write_layout_a_array_labels(tmp_path / "in", [3, 2, 4])
    run_convert(tmp_path / "in", tmp_path / "out", stage(checkpoint), batch_size=2)
    run_oracle(mxnet_python, MXNET_READ_BOTH, [tmp_path / "in", tmp_path / "out", tmp_path / "both.json"],
               cwd=tmp_path)
    both = read_json(tmp_path / "both.json")
    source, converted = both["in"], both["out"]
    assert converted["header"] == source["header"] == [10, 13]
    assert sorted(converted["keys"]) == sorted(source["keys"])
    assert converted["records"] == source["records"]  # flag, array label, id, id2 of every key
    assert converted["labels"] == source["labels"] == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert converted["shapes"] == [[112, 112, 3]]


def test_masked_baseline_through_the_converter(shard_a, checkpoint, tmp_path):
    run_convert(shard_a, tmp_path / "out", MaskedOnly(patch_size=8, mask_ratio=0.75, seed=SEED))
    source, converted = read_records(shard_a), read_records(tmp_path / "out")
    model = stage(checkpoint).model
    for key in (1, 12):
        original = decode_rgb(source[key][1])
        image = torch.from_numpy(original.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        _, mask = model.reconstruct(image, 0.75, keys=[key], seed=SEED)  # FaceMAE's own mask, [1, 196]
        hidden = mask[0].bool().numpy().reshape(14, 14).repeat(8, 0).repeat(8, 1)  # [112, 112] pixels
        expected = original.copy()
        expected[hidden] = 128  # grey: 127.5 rounded
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(expected[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert converted[key][1] == jpeg.tobytes()


# --------------------------------------------------------------------------- shards and determinism


def test_shard_ranges_cover_the_images_on_batch_boundaries():
    for n, batch, shards in [(20, 4, 4), (21, 4, 4), (3, 4, 4), (100, 7, 3)]:
        ranges = [shard_range(n, batch, shards, i) for i in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % batch == 0 for start, _ in ranges)


def test_one_shard_and_four_shards_give_the_same_bytes(shard_a, checkpoint, tmp_path):
    run_convert(shard_a, tmp_path / "one", stage(checkpoint, k=2), batch_size=3)
    result = run_convert(shard_a, tmp_path / "four", stage(checkpoint, k=2), batch_size=3, num_shards=4, workers=1)
    assert result["shards_run"] == [0, 1, 2, 3]
    one, four = output_bytes(tmp_path / "one"), output_bytes(tmp_path / "four")
    assert set(one) == set(OUTPUT_FILES) and one == four
    run_convert(shard_a, tmp_path / "again", stage(checkpoint, k=2), batch_size=3)
    assert output_bytes(tmp_path / "again") == one
    run_convert(shard_a, tmp_path / "seed", stage(checkpoint, k=2, seed=SEED + 1), batch_size=3)
    assert output_bytes(tmp_path / "seed")["train.rec"] != one["train.rec"]


def test_separate_shard_runs_then_merge(shard_a, checkpoint, tmp_path, capsys):
    run_convert(shard_a, tmp_path / "whole", stage(checkpoint), batch_size=4)
    out = tmp_path / "parts"
    common = ["--checkpoint", checkpoint, "--seed", SEED, "--batch-size", 4, "--workers", 0, "--num-shards", 3]
    for shard in (0, 2):
        assert cli(shard_a, out, *common, "--shard", shard) == 0
    assert not (out / "train.rec").exists()
    capsys.readouterr()
    assert main(["merge", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "shard(s) [1] of 3 are not finished" in error[0]
    assert cli(shard_a, out, *common, "--shard", 1) == 0
    assert main(["merge", str(out), "--json"]) == 0
    assert output_bytes(out) == output_bytes(tmp_path / "whole")


def test_rerun_redoes_only_unfinished_shards(shard_a, checkpoint, tmp_path):
    run_convert(shard_a, tmp_path / "whole", stage(checkpoint), batch_size=3)
    out = tmp_path / "out"
    for shard in (0, 2):
        run_convert(shard_a, out, stage(checkpoint), batch_size=3, num_shards=4, shard=shard)
    shards = out / "shards"
    # what a kill leaves: a writer's temp file, and a shard renamed into place before its marker
    (shards / "shard-1of4.rec.tmp-99999").write_bytes(b"half a shard")
    (shards / "shard-3of4.rec").write_bytes(b"no marker, so not done")
    (shards / "shard-3of4.idx").write_text("1\t0\n")
    result = run_convert(shard_a, out, stage(checkpoint), batch_size=3, num_shards=4)
    assert (result["shards_run"], result["shards_skipped"]) == ([1, 3], [0, 2])
    assert result["images_converted"] == sum(e - s for s, e in (shard_range(20, 3, 4, i) for i in (1, 3)))
    assert output_bytes(out) == output_bytes(tmp_path / "whole")
    assert not shards.exists()  # merged, shards cleaned up


def test_a_stop_while_a_writer_opens_its_files_leaves_no_temporary_file(shard_a, checkpoint, tmp_path, monkeypatch):
    opened = []

    class StoppedInConstructor(RecordWriter):  # SIGTERM raises wherever Python next checks signals: say, here
        def __init__(self, *paths):
            super().__init__(*paths)
            opened.append(self.rec_path)
            if len(opened) == 2:  # the second shard's: the first is finished, so the output is kept
                raise KeyboardInterrupt

    monkeypatch.setattr("facemae_plugin.convert.job.RecordWriter", StoppedInConstructor)
    # kept, the traceback keeps the half-built writer alive, as a process exiting on SIGTERM does
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_convert(shard_a, tmp_path / "out", stage(checkpoint), batch_size=3, num_shards=4)
    shards = tmp_path / "out" / "shards"
    assert (shards / "shard-0of4.done.json").is_file() and stopped.traceback
    assert sorted(p.name for p in shards.iterdir() if ".tmp-" in p.name) == []


@pytest.mark.slow
def test_killed_conversion_leaves_nothing_whole_and_resumes_to_the_same_bytes(checkpoint, tmp_path):
    source = tmp_path / "in"
    write_layout_a(source, [20] * 40, seed=5)  # 800 images
    run_convert(source, tmp_path / "reference", stage(checkpoint), batch_size=8)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "facemae_plugin.cli", "convert", str(source), str(out), "--checkpoint",
               str(checkpoint), "--seed", str(SEED), "--batch-size", "8", "--workers", "1", "--num-shards", "4",
               "--quiet", "--json"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_marker = out / "shards" / "shard-0of4.done.json"
    deadline = time.monotonic() + 300
    while not first_marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the conversion finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the converter, its forkserver and workers, like a lost node
    process.wait()

    assert not (out / "train.rec").exists() and not (out / "train.idx").exists()
    done = sorted(p.name for p in (out / "shards").glob("*.done.json"))
    assert "shard-0of4.done.json" in done and len(done) < 4
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert 0 in summary["shards_skipped"] and summary["shards_run"] and summary["merged"]
    assert output_bytes(out) == output_bytes(tmp_path / "reference")


def _session_processes(session_id):
    """``{pid: command line}`` of the live processes in session ``session_id`` (Linux /proc)."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _, _, session = f.read().rsplit(")", 1)[1].split()[:4]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        if int(session) == session_id and state != "Z":
            found[int(entry)] = cmdline
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="lists processes through /proc (Linux only)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_converter_killed_alone_leaves_no_worker_running(checkpoint, tmp_path, sig):
    """``kill PID`` or ``docker stop`` signal the converter only, not its forkserver and workers."""
    source = tmp_path / "in"
    write_layout_a(source, [20] * 40, seed=5)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "facemae_plugin.cli", "convert", str(source), str(out), "--checkpoint",
               str(checkpoint), "--batch-size", "8", "--workers", "2", "--num-shards", "4", "--quiet"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first_marker = out / "shards" / "shard-0of4.done.json"
        deadline = time.monotonic() + 300
        while not first_marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the conversion finished before it could be killed"
        process.send_signal(sig)
        returncode = process.wait(timeout=60)
        deadline = time.monotonic() + 3 * 10
        while _session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _session_processes(process.pid), "left running after the converter ended"
    finally:
        if _session_processes(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert not (out / "train.rec").exists()
    if sig == signal.SIGTERM:  # a clean stop: exit status 128 + 15, no half-written file left
        assert returncode == 143, process.stderr.read().decode()
        assert not list((out / "shards").glob("*.tmp*"))
    assert (out / "shards" / "shard-0of4.done.json").exists(), "finished shards are kept for the resume"


# --------------------------------------------------------------------------- refusals


def one_error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_existing_output_is_refused_without_overwrite(shard_a, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = [shard_a, out, "--checkpoint", checkpoint, "--workers", 0]
    assert cli(*args) == 0
    before = output_bytes(out)
    capsys.readouterr()
    assert cli(*args) == 2
    assert f"{out}: already holds a converted dataset" in one_error_line(capsys)
    assert output_bytes(out) == before
    assert cli(*args, "--seed", 9, "--overwrite") == 0
    assert output_bytes(out)["train.rec"] != before["train.rec"]
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli(shard_a, other, "--checkpoint", checkpoint, "--workers", 0) == 2
    assert "holds other files (notes.txt)" in one_error_line(capsys)


def test_shards_of_other_settings_are_not_mixed(shard_a, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    common = [shard_a, out, "--checkpoint", checkpoint, "--workers", 0, "--num-shards", 2]
    assert cli(*common, "--shard", 0) == 0
    capsys.readouterr()
    assert cli(*common, "--shard", 1, "--seed", 1) == 2
    assert "shard-0of2.done.json: a shard of a different conversion (differs in privatizer" in one_error_line(capsys)


def test_undecodable_image_names_its_key_and_leaves_no_output(checkpoint, tmp_path, capsys):
    write_layout_b(tmp_path / "b", [1, 2, 3], [0.0, 1.0, 1.0])
    records = read_records(tmp_path / "b")
    broken = tmp_path / "broken"
    broken.mkdir()
    with RecordWriter(broken / "train.rec", broken / "train.idx") as writer:
        for key, (header, payload) in records.items():
            writer.write_idx(key, header + (b"\xff\xd8garbage" if key == 2 else payload))
    assert cli(broken, tmp_path / "out", "--checkpoint", checkpoint, "--workers", 1) == 2
    line = one_error_line(capsys)
    assert "train.rec key 2" in line and "not a decodable image" in line
    assert not (tmp_path / "out" / "train.rec").exists()
    assert not list((tmp_path / "out" / "shards").glob("shard-*"))


@pytest.mark.parametrize("case", ["missing", "corrupt", "recogniser", "not_a_shard"])
def test_bad_inputs_get_one_clear_line(case, shard_a, checkpoint, tmp_path, capsys):
    source, model = shard_a, checkpoint
    if case == "missing":
        model, expected = tmp_path / "nope.pt", "nope.pt: FaceMAE checkpoint file not found"
    elif case == "corrupt":
        model = tmp_path / "broken.pt"
        model.write_bytes(checkpoint.read_bytes()[:5000])
        expected = "broken.pt: not a readable torch checkpoint"
    elif case == "recogniser":
        model = tmp_path / "model.pt"
        torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "fc.weight": torch.zeros(512, 10)}, model)
        expected = "model.pt: this looks like a recogniser state_dict"
    else:
        source = tmp_path / "empty"
        source.mkdir()
        expected = "empty: not a face shard, train.rec is missing"
    assert cli(source, tmp_path / "out", "--checkpoint", model, "--workers", 0) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "out" / "train.rec").exists()


@pytest.mark.slow
def test_torchrun_ranks_write_one_shard_each_and_rank0_merges(shard_a, checkpoint, tmp_path):
    run_convert(shard_a, tmp_path / "whole", stage(checkpoint), batch_size=4)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "facemae_plugin.cli", "convert", str(shard_a), str(out), "--checkpoint", str(checkpoint),
               "--seed", str(SEED), "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["shards_run"][0] for s in summaries) == [0, 1]
    assert all(s["num_shards"] == 2 for s in summaries)
    assert output_bytes(out) == output_bytes(tmp_path / "whole")


# --------------------------------------------------------------------------- privatizers in the workers


class InProcess(Privatizer):
    """A privatizer without its worker op: the converter runs it in its own process with torch."""

    def __init__(self, privatizer):
        super().__init__(privatizer.k)
        self.inner = privatizer

    def check_image_size(self, size):
        self.inner.check_image_size(size)

    def variants(self, images, keys):
        return self.inner.variants(images, keys)

    def provenance(self):
        return self.inner.provenance()


@pytest.mark.parametrize("privatizer", [
    Identity(k=2), GaussianBlur(2.0, k=2), Pixelate(5), MaskedOnly(patch_size=8, mask_ratio=0.75, seed=SEED, k=2),
], ids=lambda p: p.method)
def test_worker_path_and_in_process_path_write_the_same_bytes(privatizer, tmp_path):
    source = tmp_path / "b"
    write_layout_b(source, [9, 4, 30, 2, 17], [1.0, [2.0, 0.5], 0.0, 3.0, [1.0, 4.0]], seed=2)
    run_convert(source, tmp_path / "workers", privatizer, batch_size=2, workers=1)
    run_convert(source, tmp_path / "parent", InProcess(privatizer), batch_size=2, workers=1)
    workers, parent = output_bytes(tmp_path / "workers"), output_bytes(tmp_path / "parent")
    assert workers["train.rec"] and workers == parent


def test_decode_workers_never_import_torch(shard_a):
    executor = make_executor(str(shard_a), 1)
    try:
        keys = [1, 2, 3]
        executor.submit(convert_batch, keys, MaskedOnly(seed=SEED).worker_op(), 1, 95).result()
        assert executor.submit(eval, "'torch' in __import__('sys').modules").result() is False
    finally:
        executor.shutdown()

