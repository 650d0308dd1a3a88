"""Our layout-A shards read by real MXNet with arcface_torch's MXFaceDataset rules (oracle venv)."""
import json

import numpy as np

from facemae_plugin.formats.shard import FaceShard
from tests.conftest import write_layout_a
from tests.mxnet_oracle import read_json, run_oracle

# What arcface_torch's dataset.py does, step by step, with MXNet itself.
MXFACEDATASET_RULES = r"""
import json, sys
import json

import numpy as np
import mxnet as mx

shard, out = sys.argv[1], sys.argv[2]
rec = mx.recordio.MXIndexedRecordIO(shard + "/train.idx", shard + "/train.rec", "r")
header, _ = mx.recordio.unpack(rec.read_idx(0))
if header.flag > 0:
    header0 = (int(header.label[0]), int(header.label[1]))
    imgidx = list(range(1, int(header.label[0])))
else:
    header0 = None
    imgidx = list(rec.keys)
labels, images = [], []
for idx in imgidx:
    h, img = mx.recordio.unpack(rec.read_idx(idx))
    label = h.label if isinstance(h.label, (int, float)) else h.label[0]
    labels.append(int(label))
    images.append(mx.image.imdecode(img).asnumpy())  # RGB, as MXFaceDataset gets it
ranges = []
if header0:
    for idx in range(*header0):
        h, _ = mx.recordio.unpack(rec.read_idx(idx))
        ranges.append([int(h.label[0]), int(h.label[1])])
np.save(out + "/images.npy", np.stack(images))
json.dump({"header0": header0, "imgidx": imgidx, "labels": labels, "ranges": ranges}, open(out + "/meta.json", "w"))
"""


def test_mxnet_reads_our_layout_a_like_mxfacedataset(tmp_path, mxnet_python):
    shard_dir = tmp_path / "shard"
    write_layout_a(shard_dir, [3, 1, 4, 2], seed=7)
    run_oracle(mxnet_python, MXFACEDATASET_RULES, [str(shard_dir), str(tmp_path)])
    meta = read_json(tmp_path / "meta.json")
    mx_images = np.load(tmp_path / "images.npy")

    shard = FaceShard(shard_dir)
    assert meta["header0"] == list(shard.header_range)
    assert meta["imgidx"] == [int(k) for k in shard.image_keys]
    assert meta["labels"] == [shard.label(k) for k in shard.image_keys]
    assert meta["ranges"] == [list(r) for r in shard.identity_ranges().values()]
    ours = np.stack([shard.decode(k) for k in shard.image_keys])  # RGB
    assert np.array_equal(ours, mx_images)


# Both InsightFace layouts written by MXNet itself: im2rec style (B) and RecBuilder style (A).
MXNET_WRITES_LAYOUTS = r"""
import json, sys
import json

import numpy as np
import mxnet as mx

out = sys.argv[1]
rng = np.random.default_rng(3)
images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(5)]
labels = [2, 2, 0, 1, 1]

b = mx.recordio.MXIndexedRecordIO(out + "/b/train.idx", out + "/b/train.rec", "w")
for key, (img, label) in enumerate(zip(images, labels)):
    b.write_idx(key, mx.recordio.pack_img(mx.recordio.IRHeader(0, float(label), key, 0), img, quality=95))
b.close()

a = mx.recordio.MXIndexedRecordIO(out + "/a/train.idx", out + "/a/train.rec", "w")
order = sorted(range(5), key=lambda i: labels[i])  # images grouped by identity
a.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [6.0, 9.0], 0, 0), b""))
for key, i in enumerate(order, 1):
    a.write_idx(key, mx.recordio.pack_img(mx.recordio.IRHeader(0, [float(labels[i]), 0.0], key, 0), images[i]))
for identity, (start, end) in enumerate([(1, 2), (2, 4), (4, 6)]):
    a.write_idx(6 + identity, mx.recordio.pack(mx.recordio.IRHeader(0, [float(start), float(end)], 0, 0), b""))
a.close()

decoded = {}
for name in ("a", "b"):
    rec = mx.recordio.MXIndexedRecordIO(out + f"/{name}/train.idx", out + f"/{name}/train.rec", "r")
    keys = range(1, 6) if name == "a" else range(5)
    np.save(out + f"/{name}.npy", np.stack([mx.image.imdecode(mx.recordio.unpack(rec.read_idx(k))[1]).asnumpy() for k in keys]))
print(json.dumps({"labels_a": [labels[i] for i in order], "labels_b": labels}))
"""


def test_we_read_both_layouts_mxnet_writes(tmp_path, mxnet_python):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stdout = run_oracle(mxnet_python, MXNET_WRITES_LAYOUTS, [str(tmp_path)])
    expected = json.loads(stdout.strip().splitlines()[-1])

    layout_b = FaceShard(tmp_path / "b")
    assert layout_b.layout == "B" and list(layout_b.image_keys) == [0, 1, 2, 3, 4]
    assert list(layout_b.labels()) == expected["labels_b"]
    assert np.array_equal(np.stack([layout_b.decode(k) for k in layout_b.image_keys]), np.load(tmp_path / "b.npy"))

    layout_a = FaceShard(tmp_path / "a")
    assert layout_a.layout == "A" and list(layout_a.image_keys) == [1, 2, 3, 4, 5]
    assert list(layout_a.labels()) == expected["labels_a"]  # array labels: first entry
    assert layout_a.identity_ranges() == {0: (1, 2), 1: (2, 4), 2: (4, 6)}
    assert np.array_equal(np.stack([layout_a.decode(k) for k in layout_a.image_keys]), np.load(tmp_path / "a.npy"))
