"""Shared fixtures: small face shards the tests make themselves, and a hostile pickle."""
import importlib.util
import os
import pickle

import cv2
import numpy as np
import pytest

from facemae_plugin.formats.recordio import IRHeader, RecordWriter, encode_image, pack
from facemae_plugin.data.synthetic import make_synthetic_dataset
from facemae_plugin.formats.shard import FaceShardWriter

from .helpers import SYNTH_IDENTITIES, blurred_copy
from .mxnet_oracle import require_mxnet_python


def smooth_image(rng, size=112):
    """A random smooth BGR uint8 image: compresses like a photo, differs per draw."""
    small = rng.integers(0, 256, size=(7, 7, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def write_layout_a(out_dir, images_per_identity, seed=0):
    """A layout-A shard; returns the BGR images as written, grouped per identity."""
    rng = np.random.default_rng(seed)
    groups = [[smooth_image(rng) for _ in range(n)] for n in images_per_identity]
    with FaceShardWriter(out_dir) as writer:
        for images in groups:
            writer.add_identity(images)
    return groups


@pytest.fixture
def layout_a_shard(tmp_path):
    """``(shard_dir, groups)``: 3 identities with 2, 3 and 4 images."""
    shard_dir = tmp_path / "shard"
    groups = write_layout_a(shard_dir, [2, 3, 4])
    return shard_dir, groups


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """A synthetic shard of ``SYNTH_IDENTITIES`` identities x 6 faces and a 20-pair holdout.bin."""
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, identities=SYNTH_IDENTITIES, images_per_identity=6, holdout_identities=4,
                           num_pairs=20, progress=False)
    return out


def load_benchmark_script(name):
    """A script of ``benchmarks/`` (not a package) imported as a module, by file name without .py."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_layout_b(path, labels, first_key=0, seed=1):
    """An im2rec-style layout-B shard (every key an image) with the given float labels."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    with RecordWriter(os.path.join(path, "train.rec"), os.path.join(path, "train.idx")) as w:
        for i, label in enumerate(labels):
            w.write_idx(first_key + i, pack(IRHeader(0, float(label), i, 0), encode_image(smooth_image(rng))))


class Hostile:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_pickle(marker):
    return pickle.dumps(Hostile(marker), protocol=2)


@pytest.fixture(scope="module")
def synthetic_faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    make_synthetic_dataset(root / "original", identities=10, images_per_identity=4, holdout_identities=2,
                           num_pairs=10, progress=False)
    blurred_copy(root / "original", root / "blurred", sigma=8)
    return root


@pytest.fixture(scope="session")
def mxnet_python():
    """Path of a Python interpreter that can ``import mxnet``."""
    return require_mxnet_python()
