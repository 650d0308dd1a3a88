"""Verification .bin files: read like arcface_torch, refuse anything that could run code."""
import os
import pickle

import numpy as np
import pytest

from facemae_plugin.formats.binfile import BinFormatError, load_bin, write_bin
from tests.conftest import Hostile


def test_write_then_plain_pickle_reads_the_arcface_layout(tmp_path):
    path = tmp_path / "set.bin"
    images = [b"\xff\xd8\xffimage%d" % i for i in range(6)]
    write_bin(path, images, [True, False, True])
    with open(path, "rb") as f:  # our own trusted file: the format as arcface_torch unpickles it
        bins, issame = pickle.load(f)
    assert bins == images and issame == [True, False, True]
    loaded, loaded_same = load_bin(path)
    assert loaded == images and loaded_same.tolist() == [True, False, True]


def test_python2_style_protocol2_pickle_is_read(tmp_path):
    # Python 2 files hold str images; under encoding="bytes" they come back as bytes.
    # Protocol 2 from Python 3 spells bytes through _codecs.encode: both must load.
    path = tmp_path / "old.bin"
    with open(path, "wb") as f:
        pickle.dump(([b"a\x00b", b"c\xffd"], [True]), f, protocol=2)
    images, issame = load_bin(path)
    assert images == [b"a\x00b", b"c\xffd"] and issame.tolist() == [True]


def test_numpy_image_buffers_and_labels(tmp_path):
    path = tmp_path / "np.bin"
    bins = [np.frombuffer(b"abcd", np.uint8), np.frombuffer(b"efgh", np.uint8)]
    with open(path, "wb") as f:
        pickle.dump((bins, np.array([False])), f, protocol=2)
    images, issame = load_bin(path)
    assert images == [b"abcd", b"efgh"] and issame.tolist() == [False]


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.bin"
    with open(path, "wb") as f:
        pickle.dump(([Hostile(marker)], []), f)
    with pytest.raises(BinFormatError, match=r"hostile.bin: refused to load (posix|os)\.system"):
        load_bin(path)
    assert not marker.exists()


def test_image_count_must_be_twice_the_pairs(tmp_path):
    path = tmp_path / "odd.bin"
    with open(path, "wb") as f:
        pickle.dump(([b"a", b"b", b"c"], [True]), f)
    with pytest.raises(BinFormatError, match=r"3 images for 1 pairs"):
        load_bin(path)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(BinFormatError, match=r"junk.bin: not a readable verification .bin"):
        load_bin(path)


def test_write_is_atomic_on_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"3 images for 2 pairs"):
        write_bin(tmp_path / "x.bin", [b"a", b"b", b"c"], [True, False])
    assert os.listdir(tmp_path) == []
