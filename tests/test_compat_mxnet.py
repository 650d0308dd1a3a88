"""facemae_plugin.compat.mxnet against real MXNet 1.9.1 (oracle venv) and its install rules.

The oracle writes a RecordIO file with MXNet's own writer and runs every call arcface_torch
makes (imdecode, resize_short, transpose, flip, MXIndexedRecordIO, unpack) on the same inputs;
the shim must give the same arrays, labels and keys.
"""
import json
import sys

import cv2
import numpy as np
import pytest

from facemae_plugin.compat import mxnet as compat
from facemae_plugin.formats.recordio import MAGIC_BYTES
from tests.mxnet_oracle import run_oracle

ORACLE = r"""
import json, os, sys
import numpy as np
import mxnet as mx
from mxnet import ndarray as nd

work = sys.argv[1]
spec = json.load(open(os.path.join(work, "spec.json")))
out = {}
for name in spec["images"]:
    raw = open(os.path.join(work, name), "rb").read()
    rgb = mx.image.imdecode(raw)
    out[name + ":rgb"] = rgb.asnumpy()
    out[name + ":bgr"] = mx.image.imdecode(raw, to_rgb=0).asnumpy()
    out[name + ":grey"] = mx.image.imdecode(raw, flag=0).asnumpy()
    for interp in (0, 1, 2, 3):
        out[name + ":short%d" % interp] = mx.image.resize_short(rgb, 112, interp).asnumpy()
    chw = nd.transpose(rgb, axes=(2, 0, 1))
    out[name + ":chw"] = chw.asnumpy()
    out[name + ":flip"] = mx.ndarray.flip(data=chw, axis=2).asnumpy()
np.savez(os.path.join(work, "mx_arrays.npz"), **out)

writer = mx.recordio.MXIndexedRecordIO(os.path.join(work, "mx.idx"), os.path.join(work, "mx.rec"), "w")
for key, record in spec["records"]:
    payload = open(os.path.join(work, record["payload"]), "rb").read()
    label = record["label"]
    writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), payload))
writer.close()
reader = mx.recordio.MXIndexedRecordIO(os.path.join(work, "mx.idx"), os.path.join(work, "mx.rec"), "r")
read = []
for key in reader.keys:
    header, payload = mx.recordio.unpack(reader.read_idx(key))
    label = header.label.tolist() if isinstance(header.label, np.ndarray) else header.label
    read.append([key, header.flag, label, header.id, payload.hex()])
print(json.dumps(read))
"""


def _smooth(rng, h, w):
    return cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def oracle_run(mxnet_python, tmp_path_factory):
    work = tmp_path_factory.mktemp("compat_mxnet")
    rng = np.random.default_rng(3)
    images = {"face.jpg": cv2.imencode(".jpg", _smooth(rng, 112, 112), [cv2.IMWRITE_JPEG_QUALITY, 95])[1],
              "big.jpg": cv2.imencode(".jpg", _smooth(rng, 128, 128))[1],
              "wide.png": cv2.imencode(".png", _smooth(rng, 100, 150))[1]}
    for name, data in images.items():
        (work / name).write_bytes(data.tobytes())
    # Records as InsightFace lays them out: header [a, b], images, identity ranges; one payload
    # holds the RecordIO magic at an aligned offset, so MXNet splits that record on disk.
    (work / "empty").write_bytes(b"")
    (work / "magic").write_bytes(b"abcd" + MAGIC_BYTES + b"efgh" * 3)
    records = [[0, {"payload": "empty", "label": [3.0, 4.0]}],
               [1, {"payload": "face.jpg", "label": 0.0}], [2, {"payload": "magic", "label": 0.0}],
               [3, {"payload": "empty", "label": [1.0, 3.0]}]]
    (work / "spec.json").write_text(json.dumps({"images": list(images), "records": records}))
    read = json.loads(run_oracle(mxnet_python, ORACLE, [work], cwd=work).strip().splitlines()[-1])
    return work, images, read, dict(np.load(work / "mx_arrays.npz"))


