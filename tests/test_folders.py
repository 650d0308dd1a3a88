"""Image folders <-> shards and pairs lists -> .bin, checked byte for byte."""
import os

import cv2
import numpy as np
import pytest

from facemae_plugin.formats.binfile import load_bin
from facemae_plugin.data.folders import folder_to_rec, pairs_to_bin, rec_to_folder
from facemae_plugin.formats.recordio import RecordIOError
from facemae_plugin.formats.shard import FaceShard
from tests.conftest import smooth_image


def make_image_folder(root, counts, ext=".jpg", seed=0):
    """root/<name>/<i><ext>; returns {name: [file bytes]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for n, count in enumerate(counts):
        name = f"person_{chr(ord('a') + n)}"
        os.makedirs(root / name)
        written[name] = []
        for i in range(count):
            ok, buf = cv2.imencode(ext, smooth_image(rng))
            (root / name / f"{i:03d}{ext}").write_bytes(buf.tobytes())
            written[name].append(buf.tobytes())
    return written


def test_folder_rec_folder_round_trip_is_lossless(tmp_path):
    written = make_image_folder(tmp_path / "faces", [3, 1, 2])
    result = folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    assert result == {"identities": 3, "images": 6}
    shard = FaceShard(tmp_path / "rec")
    assert shard.layout == "A" and shard.property == (3, 112, 112)
    names = sorted(written)
    expected = [(label, data) for label, name in enumerate(names) for data in written[name]]
    assert [shard.read(k) for k in shard.image_keys] == expected
    assert (tmp_path / "rec" / "identities.txt").read_text().splitlines() == [
        f"{i}\t{name}" for i, name in enumerate(names)]

    rec_to_folder(tmp_path / "rec", tmp_path / "back", progress=False)
    for label, name in enumerate(names):
        files = sorted(os.listdir(tmp_path / "back" / str(label)), key=lambda f: int(f.split(".")[0]))
        assert [(tmp_path / "back" / str(label) / f).read_bytes() for f in files] == written[name]


def test_png_inputs_are_encoded_as_jpeg(tmp_path):
    make_image_folder(tmp_path / "faces", [2], ext=".png")
    folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    shard = FaceShard(tmp_path / "rec")
    png = cv2.imread(str(tmp_path / "faces" / "person_a" / "000.png"))
    decoded = shard.decode(1, rgb=False)
    assert shard.read(1)[1][:3] == b"\xff\xd8\xff"
    assert np.abs(decoded.astype(int) - png).mean() < 3.0  # JPEG q95 of the same pixels


def test_wrong_size_image_names_the_file(tmp_path):
    os.makedirs(tmp_path / "faces" / "x")
    cv2.imwrite(str(tmp_path / "faces" / "x" / "big.jpg"), np.zeros((120, 100, 3), np.uint8))
    with pytest.raises(RecordIOError, match=r"big.jpg: image is 100x120, expected 112x112"):
        folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)
    assert not (tmp_path / "rec" / "train.rec").exists()


def test_empty_folder_is_an_error(tmp_path):
    os.makedirs(tmp_path / "faces")
    with pytest.raises(ValueError, match=r"no <identity>/ folders"):
        folder_to_rec(tmp_path / "faces", tmp_path / "rec", progress=False)


def test_pairs_to_bin(tmp_path):
    written = make_image_folder(tmp_path / "faces", [2, 1])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# a comment\nfaces/person_a/000.jpg faces/person_a/001.jpg 1\n"
                     "faces/person_a/000.jpg faces/person_b/000.jpg 0\n")
    assert pairs_to_bin(pairs, tmp_path / "set.bin", progress=False) == {"pairs": 2, "same": 1}
    images, issame = load_bin(tmp_path / "set.bin")
    a, b = written["person_a"], written["person_b"]
    assert images == [a[0], a[1], a[0], b[0]] and issame.tolist() == [True, False]


def test_bad_pairs_line_names_the_line(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.jpg b.jpg yes\n")
    with pytest.raises(ValueError, match=r"pairs.txt:1: expected 'path_a path_b 0\|1'"):
        pairs_to_bin(pairs, tmp_path / "set.bin", progress=False)
