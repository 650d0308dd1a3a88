"""Bad input through the real command line: exit 2, one line naming what is wrong, nothing else touched.

Every row runs ``facemae VERB ...`` in a subprocess inside a fresh copy of a small workspace
(``tests/workspace.py``). Each asserts the exit status, that stderr is exactly one
``facemae VERB: error: ...`` line matching the row's pattern, that every file that existed before
has the same bytes afterwards, and that no temporary file is left behind.
"""
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest
import torch

from facemae_plugin.core.files import OutputLock, write_json
from facemae_plugin.formats.recordio import IRHeader, RecordWriter, pack, read_index
from facemae_plugin.formats.shard import FaceShard
from tests.conftest import hostile_pickle, write_layout_a, write_layout_b
from tests.workspace import IDENTITY_SIZES, build_workspace, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def ws(pristine, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(pristine, root, symlinks=True)
    return root


def facemae(ws, *argv, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": REPO}
    env.pop("FACEMAE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "facemae_plugin.cli", *map(str, argv), "--quiet"], cwd=ws,
                          capture_output=True, text=True, timeout=timeout, env=env)


def assert_refused(ws, argv, pattern, before=None):
    """Run ``argv``: exit 2, one error line matching ``pattern``, old files unchanged, no temp files."""
    before = snapshot(ws) if before is None else before
    result = facemae(ws, *argv)
    lines = result.stderr.strip().splitlines()
    shown = f"exit {result.returncode}, stderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 2, shown
    assert len(lines) == 1 and lines[0].startswith(f"facemae {argv[0]}: error: "), shown
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    after = snapshot(ws)
    changed = sorted(path for path, digest in before.items() if after.get(path) != digest)
    assert not changed, f"changed or removed: {changed}"
    leftovers = sorted(path for path in set(after) - set(before) if ".tmp-" in path or path.endswith(".tmp"))
    assert not leftovers, f"temporary files left: {leftovers}"
    assert not (ws / "pwned").exists(), "a hostile pickle ran"
    return lines[0]


# ----------------------------------------------------------------------------- file makers


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


def bin_with(ws, bins, issame, name="bad.bin"):
    write(ws / name, pickle.dumps((bins, issame), protocol=2))


def val_images(ws, pairs):
    with open(ws / "val.bin", "rb") as f:
        images, _ = pickle.load(f)  # the workspace's own file
    return images[:2 * pairs]


def recogniser_variant(ws, name, how):
    data = (ws / "mbf.pt").read_bytes()
    write(ws / name, {"empty": b"", "truncated": data[:len(data) // 2], "hostile": hostile_pickle(ws / "pwned")}[how])


def mae_checkpoint_with(ws, name, **changes):
    checkpoint = torch.load(ws / "mae.pt", weights_only=True)
    for key, value in changes.items():
        if key == "config":
            checkpoint["config"] = value
        else:
            checkpoint["config"][key] = value
    torch.save(checkpoint, ws / name)


def onnx_graph(ws, name, input_shape):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, input_shape)
    graph = helper.make_graph([helper.make_node("Identity", ["data"], ["out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(ws / name))


def recipe(ws, name, text):
    write(ws / name, "from easydict import EasyDict as edict\n" + text)


TRAIN_RECIPE = ("config = edict(network='mbf', rec='{rec}', num_classes=4, num_epoch=1, batch_size=2, "
                "num_workers={workers}, val_targets=[], output='train_out', margin_list=(1.0, 0.0, 0.4){extra})\n")
PRETRAIN_RECIPE = ("config = edict(rec='ds', batch_size=4, num_epoch=1, num_workers=0, output='pre_out', optimizer='adamw', "
                   "mae=edict(preset='tiny'){extra})\n")


def train_recipe(ws, name, rec="ds", workers=0, extra=""):
    recipe(ws, name, TRAIN_RECIPE.format(rec=rec, workers=workers, extra=extra))


def broken_record_shard(ws, name="broken"):
    """``ds`` with the JPEG of image key 5 replaced by garbage (framing intact)."""
    (ws / name).mkdir()
    with FaceShard(ws / "ds") as shard:
        records = {key: shard.reader.read_idx(key) for key in shard.reader.keys}
    with RecordWriter(ws / name / "train.rec", ws / name / "train.idx") as writer:
        for key, record in records.items():
            header = record[:24]  # IRHeader of a scalar-label image record
            writer.write_idx(key, header + b"\xff\xd8garbage" if key == 5 else record)
    shutil.copy(ws / "ds" / "property", ws / name / "property")


def misframed_shard(ws, name="misframed"):
    """``ds`` whose .idx points image key 5 into the middle of record 1 (no record starts there)."""
    shutil.copytree(ws / "ds", ws / name)
    index = dict(read_index(ws / name / "train.idx"))
    index[5] = index[1] + 4
    write(ws / name / "train.idx", "".join(f"{k}\t{v}\n" for k, v in index.items()))


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_label_in_place(rec_path, offset, new_label):
    """Overwrite the float32 label of the record at ``offset`` (same size, same .idx)."""
    data = bytearray(rec_path.read_bytes())
    data[offset + 12:offset + 16] = np.float32(new_label).tobytes()
    rec_path.write_bytes(bytes(data))


def first_convert(ws, *extra):
    result = facemae(ws, "convert", "ds", "out", "--method", "blur", "--workers", 0, "--batch-size", 4, *extra)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- the table


@dataclass
class Row:
    id: str
    argv: tuple
    expect: str
    setup: Optional[Callable] = None
    needs: tuple = field(default=())


NO_CUDA = ("no-cuda",)

ROWS = [
    # 1. an output that is the input, named by its .rec file
    Row("convert-into-own-input", ("convert", "ds/train.rec", "ds", "--method", "blur", "--overwrite"),
        r"ds: is \(or overlaps\) the input"),
    Row("convert-into-parent-of-input", ("convert", "ds/train.rec", ".", "--method", "blur", "--overwrite"),
        r"overlaps\) the input"),
    # 2. rec2folder: existing output, links, a failing record
    Row("rec2folder-existing-output", ("rec2folder", "ds", "out"), r"out: output folder exists; pass --overwrite",
        lambda ws: write(ws / "out" / "0" / "keep.txt", "mine")),
    Row("rec2folder-output-is-a-link", ("rec2folder", "ds", "out", "--overwrite"), r"out: is a symbolic link",
        lambda ws: os.symlink(ws / "faces", ws / "out")),
    Row("rec2folder-bad-record", ("rec2folder", "misframed", "out"), r"misframed/train.rec.*key 5|offset",
        misframed_shard),
    # 3. verification labels
    Row("bin-issame-strings", ("verify", "bad.bin", "--model", "mbf.pt", "--network", "mbf"),
        r"bad.bin: issame\[0\] is 'False' \(str\), expected a boolean",
        lambda ws: bin_with(ws, val_images(ws, 12), ["False", "True"] * 6)),
    Row("bin-issame-none", ("inspect", "bad.bin"), r"issame\[1\] is None",
        lambda ws: bin_with(ws, val_images(ws, 12), [True, None] * 6)),
    Row("bin-issame-half", ("inspect", "bad.bin"), r"issame\[0\] is 0.5",
        lambda ws: bin_with(ws, val_images(ws, 12), [0.5, True] * 6)),
    Row("bin-issame-bytes", ("inspect", "bad.bin"), r"issame\[0\] is b'\\x01'",
        lambda ws: bin_with(ws, val_images(ws, 12), [b"\x01", True] * 6)),
    Row("bin-bins-not-a-list", ("inspect", "bad.bin"), r"bad.bin: bins is a int, expected a list",
        lambda ws: bin_with(ws, 5, [True])),
    Row("bin-issame-not-a-list", ("inspect", "bad.bin"), r"bad.bin: issame is a int, expected a list",
        lambda ws: bin_with(ws, val_images(ws, 1), 7)),
    Row("bin-zero-pairs", ("inspect", "bad.bin"), r"bad.bin: holds no pairs", lambda ws: bin_with(ws, [], [])),
    Row("bin-hostile", ("inspect", "bad.bin"), r"bad.bin: refused to load posix.system",
        lambda ws: write(ws / "bad.bin", hostile_pickle(ws / "pwned"))),
    # 4. outputs replaced without --overwrite, inputs destroyed
    Row("folder2rec-over-a-shard", ("folder2rec", "faces", "ds"), r"ds/train.rec: a shard file exists; pass --overwrite"),
    Row("folder2rec-into-its-input", ("folder2rec", "faces", "faces", "--overwrite"), r"faces: is \(or overlaps\)"),
    Row("folder2rec-inside-its-input", ("folder2rec", "faces", "faces/ds"),
        r"faces/ds: lies inside the input folder faces, which is read whole"),
    Row("synth-over-a-shard", ("synth", "ds", "--identities", 2, "--images-per-identity", 2,
                               "--holdout-identities", 2, "--pairs", 2), r"ds/train.rec: a shard file exists"),
    Row("pairs2bin-onto-its-image", ("pairs2bin", "pairs.txt", "faces/a/0.jpg", "--overwrite"),
        r"faces/a/0.jpg: is \(or overlaps\) the input"),
    Row("pairs2bin-onto-its-list", ("pairs2bin", "pairs.txt", "pairs.txt", "--overwrite"), r"pairs.txt: is \(or overlaps\)"),
    Row("pairs2bin-over-a-bin", ("pairs2bin", "pairs.txt", "val.bin"), r"val.bin: output exists; pass --overwrite"),
    Row("pairs2bin-onto-a-directory", ("pairs2bin", "pairs.txt", "faces", "--overwrite"), r"faces: is \(or overlaps\)|is a directory"),
    Row("pairs2bin-onto-a-new-directory", ("pairs2bin", "pairs.txt", "empty_dir", "--overwrite"), r"empty_dir: is a directory",
        lambda ws: (ws / "empty_dir").mkdir()),
    Row("export-over-an-onnx", ("export", "mbf.pt", "old.onnx", "--network", "mbf"), r"old.onnx: output exists",
        lambda ws: write(ws / "old.onnx", "an older export")),
    Row("export-onto-its-input", ("export", "mbf.pt", "mbf.pt", "--network", "mbf", "--overwrite"), r"mbf.pt: is \(or overlaps\)"),
    Row("split-same-outputs", ("split", "ds", "a", "a"), r"a: OUT_A and OUT_B are the same folder"),
    Row("split-over-its-input", ("split", "ds", "ds", "b", "--overwrite"), r"ds: is \(or overlaps\) the input"),
    # 6. one line where tracebacks were
    Row("verify-empty-pt", ("verify", "val.bin", "--model", "empty.pt", "--network", "mbf"),
        r"empty.pt: not a readable torch checkpoint", lambda ws: recogniser_variant(ws, "empty.pt", "empty")),
    Row("verify-truncated-pt", ("verify", "val.bin", "--model", "cut.pt", "--network", "mbf"),
        r"cut.pt: not a readable torch checkpoint", lambda ws: recogniser_variant(ws, "cut.pt", "truncated")),
    Row("verify-hostile-pt", ("verify", "val.bin", "--model", "evil.pt", "--network", "mbf"),
        r"evil.pt: not a readable torch checkpoint", lambda ws: recogniser_variant(ws, "evil.pt", "hostile")),
    Row("verify-wrong-network", ("verify", "val.bin", "--model", "mbf.pt", "--network", "r18"),
        r"mbf.pt does not fit network 'r18'"),
    Row("verify-facemae-as-recogniser", ("verify", "val.bin", "--model", "mae.pt", "--network", "mbf"),
        r"mae.pt is not a backbone state_dict"),
    Row("export-truncated-pt", ("export", "cut.pt", "out.onnx", "--network", "mbf"),
        r"cut.pt: not a readable torch checkpoint", lambda ws: recogniser_variant(ws, "cut.pt", "truncated")),
    Row("export-hostile-facemae", ("export", "out.onnx", "--facemae", "evil.pt"),
        r"evil.pt: not a readable torch checkpoint", lambda ws: recogniser_variant(ws, "evil.pt", "hostile")),
    Row("irm-teacher-empty", ("pretrain", "pre.py", "--device", "cpu"), r"empty.pt: not a readable torch checkpoint",
        lambda ws: (recogniser_variant(ws, "empty.pt", "empty"), recipe(ws, "pre.py", PRETRAIN_RECIPE.format(
            extra=", irm=edict(weight=1.0, teacher='empty.pt', network='mbf')"))) ),
    Row("pretrain-resume-truncated", ("pretrain", "pre.py", "--resume", "--device", "cpu"),
        r"pre_out/resume.pt: not a readable torch checkpoint",
        lambda ws: (recipe(ws, "pre.py", PRETRAIN_RECIPE.format(extra="")),
                    write(ws / "pre_out" / "resume.pt", (ws / "mbf.pt").read_bytes()[:999]))),
    Row("pretrain-resume-of-another-model", ("pretrain", "pre.py", "--resume", "--device", "cpu"),
        r"pre_out/resume.pt: expected a resume state",
        lambda ws: (recipe(ws, "pre.py", PRETRAIN_RECIPE.format(extra="")),
                    write(ws / "pre_out" / "resume.pt", (ws / "mbf.pt").read_bytes()))),
    Row("onnx-text-file", ("verify", "val.bin", "--model", "notes.onnx"), r"notes.onnx: not a loadable ONNX model",
        lambda ws: write(ws / "notes.onnx", "this is not a model\n")),
    Row("onnx-rank-2-input", ("verify", "val.bin", "--model", "flat.onnx"), r"flat.onnx: not a face recogniser graph",
        lambda ws: onnx_graph(ws, "flat.onnx", ["N", 10])),
    Row("worker-bad-record", ("train", "tr.py", "--device", "cpu"), r"broken/train.rec key 5: 9 payload bytes .* are not a decodable image",
        lambda ws: (broken_record_shard(ws), train_recipe(ws, "tr.py", rec="broken", workers=2))),
    Row("layout-b-label-inf", ("inspect", "b"), r"b/train.rec key 0: expected an integer identity label .* got inf",
        lambda ws: write_layout_b(ws / "b", [float("inf"), 1, 2])),
    Row("layout-b-label-nan", ("inspect", "b"), r"key 1: expected an integer identity label .* got nan",
        lambda ws: write_layout_b(ws / "b", [0, float("nan"), 2])),
    Row("layout-b-label-1e30", ("inspect", "b"), r"key 2: expected an integer identity label .* got 1\.00000",
        lambda ws: write_layout_b(ws / "b", [0, 1, 1e30])),
    Row("config-lr-string", ("train", "tr.py"), r"tr.py: config.lr='fast' \(str\), expected a finite number",
        lambda ws: train_recipe(ws, "tr.py", extra=", lr='fast'")),
    Row("config-batch-size-0", ("train", "tr.py"), r"tr.py: config.batch_size=0, expected a value in \[1, inf\)",
        lambda ws: recipe(ws, "tr.py", TRAIN_RECIPE.format(rec="ds", workers=0, extra="").replace(
            "batch_size=2", "batch_size=0"))),
    Row("config-mask-ratio-string", ("pretrain", "pre.py"), r"config.mae.mask_ratio='0.75' \(str\)",
        lambda ws: recipe(ws, "pre.py", PRETRAIN_RECIPE.format(extra="").replace(
            "preset='tiny'", "preset='tiny', mask_ratio='0.75'"))),
    Row("config-raises", ("train", "tr.py"), r"tr.py: raised ZeroDivisionError while loading",
        lambda ws: recipe(ws, "tr.py", "x = 1 / 0\n")),
    Row("config-syntax-error", ("train", "tr.py"), r"tr.py:2: syntax error", lambda ws: recipe(ws, "tr.py", "config = edict(\n")),
    Row("config-unknown-key", ("train", "tr.py"), r"tr.py: unknown key 'learning_rate'; expected one of margin_list, network",
        lambda ws: train_recipe(ws, "tr.py", extra=", learning_rate=0.1")),
    Row("protocol-a-list", ("demo", "work", "--protocol", "proto.py"), r"protocol must be a dict, got list",
        lambda ws: write(ws / "proto.py", "protocol = [1]\n")),
    Row("device-banana", ("verify", "val.bin", "--model", "mbf.pt", "--network", "mbf", "--device", "banana"),
        r"argument --device: 'banana' is not a torch device; expected cpu, cuda or cuda:N"),
    Row("device-cuda-without-gpu", ("verify", "val.bin", "--model", "mbf.pt", "--network", "mbf", "--device", "cuda"),
        r"argument --device: 'cuda': CUDA is not available on this machine", needs=NO_CUDA),
    Row("sigma-inf", ("convert", "ds", "out", "--method", "blur", "--sigma", "inf"),
        r"argument --sigma: expected a value in \(0.0, inf\), got inf"),
    Row("sigma-too-wide", ("convert", "ds", "out", "--method", "blur", "--sigma", "40"),
        r"blur sigma 40.0 needs a 241-pixel kernel, too wide for 112x112 images"),
    Row("masked-patch-5", ("convert", "ds", "out", "--method", "masked", "--patch-size", 5),
        r"--patch-size 5 does not divide the 112x112 images"),
    Row("merge-marker-bad-name", ("merge", "out"), r"shard-xofy.done.json: not a shard marker name",
        lambda ws: write(ws / "out" / "shards" / "shard-xofy.done.json", "{}")),
    Row("merge-marker-empty-object", ("merge", "out"), r"shard-0of1.done.json: unreadable shard marker",
        lambda ws: write(ws / "out" / "shards" / "shard-0of1.done.json", "{}")),
    Row("merge-marker-not-json", ("merge", "out"), r"shard-0of1.done.json: unreadable shard marker",
        lambda ws: write(ws / "out" / "shards" / "shard-0of1.done.json", b"\xff\xfe{")),
    Row("property-not-utf8", ("inspect", "ds"), r"ds/property: expected 'num_classes,height,width'",
        lambda ws: write(ws / "ds" / "property", b"\xff\xfe4,112,112\n")),
    Row("property-huge-size", ("inspect", "ds"), r"ds/property: expected a class count >= 0 and an image size",
        lambda ws: write(ws / "ds" / "property", "4,100000,112\n")),
    Row("pairs-not-utf8", ("pairs2bin", "bad_pairs.txt", "new.bin"), r"bad_pairs.txt:1: not UTF-8 text",
        lambda ws: write(ws / "bad_pairs.txt", b"faces/a/0.jpg faces/\xff.jpg 1\n")),
    Row("idx-not-ascii", ("inspect", "b"), r"b/train.idx:2: expected 'key<TAB>offset' in ASCII digits",
        lambda ws: (write_layout_b(ws / "b", [0, 1]), write(ws / "b" / "train.idx", b"0\t0\n\xff\t4\n"))),
    Row("checkpoint-config-a-string", ("convert", "ds", "out", "--checkpoint", "strcfg.pt"),
        r"strcfg.pt: 'config' is a str, expected the dict", lambda ws: mae_checkpoint_with(ws, "strcfg.pt", config="tiny")),
    # 7. tiny files that claim huge things
    Row("checkpoint-claims-depth-200", ("convert", "ds", "out", "--checkpoint", "deep.pt"),
        r"deep.pt: weights do not match the checkpoint's config: blocks block count is 6, the config says 200",
        lambda ws: mae_checkpoint_with(ws, "deep.pt", depth=200)),
    Row("label-3e9", ("inspect", "b"), r"key 1: expected an integer identity label in 0..2147483647, got 3000000000",
        lambda ws: write_layout_b(ws / "b", [0, 3e9, 1])),
    Row("header-claims-3e9-keys", ("inspect", "hdr"), r"promises image keys 1..29999\d+ .* key 17 is not in the index",
        lambda ws: (shutil.copytree(ws / "ds", ws / "hdr"), rewrite_header(ws / "hdr", 3_000_000_000))),
    # 9. options silently replaced
    Row("num-shards-0", ("convert", "ds", "out", "--method", "blur", "--num-shards", 0),
        r"argument --num-shards: expected a value in \[1, inf\), got 0"),
    Row("patch-size-0", ("convert", "ds", "out", "--method", "masked", "--patch-size", 0),
        r"argument --patch-size: expected a value in \[1, inf\), got 0"),
    Row("batch-size-x", ("verify", "val.bin", "--model", "mbf.pt", "--network", "mbf", "--batch-size", "x"),
        r"argument --batch-size: expected an integer, got 'x'"),
    Row("mask-ratio-1", ("convert", "ds", "out", "--method", "masked", "--mask-ratio", 1),
        r"argument --mask-ratio: expected a value in \[0.0, 1.0\), got 1"),
    # 12. auditing a release against another dataset
    Row("audit-against-another-dataset", ("audit", "--original", "other", "--released", "released", "--model", "mbf.pt",
                                          "--network", "mbf", "--out", "audit_out"),
        r"released/facemae_provenance.json: this release was made from a shard whose .idx has sha256",
        lambda ws: write_layout_a(ws / "other", [3, 3, 3, 3], seed=1)),
]


def rewrite_header(shard_dir, end):
    """Replace the header record (key 0) of a layout-A shard with one claiming keys up to ``end``."""
    with FaceShard(shard_dir) as shard:
        records = {key: shard.reader.read_idx(key) for key in shard.reader.keys}
    records[0] = pack(IRHeader(0, [end - 1, end], 0, 0), b"")
    for name in ("train.rec", "train.idx"):
        os.remove(shard_dir / name)
    with RecordWriter(shard_dir / "train.rec", shard_dir / "train.idx") as writer:
        for key, record in records.items():
            writer.write_idx(key, record)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(row, ws):
    if "no-cuda" in row.needs and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if row.setup is not None:
        row.setup(ws)
    assert_refused(ws, row.argv, row.expect)


# ----------------------------------------------------------------------------- faults that need a sequence


def test_rec2folder_overwrite_replaces_a_planted_link_not_its_target(ws):
    write(ws / "victim.txt", "precious")
    (ws / "out" / "0").mkdir(parents=True)
    os.symlink(ws / "victim.txt", ws / "out" / "0" / "1.jpg")
    result = facemae(ws, "rec2folder", "ds", "out", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (ws / "victim.txt").read_text() == "precious"
    assert not os.path.islink(ws / "out" / "0" / "1.jpg")
    with FaceShard(ws / "ds") as shard:
        assert (ws / "out" / "0" / "1.jpg").read_bytes() == shard.read(1)[1]


def test_outputs_inside_an_input_folder_are_written_and_the_input_kept(ws):
    """Only the named files of a shard folder are read, so a release may live beside them."""
    before = snapshot(ws / "ds")
    for argv in [("convert", "ds", "ds/released", "--method", "blur", "--workers", 0),
                 ("split", "ds", "ds/a", "ds/b", "--fraction", 0.5),
                 ("rec2folder", "ds", "ds/images")]:
        result = facemae(ws, *argv)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
    assert {path: digest for path, digest in snapshot(ws / "ds").items() if "/" not in path} == before
    with FaceShard(ws / "ds") as source, FaceShard(ws / "ds" / "released") as released:
        assert len(released) == len(source)
        with FaceShard(ws / "ds" / "a") as a, FaceShard(ws / "ds" / "b") as b:
            assert len(a) + len(b) == len(source)
    assert sorted(os.listdir(ws / "ds" / "images")) == sorted(str(label) for label in range(len(IDENTITY_SIZES)))


def test_rec2folder_bad_record_leaves_no_output_folder(ws):
    misframed_shard(ws)
    assert_refused(ws, ("rec2folder", "misframed", "out"), r"key 5")
    assert not (ws / "out").exists()
    assert not [name for name in os.listdir(ws) if name.startswith("out")]


def test_resume_refuses_shards_made_from_bytes_since_edited(ws):
    first_convert(ws, "--num-shards", 2, "--shard", 0)
    offset = read_index(ws / "ds" / "train.idx")[1]
    edit_label_in_place(ws / "ds" / "train.rec", offset, 1.0)  # same size, same .idx
    assert_refused(ws, ("convert", "ds", "out", "--method", "blur", "--workers", 0, "--batch-size", 4,
                        "--num-shards", 2),
                   r"shard-0of2.done.json: a shard of a different conversion \(differs in input\)")


def test_merge_refuses_a_shard_whose_bytes_changed(ws):
    for shard in (0, 1):
        first_convert(ws, "--num-shards", 2, "--shard", shard)
    flip_byte(ws / "out" / "shards" / "shard-0of2.rec", 40)
    assert_refused(ws, ("merge", "out"), r"shard-0of2.rec: its bytes changed since the shard was finished")
    assert not (ws / "out" / "train.rec").exists()


def test_a_second_writer_is_told_which_process_holds_the_output(ws):
    (ws / "out").mkdir()
    with OutputLock(ws / "out"):
        before = snapshot(ws)
        line = assert_refused(ws, ("convert", "ds", "out", "--method", "blur"),
                              rf"out: another facemae process \(pid {os.getpid()}\) is writing here", before)
    assert "wait for it" in line
    first_convert(ws)  # released: the next run goes ahead


def test_inspect_says_when_property_disagrees_with_the_labels(ws):
    write(ws / "ds" / "property", "7,112,112\n")
    result = facemae(ws, "inspect", "ds")
    assert result.returncode == 0, result.stderr
    assert "property says 7 classes, the records hold 4 identities" in result.stdout


def test_inspect_reads_a_valid_bin_of_fewer_than_ten_pairs(ws):
    bin_with(ws, val_images(ws, 3), [True, False, True], name="small.bin")
    result = facemae(ws, "inspect", "small.bin")
    assert result.returncode == 0, result.stderr
    assert "pairs             3 (2 same identity)" in result.stdout and "n/a" in result.stdout


def test_a_large_label_costs_no_memory_in_inspect(ws):
    def inspect_peak_rss_kb(shard):
        result = subprocess.run(
            [sys.executable, "-c", "import resource, sys; from facemae_plugin.evaluation.inspection import inspect_path; "
             "info = inspect_path(sys.argv[1], progress=False); "
             "print(info['identities'], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)", str(shard)],
            capture_output=True, text=True, cwd=REPO)
        return tuple(map(int, result.stdout.split()))

    write_layout_b(ws / "small", [0, 1, 1])
    write_layout_b(ws / "large", [0, 2_000_000_000, 2_000_000_000])
    (small_ids, small_kb), (large_ids, large_kb) = inspect_peak_rss_kb(ws / "small"), inspect_peak_rss_kb(ws / "large")
    assert small_ids == large_ids == 2
    assert large_kb < small_kb + 100_000  # a count table up to label 2e9 would add 16 GB


def test_atomic_json_writer_leaves_nothing_when_the_value_cannot_be_encoded(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "report.json", {"model": object()})
    assert os.listdir(tmp_path) == []
