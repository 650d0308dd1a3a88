"""The subset of MXNet that arcface_torch calls on train_v2's paths, without MXNet.

MXNet 1.9.1 is the last release and imports only with numpy < 1.24, yet arcface_torch's
``dataset.py`` (``MXFaceDataset``) and ``eval/verification.py`` (``load_bin``) import it. This
module rebuilds exactly what those two files use, on the plugin's pure-Python RecordIO and OpenCV:

- ``mxnet.recordio``: ``MXIndexedRecordIO(idx, rec, 'r')`` (``.keys``, ``.idx``, ``read_idx``),
  ``IRHeader``, ``pack``, ``unpack``, ``pack_img``, ``unpack_img``;
- ``mxnet.image``: ``imdecode`` (RGB ``NDArray``), ``resize_short``, ``imresize``;
- ``mxnet.ndarray`` / ``mxnet.nd``: ``NDArray`` (``.asnumpy()``, ``.shape``), ``transpose``, ``flip``.

Paths outside training (``verification.dumpR`` with MXNet modules, ``onnx_ijbc.py``, writing in
``scripts/shuffle_rec.py``) are left out on purpose: calling them fails with AttributeError.

``install()`` puts these modules into ``sys.modules`` only when ``import mxnet`` fails (missing,
or broken under numpy 2); ``FACEMAE_COMPAT_MXNET=real|shim`` forces one side.
"""
import logging
import os
import sys
import types

import numpy as np

from ..core.errors import UsageError
from ..formats import recordio as _recordio

log = logging.getLogger(__name__)

MODE_ENV = "FACEMAE_COMPAT_MXNET"
MODES = ("auto", "real", "shim")
SHIM_VERSION = "1.9.1+facemae.compat"  # the MXNet release whose behaviour this follows

# OpenCV codes; MXNet passes its interp numbers straight to cv::resize, so they coincide.
_NEAREST, _LINEAR, _CUBIC, _AREA, _LANCZOS = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------ ndarray

class NDArray:
    """A numpy array behind the few ``mxnet.nd.NDArray`` members arcface_torch touches."""

    __slots__ = ("_data",)

    def __init__(self, data):
        self._data = np.asarray(data)

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    def asnumpy(self):
        """A copy, as MXNet returns (callers may write into it)."""
        return self._data.copy()

    def astype(self, dtype):
        return NDArray(self._data.astype(dtype))

    def __getitem__(self, key):
        return NDArray(self._data[key])

    def __len__(self):
        return len(self._data)

    def __array__(self, dtype=None, copy=None):
        return self._data if dtype is None else self._data.astype(dtype)

    def __repr__(self):
        return f"\n{self._data}\n<NDArray {'x'.join(map(str, self.shape))} @cpu(0) (facemae compat)>"


def _numpy(data):
    return data._data if isinstance(data, NDArray) else np.asarray(data)


def transpose(data=None, axes=None):
    """``nd.transpose``: axes reversed when ``axes`` is None or empty, as in MXNet."""
    return NDArray(np.ascontiguousarray(np.transpose(_numpy(data), axes or None)))


def flip(data=None, axis=None):
    """``nd.flip`` (alias of ``reverse``): reverse the order along ``axis``."""
    if axis is None:
        raise TypeError("flip() needs axis=, as mxnet.ndarray.flip does")
    return NDArray(np.ascontiguousarray(np.flip(_numpy(data), axis)))


# -------------------------------------------------------------------------------- image

def imdecode(buf, flag=1, to_rgb=1, out=None):
    """``mx.image.imdecode``: bytes -> HxWxC uint8 ``NDArray``, RGB unless ``to_rgb=0``.

    ``flag=0`` gives one channel (HxWx1), as MXNet does. Undecodable bytes raise a ValueError
    that says what was read, where MXNet raises its own MXNetError.
    """
    if out is not None:
        raise NotImplementedError("compat mxnet: imdecode(out=...) is not supported")
    import cv2

    payload = _numpy(buf).tobytes() if not isinstance(buf, (bytes, bytearray, memoryview)) else buf
    image = _recordio.decode_image(payload, cv2.IMREAD_COLOR if flag else cv2.IMREAD_GRAYSCALE,
                                   where="mxnet.image.imdecode")
    if image.ndim == 2:
        image = image[:, :, None]
    elif to_rgb:
        image = np.ascontiguousarray(image[:, :, ::-1])
    return NDArray(image)


