"""Shards as Parquet and back: byte-identical round trips (MXNet's own shards included), what `datasets`
reads, a Hub-style Parquet set with other column names, resuming, and bad input in one line."""
import filecmp
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facemae_plugin.core.errors import InputError, OutputError
from facemae_plugin.convert.parquet import PARTS_DIR, parquet_to_rec, rec_to_parquet
from facemae_plugin.formats.recordio import encode_image
from facemae_plugin.formats.shard import FaceShard
from tests.conftest import smooth_image, write_layout_a, write_layout_b
from tests.helpers import facemae
from tests.mxnet_oracle import read_json, run_oracle
from tests.test_shard_mxnet import MXFACEDATASET_RULES, MXNET_WRITES_LAYOUTS

SHARD_FILES = ("train.rec", "train.idx")


def same_files(a, b, names=SHARD_FILES):
    return all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names)


def shard_records(path):
    """``{key: (label, payload)}`` of a shard's image records."""
    with FaceShard(path) as shard:
        return {int(k): shard.read(k) for k in shard.image_keys}


@pytest.mark.parametrize("layout", ["A", "B"])
def test_a_shard_comes_back_byte_for_byte(tmp_path, layout):
    shard = tmp_path / "shard"
    if layout == "A":
        write_layout_a(shard, [3, 1, 5, 2], seed=4)
    else:
        write_layout_b(shard, [2, 0, 1, 1, 0, 2, 3])
    result = rec_to_parquet(shard, tmp_path / "pq", rows_per_file=3, progress=False)
    assert result["images"] == (11 if layout == "A" else 7)
    assert len([f for f in result["files"] if f.startswith("train-")]) == (4 if layout == "A" else 3)
    back = parquet_to_rec([tmp_path / "pq"], tmp_path / "back", progress=False)
    assert back["layout"] == layout
    assert same_files(shard, tmp_path / "back", SHARD_FILES + (("property",) if layout == "A" else ()))
    assert not (tmp_path / "back" / PARTS_DIR).exists()


