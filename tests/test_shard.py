"""InsightFace shard layouts: writing layout A, detecting A and B, and refusing bad shards."""
import os

import cv2
import numpy as np
import pytest
import torch

from facemae_plugin.data.dataset import FaceRecordDataset, denormalise, normalise
from facemae_plugin.formats.recordio import IRHeader, RecordIOError, RecordWriter, encode_image, pack
from facemae_plugin.formats.shard import FaceShard
from tests.conftest import smooth_image, write_layout_b


def decode_reference(payload):
    """What arcface_torch's MXFaceDataset sees: the JPEG decoded to RGB."""
    bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    return bgr[:, :, ::-1]


def test_layout_a_keys_labels_and_ranges(layout_a_shard):
    shard_dir, groups = layout_a_shard
    shard = FaceShard(shard_dir)
    assert shard.layout == "A"
    assert list(shard.image_keys) == list(range(1, 10))
    assert list(shard.identity_keys) == [10, 11, 12]
    assert shard.header_range == (10, 13)
    assert shard.identity_ranges() == {0: (1, 3), 1: (3, 6), 2: (6, 10)}
    expected_labels = [i for i, g in enumerate(groups) for _ in g]
    assert list(shard.labels()) == expected_labels
    assert shard.property == (3, 112, 112)
    with open(os.path.join(shard_dir, "property")) as f:
        assert f.read() == "3,112,112\n"


def test_layout_a_images_are_jpeg_quality_95(layout_a_shard):
    shard_dir, groups = layout_a_shard
    shard = FaceShard(shard_dir)
    flat = [img for g in groups for img in g]
    for key, original in zip(shard.image_keys, flat):
        _, payload = shard.read(key)
        ok, expected = cv2.imencode(".jpg", original, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert payload == expected.tobytes()


def test_layout_b_uses_every_key_in_index_order(tmp_path):
    write_layout_b(tmp_path, [4, 4, 7, 0])
    shard = FaceShard(tmp_path)
    assert shard.layout == "B"
    assert list(shard.image_keys) == [0, 1, 2, 3]
    assert list(shard.labels()) == [4, 4, 7, 0]
    assert shard.property is None


def test_array_labels_use_their_first_entry(tmp_path):
    rng = np.random.default_rng(0)
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(0, [5.0, 0.25, 0.75], 0, 0), encode_image(smooth_image(rng))))
    assert FaceShard(tmp_path).label(0) == 5


def test_dataset_matches_mxfacedataset_convention(layout_a_shard):
    shard_dir, _ = layout_a_shard
    dataset = FaceRecordDataset(shard_dir)
    shard = FaceShard(shard_dir)
    for index in range(len(dataset)):
        image, label = dataset[index]
        key = int(shard.image_keys[index])
        rgb = decode_reference(shard.read(key)[1]).astype(np.float32)
        expected = torch.from_numpy((rgb / 255.0 - 0.5) / 0.5).permute(2, 0, 1)
        assert image.shape == (3, 112, 112) and image.dtype == torch.float32
        assert torch.allclose(image, expected, atol=1e-6)
        assert label == shard.label(key)


def test_dataset_flip_mirrors_half_the_time(layout_a_shard):
    shard_dir, _ = layout_a_shard
    plain = FaceRecordDataset(shard_dir)
    flipping = FaceRecordDataset(shard_dir, flip=True)
    torch.manual_seed(0)
    flipped = [torch.equal(flipping[0][0], plain[0][0].flip(-1)) for _ in range(200)]
    assert 60 < sum(flipped) < 140


def test_dataset_in_worker_processes(layout_a_shard):
    shard_dir, _ = layout_a_shard
    dataset = FaceRecordDataset(shard_dir, with_keys=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    keys, labels = [], []
    for images, batch_labels, batch_keys in loader:
        assert images.shape[1:] == (3, 112, 112)
        keys += batch_keys.tolist()
        labels += batch_labels.tolist()
    assert keys == list(range(1, 10))
    assert labels == [0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_normalise_denormalise_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(denormalise(normalise(rgb)[None])[0], rgb)


# ---------------------------------------------------------------- bad shards


def test_wrong_image_size_names_key(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(0, 1.0, 0, 0), encode_image(np.zeros((96, 112, 3), np.uint8))))
    with pytest.raises(RecordIOError, match=r"key 0: image is 112x96, expected 112x112"):
        FaceShard(tmp_path).decode(0)


def test_undecodable_image_names_key(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(0, 1.0, 0, 0), b"not a jpeg at all"))
    with pytest.raises(RecordIOError, match=r"key 0.*not a decodable image"):
        FaceShard(tmp_path).decode(0)


def test_header_with_wrong_label_shape(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(0, [1.0, 2.0, 3.0], 0, 0), b""))
    with pytest.raises(RecordIOError, match=r"header record \(key 0\): expected a 2-value label"):
        FaceShard(tmp_path)


def test_identity_record_with_wrong_label_shape(tmp_path):
    rng = np.random.default_rng(0)
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(0, [2.0, 3.0], 0, 0), b""))
        w.write_idx(1, pack(IRHeader(0, 0.0, 1, 0), encode_image(smooth_image(rng))))
        w.write_idx(2, pack(IRHeader(0, [1.0], 2, 0), b""))
    with pytest.raises(RecordIOError, match=r"identity record \(key 2\): expected a 2-value label"):
        FaceShard(tmp_path).identity_ranges()


def test_header_promising_missing_keys(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack(IRHeader(0, [5.0, 7.0], 0, 0), b""))
    with pytest.raises(RecordIOError, match=r"key 1 is not in the index"):
        FaceShard(tmp_path)


def test_non_integer_label(tmp_path):
    write_layout_b(tmp_path, [1.5])
    with pytest.raises(RecordIOError, match=r"key 0: expected an integer identity label in 0..2147483647, got 1.5"):
        FaceShard(tmp_path).label(0)


def test_not_a_shard_directory(tmp_path):
    with pytest.raises(RecordIOError, match=r"not a face shard, train.rec is missing"):
        FaceShard(tmp_path)