def test_image_calls_match_real_mxnet(oracle_run):
    work, images, _, expected = oracle_run
    for name in images:
        raw = (work / name).read_bytes()
        rgb = compat.imdecode(raw)
        assert isinstance(rgb, compat.NDArray)
        np.testing.assert_array_equal(rgb.asnumpy(), expected[name + ":rgb"], err_msg=name)
        np.testing.assert_array_equal(compat.imdecode(raw, to_rgb=0).asnumpy(), expected[name + ":bgr"])
        np.testing.assert_array_equal(compat.imdecode(raw, flag=0).asnumpy(), expected[name + ":grey"])
        for interp in (0, 1, 2, 3):
            np.testing.assert_array_equal(compat.resize_short(rgb, 112, interp).asnumpy(),
                                          expected[f"{name}:short{interp}"], err_msg=f"{name} interp {interp}")
        chw = compat.transpose(rgb, axes=(2, 0, 1))
        np.testing.assert_array_equal(chw.asnumpy(), expected[name + ":chw"])
        np.testing.assert_array_equal(compat.flip(data=chw, axis=2).asnumpy(), expected[name + ":flip"])


def test_reads_what_mxnet_wrote(oracle_run):
    work, _, read, _ = oracle_run
    reader = compat.MXIndexedRecordIO(str(work / "mx.idx"), str(work / "mx.rec"), "r")
    assert reader.keys == [row[0] for row in read]
    for key, flag, label, id_, payload_hex in read:
        header, payload = compat.unpack(reader.read_idx(np.int64(key)))  # MXFaceDataset passes numpy ints
        assert (header.flag, header.id) == (flag, id_)
        got = header.label.tolist() if isinstance(header.label, np.ndarray) else header.label
        assert got == label
        assert payload.hex() == payload_hex


def test_bad_image_bytes_fail_in_one_line():
    with pytest.raises(ValueError, match="imdecode.*not a decodable image"):
        compat.imdecode(b"not a jpeg")


@pytest.fixture
def clean_mxnet_modules(monkeypatch):
    """Whatever a test installs as `mxnet` is gone afterwards."""
    saved = {n: m for n, m in sys.modules.items() if n == "mxnet" or n.startswith("mxnet.")}
    for name in saved:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_broken_mxnet_is_replaced_and_logged(tmp_path, monkeypatch, clean_mxnet_modules, caplog):
    # MXNet 1.9.1 under numpy >= 1.24 raises on a removed alias while importing, leaving submodules behind.
    package = tmp_path / "mxnet"
    package.mkdir()
    (package / "__init__.py").write_text("from . import base\nimport numpy\nnumpy.float\n")
    (package / "base.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(compat.MODE_ENV, raising=False)
    with caplog.at_level("WARNING"):
        module = compat.install()
    assert compat.is_shim(module)
    assert "AttributeError" in caplog.text and "numpy" in caplog.text
    assert "mxnet.base" not in sys.modules  # the broken half-import was dropped
    import mxnet.recordio
    from mxnet import ndarray as nd

    assert mxnet.recordio.MXIndexedRecordIO is compat.MXIndexedRecordIO and nd.flip is compat.flip
    with pytest.raises(AttributeError):
        compat.install("real")


def test_working_mxnet_is_left_alone(tmp_path, monkeypatch, clean_mxnet_modules):
    package = tmp_path / "mxnet"
    package.mkdir()
    (package / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(compat.MODE_ENV, raising=False)
    assert compat.install().REAL
    monkeypatch.setenv(compat.MODE_ENV, "shim")
    assert compat.is_shim(compat.install())
    monkeypatch.setenv(compat.MODE_ENV, "sometimes")
    with pytest.raises(ValueError, match="FACEMAE_COMPAT_MXNET='sometimes'"):
        compat.install()