def _interp_method(interp, sizes):
    """MXNet's choice for 9 (cubic to enlarge, area to shrink); 10 (random) is not supported."""
    if interp == 9:
        old_h, old_w, new_h, new_w = sizes
        if new_h > old_h and new_w > old_w:
            return _CUBIC
        if new_h < old_h and new_w < old_w:
            return _AREA
        return _LINEAR
    if interp not in (_NEAREST, _LINEAR, _CUBIC, _AREA, _LANCZOS):
        raise NotImplementedError(f"compat mxnet: interp={interp} is not supported (0-4 or 9)")
    return interp


_CUBIC_A = np.float32(-0.75)
_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: resize weights as 11-bit fixed point


def _cubic_weights(x):
    """Keys' cubic kernel (a = -0.75) at offsets -1..2 from the float32 fractions ``x`` [D] -> [D, 4]."""
    one, a = np.float32(1), _CUBIC_A
    w0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + one
    w2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    return np.stack([w0, w1, w2, one - w0 - w1 - w2], -1).astype(np.float32)


def _cubic_taps(src_len, dst_len):
    """Source indices [D, 4] (edge-clamped) and fixed-point weights [D, 4] along one axis."""
    centre = ((np.arange(dst_len) + 0.5) * (src_len / dst_len) - 0.5).astype(np.float32)
    first = np.floor(centre).astype(np.int64)
    weights = np.rint(_cubic_weights((centre - first).astype(np.float32)) * np.float32(_COEF_SCALE))
    taps = np.clip(first[:, None] + np.arange(-1, 3)[None, :], 0, src_len - 1)
    return taps, weights.astype(np.int64)


def _resize_cubic_uint8(image, w, h):
    """Bicubic uint8 resize as MXNet 1.9.1's bundled OpenCV computes it, to the grey level.

    Current OpenCV rounds differently (off by one on ~5% of pixels), so this follows the old
    SSE path: integer horizontal pass with 11-bit weights, then a float32 vertical pass
    summed in tap order and rounded to nearest even. Checked against real MXNet in the tests.
    """
    x_taps, x_weights = _cubic_taps(image.shape[1], w)
    y_taps, y_weights = _cubic_taps(image.shape[0], h)
    rows = (image.astype(np.int64)[:, x_taps, :] * x_weights[None, :, :, None]).sum(2)  # [H, w, C]
    rows = rows.astype(np.float32)  # exact: |values| < 2**24
    y_weights = (y_weights.astype(np.float32) * np.float32(1.0 / _COEF_SCALE ** 2)).astype(np.float32)
    picked = rows[y_taps]  # [h, 4, w, C]
    total = picked[:, 0] * y_weights[:, 0, None, None]
    for tap in range(1, 4):
        total = total + picked[:, tap] * y_weights[:, tap, None, None]  # float32, in tap order
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def imresize(src, w, h, interp=_LINEAR):
    """``mx.image.imresize``: to width ``w`` and height ``h`` (OpenCV; bicubic uint8 as MXNet's)."""
    import cv2

    image = _numpy(src)
    if image.ndim == 2:
        image = image[:, :, None]
    if interp == _CUBIC and image.dtype == np.uint8:
        return NDArray(_resize_cubic_uint8(image, int(w), int(h)))
    resized = cv2.resize(image, (int(w), int(h)), interpolation=interp)
    if resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[:, :, None]
    return NDArray(resized)


def resize_short(src, size, interp=_CUBIC):
    """``mx.image.resize_short``: shorter edge to ``size``, aspect ratio kept (integer division)."""
    h, w = _numpy(src).shape[:2]
    if h > w:
        new_h, new_w = size * h // w, size
    else:
        new_h, new_w = size, size * w // h
    return imresize(src, new_w, new_h, interp=_interp_method(interp, (h, w, new_h, new_w)))


# ----------------------------------------------------------------------------- recordio