def test_mxnets_own_shards_come_back_byte_for_byte(tmp_path, mxnet_python):
    """MXNet writes layout A with its header record first and identity records with id 0 (not our
    writer's convention): both survive the round trip, record and file."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    run_oracle(mxnet_python, MXNET_WRITES_LAYOUTS, [str(tmp_path)])
    for name in ("a", "b"):
        rec_to_parquet(tmp_path / name, tmp_path / f"{name}-pq", progress=False)
        parquet_to_rec([tmp_path / f"{name}-pq"], tmp_path / f"{name}-back", progress=False)
        assert same_files(tmp_path / name, tmp_path / f"{name}-back"), name


def test_datasets_loads_the_images_and_labels_of_the_shard(tmp_path):
    datasets = pytest.importorskip("datasets")
    shard = tmp_path / "shard"
    write_layout_a(shard, [2, 4, 3], seed=2)
    rec_to_parquet(shard, tmp_path / "pq", rows_per_file=4, progress=False)
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "pq" / "train-*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert isinstance(loaded.features["image"], datasets.Image)
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    records = shard_records(shard)
    assert [int(k) for k in raw["key"]] == sorted(records)
    assert [int(v) for v in raw["label"]] == [records[k][0] for k in sorted(records)]
    assert [row["bytes"] for row in raw["image"]] == [records[k][1] for k in sorted(records)]
    # a folder load finds the split by file name and leaves the layout records out
    folder = datasets.load_dataset(str(tmp_path / "pq"), split="train", cache_dir=str(tmp_path / "cache2"))
    assert folder.num_rows == len(records)


def write_hub_style(path, labels, images, image_column="img", label_column="identity", struct=True):
    """A Parquet file as Hub face sets ship them: an image column and an integer label column."""
    if struct:
        image = pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)],
                         type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        image = pa.array(images, type=pa.binary())
    pq.write_table(pa.table({image_column: image, label_column: pa.array(labels, type=pa.int32()),
                             "name": [f"person {v}" for v in labels]}), path, row_group_size=2)


def test_a_hub_style_parquet_set_becomes_a_shard_mxnet_reads(tmp_path, mxnet_python):
    rng = np.random.default_rng(5)
    images = [encode_image(smooth_image(rng)) for _ in range(7)]
    labels = [3, 0, 1, 3, 2, 0, 1]
    (tmp_path / "hub").mkdir()
    write_hub_style(tmp_path / "hub" / "part-0.parquet", labels[:4], images[:4])
    write_hub_style(tmp_path / "hub" / "part-1.parquet", labels[4:], images[4:], struct=False)
    result = facemae("parquet2rec", tmp_path / "hub", tmp_path / "out", "--image-column", "img",
                     "--label-column", "identity", "--json", check=True)
    assert result.stdout.strip().splitlines()[-1].count('"layout": "B"') == 1
    run_oracle(mxnet_python, MXFACEDATASET_RULES, [str(tmp_path / "out"), str(tmp_path)])
    meta = read_json(tmp_path / "meta.json")
    assert meta["header0"] is None and meta["imgidx"] == list(range(7)) and meta["labels"] == labels
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    mx_images = np.load(tmp_path / "images.npy")
    assert np.abs(mx_images.astype(int) - decoded).max() <= 2  # two JPEG decoders, same bytes
    assert (tmp_path / "out" / "property").read_text() == "4,112,112\n"
    assert [payload for _, payload in shard_records(tmp_path / "out").values()] == images


def test_a_killed_conversion_resumes_from_what_is_done(tmp_path, monkeypatch):
    import facemae_plugin.convert.parquet as parquet

    shard = tmp_path / "shard"
    write_layout_a(shard, [3, 3, 3, 3], seed=1)
    rec_to_parquet(shard, tmp_path / "pq", rows_per_file=4, progress=False)
    first = tmp_path / "pq" / "train-00000-of-00003.parquet"
    os.remove(tmp_path / "pq" / "train-00002-of-00003.parquet")
    stamp = first.stat().st_mtime_ns
    rec_to_parquet(shard, tmp_path / "pq", rows_per_file=4, progress=False)
    assert first.stat().st_mtime_ns == stamp  # kept, not written again
    assert (tmp_path / "pq" / "train-00002-of-00003.parquet").exists()

    files_read, stop = [], {"in": "00001-of-00003.parquet"}
    real_record = parquet._record

    def stops_in_the_second_file(image, label, key, header, path, row):
        files_read.append(os.path.basename(path))
        if stop["in"] and path.endswith(stop["in"]):
            raise KeyboardInterrupt
        return real_record(image, label, key, header, path, row)

    monkeypatch.setattr(parquet, "_record", stops_in_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        parquet_to_rec([tmp_path / "pq"], tmp_path / "back", progress=False)
    assert not (tmp_path / "back" / "train.rec").exists()
    stop["in"], files_read[:] = None, []
    parquet_to_rec([tmp_path / "pq"], tmp_path / "back", progress=False)
    assert sorted(set(files_read)) == ["train-00001-of-00003.parquet", "train-00002-of-00003.parquet"]
    assert same_files(shard, tmp_path / "back")


def test_files_of_another_conversion_are_refused_without_overwrite(tmp_path):
    write_layout_a(tmp_path / "s1", [2, 2], seed=1)
    write_layout_a(tmp_path / "s2", [2, 3], seed=2)
    rec_to_parquet(tmp_path / "s1", tmp_path / "pq", progress=False)
    with pytest.raises(OutputError, match="another conversion"):
        rec_to_parquet(tmp_path / "s2", tmp_path / "pq", progress=False)
    rec_to_parquet(tmp_path / "s2", tmp_path / "pq", overwrite=True, progress=False)
    parquet_to_rec([tmp_path / "pq"], tmp_path / "back", progress=False)
    assert same_files(tmp_path / "s2", tmp_path / "back")


@pytest.mark.parametrize("case, message", [
    ("string labels", "expected integer identity labels"),
    ("missing column", "no column 'identity'"),
    ("not an image", "row 1 is not a readable image"),
    ("negative label", "row 0 has label -1"),
    ("one of several", "name all of them"),
])
def test_bad_parquet_input_is_one_line(tmp_path, case, message):
    rng = np.random.default_rng(0)
    images = [encode_image(smooth_image(rng)) for _ in range(3)]
    path = tmp_path / "in.parquet"
    args = ["--image-column", "img", "--label-column", "identity"]
    if case == "string labels":
        pq.write_table(pa.table({"img": images, "identity": ["a", "b", "c"]}), path)
    elif case == "missing column":
        pq.write_table(pa.table({"img": images, "label": [0, 1, 2]}), path)
    elif case == "not an image":
        write_hub_style(path, [0, 1, 2], [images[0], b"not a jpeg", images[2]])
    elif case == "negative label":
        write_hub_style(path, [-1, 1, 2], images)
    else:
        write_layout_a(tmp_path / "shard", [2, 2])
        rec_to_parquet(tmp_path / "shard", tmp_path / "pq", rows_per_file=2, progress=False)
        path, args = tmp_path / "pq" / "train-00001-of-00002.parquet", []
    with pytest.raises(InputError, match=message):
        parquet_to_rec([path], tmp_path / "out", progress=False, **dict(zip(("image_column", "label_column"),
                                                                                args[1::2])))
    result = facemae("parquet2rec", path, tmp_path / "out2", "--quiet", *args)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and str(path.name) in result.stderr
    assert not (tmp_path / "out2" / "train.rec").exists()