class MXIndexedRecordIO:
    """Read side of ``mx.recordio.MXIndexedRecordIO(idx_path, uri, 'r')``.

    ``keys`` lists the keys in ``.idx`` order and ``idx`` maps key -> offset, as in MXNet.
    Positional reads make one instance safe to share with forked DataLoader workers.
    """

    def __init__(self, idx_path, uri, flag, key_type=int):
        if flag != "r":
            raise NotImplementedError(f"compat mxnet reads RecordIO only (flag {flag!r} asked for {uri}); "
                                      f"write shards with facemae_plugin.formats.recordio.RecordWriter")
        if key_type is not int:
            raise NotImplementedError(f"compat mxnet: key_type must be int, got {key_type!r}")
        self.idx_path, self.uri, self.flag, self.key_type = idx_path, uri, flag, key_type
        self._reader = _recordio.IndexedRecordReader(uri, idx_path)
        self.idx = self._reader.index  # a read-only mapping over numpy arrays

    @property
    def keys(self):
        """The keys in ``.idx`` order as a list of ints, as MXNet gives them (built on each access)."""
        return self._reader.keys.tolist()

    def read_idx(self, idx):
        return self._reader.read_idx(int(idx))

    def close(self):
        self._reader.close()


def unpack(s):
    """``mx.recordio.unpack``: (IRHeader, payload bytes); array labels as float32."""
    return _recordio.unpack(s, where="mxnet.recordio.unpack")


def unpack_img(s, iscolor=-1):
    """``mx.recordio.unpack_img``: (IRHeader, BGR image as OpenCV decodes it)."""
    return _recordio.unpack_img(s, iscolor, where="mxnet.recordio.unpack_img")


# -------------------------------------------------------------------------- the modules

def _module(name, doc, **members):
    module = types.ModuleType(name, doc)
    module.__dict__.update(members)
    module.__facemae_compat__ = True
    return module


def build_modules():
    """The shim's module objects, keyed by their import names."""
    recordio = _module("mxnet.recordio", "facemae compat: mxnet.recordio (read side)",
                       IRHeader=_recordio.IRHeader, MXIndexedRecordIO=MXIndexedRecordIO,
                       pack=_recordio.pack, unpack=unpack, pack_img=_recordio.pack_img,
                       unpack_img=unpack_img)
    image = _module("mxnet.image", "facemae compat: mxnet.image",
                    imdecode=imdecode, imresize=imresize, resize_short=resize_short)
    ndarray = _module("mxnet.ndarray", "facemae compat: mxnet.ndarray",
                      NDArray=NDArray, transpose=transpose, flip=flip)
    root = _module("mxnet", __doc__, __version__=SHIM_VERSION,
                   recordio=recordio, image=image, ndarray=ndarray, nd=ndarray)
    root.__path__ = []  # a package, so `import mxnet.recordio` resolves through sys.modules
    return {"mxnet": root, "mxnet.recordio": recordio, "mxnet.image": image,
            "mxnet.ndarray": ndarray, "mxnet.nd": ndarray}


def is_shim(module):
    return bool(getattr(module, "__facemae_compat__", False))


def _forget_mxnet():
    """Drop a half-imported MXNet (an import that raised can leave submodules behind)."""
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        del sys.modules[name]


def _import_real():
    import mxnet

    return mxnet


def install(mode=None):
    """Return the ``mxnet`` module arcface_torch will import: the real one if it works, else the shim.

    ``mode``: ``auto`` (default; ``$FACEMAE_COMPAT_MXNET`` overrides), ``real`` (import MXNet or
    raise) or ``shim`` (always the stand-in). Installing the shim is logged with the reason.
    """
    mode = mode or os.environ.get(MODE_ENV) or "auto"
    if mode not in MODES:
        raise UsageError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    loaded = sys.modules.get("mxnet")
    if loaded is not None and (mode == "auto" or is_shim(loaded) == (mode == "shim")):
        return loaded
    if mode == "real":
        _forget_mxnet()
        return _import_real()
    reason = "forced by " + MODE_ENV if mode == "shim" else None
    if reason is None:
        try:
            return _import_real()
        except Exception as exc:  # ImportError when absent; AttributeError (np.bool) etc. when broken
            reason = f"real MXNet unusable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    _forget_mxnet()
    sys.modules.update(build_modules())
    log.warning("facemae compat: using facemae_plugin.compat.mxnet as `mxnet` (%s)", reason)
    return sys.modules["mxnet"]
