"""ONNX export of recognisers (for InsightFace tools) and of the FaceMAE reconstructor, with checks.

Recogniser graph (what InsightFace's model_zoo routes to ArcFaceONNX): one input `data` [N, 3, 112, 112]
(dynamic N, RGB float32 already normalised (x - 127.5) / 127.5, normalisation outside the graph
so insightface applies it), one output `embedding` [N, D], fp32 weights.

Reconstructor graph: inputs `images` [N, 3, H, W] (normalised) and `ids_shuffle` int64 [N, L]
(a permutation per row; its first `len_keep` ids are the visible patches), outputs
`reconstruction` [N, 3, H, W] and `mask` [N, L] (1 = masked). `len_keep` is fixed by the mask
ratio at export time and written to the metadata; `mask_ids_for_keys` gives the ids that
make the graph reproduce `FaceMAE.reconstruct(..., keys=keys, seed=seed)`.

Files are exported and checked under a temporary name and renamed only when the check passes,
so a failed export never leaves a file that looks whole.
"""
import json
import os

import numpy as np
import torch
from torch import nn

from .core.errors import CheckpointError, FaceMAEError, UsageError
from .core.files import atomic_path, refuse_existing, refuse_overlap
from .data.dataset import normalise_batch
from .models.backbones import KNOWN_NETWORKS, load_backbone
from .core.keyseed import num_visible
from .models.mae import FaceMAE
from .models.onnx_graph import IMAGE_SIZE, OPSET, write_graph, write_recogniser_graph
from .models.masking import mask_from_ids, mask_noise_for_keys, random_masking
from .models.weights import load_weights_file

MAX_MODEL_MB = 1024  # arcface_torch onnx_helper limits
MAX_FEATURE_DIM = 512
MIN_NODES = 8
MIN_COSINE = 0.9999


class OnnxCheckError(FaceMAEError):
    """An exported graph that InsightFace's tools would refuse or that disagrees with torch."""


# ----------------------------------------------------------------------------- recogniser

def load_recogniser(model_path, network):
    """A backbone from an arcface_torch model.pt; a FaceMAE checkpoint is named as such."""
    model_path = os.fspath(model_path)
    if network not in KNOWN_NETWORKS:
        raise UsageError(f"unknown network {network!r}; expected one of {', '.join(KNOWN_NETWORKS)}")
    try:
        return load_backbone(model_path, network, device="cpu")
    except CheckpointError:
        if _is_facemae_checkpoint(model_path):
            raise CheckpointError(f"{model_path}: is a FaceMAE reconstructor checkpoint, not a recogniser "
                             f"model.pt; export it with --facemae {model_path}") from None
        raise


def _is_facemae_checkpoint(path):
    try:
        loaded = load_weights_file(path, "checkpoint")
    except CheckpointError:  # unreadable files are reported by the caller's own error
        return False
    return isinstance(loaded, dict) and "model" in loaded and "config" in loaded


def export_recogniser(model, out_path, network=None, opset=OPSET, check=True, overwrite=False):
    """Export a backbone (module, or model.pt path with `network`) to `out_path`; returns a summary.

    With `check`, `check_recogniser_onnx` runs on the file before it is renamed into place.
    """
    if not isinstance(model, nn.Module):
        if network is None:
            raise UsageError(f"{model}: a model.pt needs its network name (e.g. --network r50)")
        _check_output(out_path, [model], overwrite)
        model = load_recogniser(model, network)
    else:
        _check_output(out_path, [], overwrite)
    model = model.float().eval().cpu()
    if getattr(model, "fp16", False):
        raise ValueError("the recogniser runs under fp16 autocast; build it with fp16=False to export fp32")

    def write(tmp):
        write_recogniser_graph(model, tmp, opset)
        graph = _load_onnx(tmp)
        _set_metadata(graph, {"producer": "facemae-plugin", "network": str(network or type(model).__name__),
                              "input_normalisation": "(x - 127.5) / 127.5, RGB, outside the graph"})
        _save_onnx(graph, tmp)
        return check_recogniser_onnx(tmp, model) if check else {}

    summary = _write_atomically(out_path, write)
    return {"onnx": os.fspath(out_path), "kind": "recogniser", "opset": opset, **summary}


def check_recogniser_onnx(onnx_path, torch_model, num_images=8, seed=0):
    """InsightFace loads it as ArcFaceONNX and agrees with torch; arcface_torch's onnx_helper rules hold.

    Returns the facts checked; raises OnnxCheckError with one line on the first failure.
    """
    import onnx
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    onnx_path = os.fspath(onnx_path)
    recogniser = get_model(onnx_path, providers=["CPUExecutionProvider"])
    if not isinstance(recogniser, ArcFaceONNX):
        raise OnnxCheckError(f"{onnx_path}: insightface routes it to {type(recogniser).__name__}, "
                             f"expected ArcFaceONNX (one square 112x112 input)")
    if (recogniser.input_mean, recogniser.input_std) != (127.5, 127.5):
        raise OnnxCheckError(f"{onnx_path}: insightface would normalise with mean {recogniser.input_mean} "
                             f"std {recogniser.input_std}, expected 127.5 / 127.5")
    facts = _onnx_helper_rules(onnx_path, onnx.load(onnx_path), recogniser.session)

    bgr = _test_faces(num_images, seed)  # [num_images] uint8 BGR [112, 112, 3]
    onnx_feat = recogniser.get_feat(bgr)  # [N, D], insightface's own preprocessing
    with torch.no_grad():
        ours = normalise_batch(np.stack(bgr)[:, :, :, ::-1])  # [N, 3, 112, 112] RGB
        torch_feat = torch_model.eval().cpu()(ours).double().numpy()
    cosine = _row_cosine(onnx_feat, torch_feat)
    if cosine.min() <= MIN_COSINE:
        raise OnnxCheckError(f"{onnx_path}: insightface get_feat and torch disagree (min cosine "
                             f"{cosine.min():.6f}, expected > {MIN_COSINE})")
    return {**facts, "input_mean": 127.5, "input_std": 127.5, "min_cosine": float(cosine.min())}


def _onnx_helper_rules(path, graph_model, session):
    """The checks of arcface_torch's onnx_helper.py (cfat track), one line per failure."""
    import cv2

    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    if len(shape) != 4:
        raise OnnxCheckError(f"{path}: input shape {shape} has {len(shape)} dims, expected 4 (N, 3, H, W)")
    if len(outputs) != 1:
        raise OnnxCheckError(f"{path}: {len(outputs)} outputs, expected exactly 1 (the embedding)")
    nodes = len(graph_model.graph.node)
    if nodes < MIN_NODES:
        raise OnnxCheckError(f"{path}: only {nodes} graph nodes, expected at least {MIN_NODES}")
    if tuple(shape[2:4]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise OnnxCheckError(f"{path}: input size {shape[2:4]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    size_mb = os.path.getsize(path) / 2 ** 20
    if size_mb > MAX_MODEL_MB:
        raise OnnxCheckError(f"{path}: {size_mb:.1f} MB, expected at most {MAX_MODEL_MB} MB")
    _check_initialisers(path, graph_model)
    batch = cv2.dnn.blobFromImages(_test_faces(32, seed=1), 1.0 / 127.5, (IMAGE_SIZE, IMAGE_SIZE),
                                   (127.5, 127.5, 127.5), swapRB=True)  # [32, 3, 112, 112]
    (features,) = session.run([outputs[0].name], {inputs[0].name: batch})
    if features.ndim != 2:
        raise OnnxCheckError(f"{path}: output shape {features.shape}, expected [N, D]")
    if features.shape[1] > MAX_FEATURE_DIM:
        raise OnnxCheckError(f"{path}: feature dim {features.shape[1]}, expected at most {MAX_FEATURE_DIM}")
    if not np.all(np.isfinite(features)):
        raise OnnxCheckError(f"{path}: a batch of 32 gives NaN or infinite features")
    return {"input_name": inputs[0].name, "input_shape": [str(d) for d in shape], "nodes": nodes,
            "size_mb": round(size_mb, 3), "feature_dim": int(features.shape[1])}


def _check_initialisers(path, graph_model):
    from onnx import numpy_helper

    for tensor in graph_model.graph.initializer:
        dtype = numpy_helper.to_array(tensor).dtype
        # onnx_helper refuses any weight narrower than 4 bytes; floats must be fp32 exactly.
        if dtype.itemsize < 4 or (dtype.kind == "f" and dtype != np.float32):
            raise OnnxCheckError(f"{path}: initialiser {tensor.name} is {dtype.name}, expected fp32 weights")


def _test_faces(count, seed):
    """Smooth random BGR uint8 images [112, 112, 3]: photo-like, deterministic per seed."""
    import cv2

    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (IMAGE_SIZE, IMAGE_SIZE),
                       interpolation=cv2.INTER_CUBIC) for _ in range(count)]


def _row_cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ----------------------------------------------------------------------------- reconstructor

class ReconstructorGraph(nn.Module):
    """FaceMAE.reconstruct with the mask as an explicit input, for tracing."""

    def __init__(self, mae: FaceMAE, mask_ratio: float, output: str):
        super().__init__()
        self.mae = mae
        self.len_keep = num_visible(mae.num_patches, mask_ratio)
        self.output = output

    def forward(self, images, ids_shuffle):  # [N, 3, H, W], [N, L] int64
        # Inverse permutation by scatter (exact, no sort): ids_restore[ids_shuffle[j]] = j.
        positions = torch.arange(ids_shuffle.shape[1], device=ids_shuffle.device).expand_as(ids_shuffle)
        ids_restore = torch.zeros_like(ids_shuffle).scatter(1, ids_shuffle, positions)  # [N, L]
        mask = mask_from_ids(ids_shuffle, self.len_keep)  # [N, L]
        latent = self.mae.forward_encoder(images, ids_shuffle, self.len_keep)  # [N, 1 + K, D]
        pred = self.mae.forward_decoder(latent, ids_restore)  # [N, L, p*p*3]
        return self.mae.compose(images, pred, mask, self.output), mask


def mask_ids_for_keys(num_patches, keys, seed=0, mask_ratio=0.75):
    """ids_shuffle [N, L] int64 numpy: the mask FaceMAE.reconstruct(keys=keys, seed=seed) uses."""
    noise = mask_noise_for_keys(seed, keys, num_patches)  # [N, L]
    ids_shuffle, _, _ = random_masking(noise, mask_ratio)
    return ids_shuffle.numpy().astype(np.int64)


def export_reconstructor(checkpoint, out_path, mask_ratio=0.75, output="full", opset=OPSET, check=True,
                         overwrite=False):
    """Export a FaceMAE (module or facemae.pt path) to `out_path` with the mask as an input."""
    _check_output(out_path, [] if isinstance(checkpoint, FaceMAE) else [checkpoint], overwrite)
    mae = checkpoint if isinstance(checkpoint, FaceMAE) else FaceMAE.from_checkpoint(checkpoint)
    if output not in ("full", "paste"):
        raise UsageError(f"output must be 'full' or 'paste', got {output!r}")
    mae = mae.float().eval().cpu()
    graph_module = ReconstructorGraph(mae, mask_ratio, output)
    size = mae.img_size
    dummy_images = torch.zeros(2, 3, size, size)
    dummy_ids = torch.from_numpy(mask_ids_for_keys(mae.num_patches, [0, 1], 0, mask_ratio))
    metadata = {"producer": "facemae-plugin", "kind": "facemae-reconstructor",
                "mask_ratio": mask_ratio, "len_keep": graph_module.len_keep, "output": output,
                "num_patches": mae.num_patches, "patch_size": mae.patch_size, "img_size": size,
                "mask_ids": "ids_shuffle = stable argsort of mask_noise_for_keys(seed, keys); "
                            "first len_keep ids visible",
                "pixels": "RGB float32 NCHW, (x/255 - 0.5) / 0.5",
                "facemae_config": json.dumps(mae.config, default=str)}

    def write(tmp):
        write_graph(graph_module, (dummy_images, dummy_ids), tmp, opset,
                    input_names=["images", "ids_shuffle"], output_names=["reconstruction", "mask"],
                    dynamic_axes={name: {0: "N"} for name in ("images", "ids_shuffle", "reconstruction", "mask")})
        graph = _load_onnx(tmp)
        _set_metadata(graph, metadata)
        _save_onnx(graph, tmp)
        return check_reconstructor_onnx(tmp, mae, mask_ratio, output) if check else {}

    summary = _write_atomically(out_path, write)
    return {"onnx": os.fspath(out_path), "kind": "reconstructor", "opset": opset,
            "mask_ratio": mask_ratio, "len_keep": graph_module.len_keep, "output": output, **summary}


def check_reconstructor_onnx(onnx_path, mae, mask_ratio, output, keys=(3, 17, 42), seed=0, tolerance=1e-4):
    """ONNX Runtime, fed mask_ids_for_keys(keys, seed), reproduces mae.reconstruct(keys=keys, seed=seed)."""
    import onnxruntime

    onnx_path = os.fspath(onnx_path)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(len(keys), 3, mae.img_size, mae.img_size, generator=generator) * 2 - 1
    expected, expected_mask = mae.reconstruct(images, mask_ratio, output, keys=list(keys), seed=seed)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got, got_mask = session.run(None, {"images": images.numpy(),
                                       "ids_shuffle": mask_ids_for_keys(mae.num_patches, keys, seed, mask_ratio)})
    max_diff = float(np.max(np.abs(got - expected.numpy())))
    if not np.array_equal(got_mask, expected_mask.numpy()):
        raise OnnxCheckError(f"{onnx_path}: the graph's mask differs from FaceMAE.reconstruct's")
    if not max_diff < tolerance:
        raise OnnxCheckError(f"{onnx_path}: reconstructions differ from torch by {max_diff:.2e}, "
                             f"expected < {tolerance}")
    return {"max_abs_diff": max_diff}


# ----------------------------------------------------------------------------- shared

def _load_onnx(path):
    import onnx
    return onnx.load(path)


def _save_onnx(graph_model, path):
    import onnx
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, path)


def _set_metadata(graph_model, values):
    for key, value in values.items():
        entry = graph_model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _check_output(out_path, inputs, overwrite):
    refuse_overlap(out_path, inputs)
    refuse_existing(out_path, overwrite)


def _write_atomically(out_path, write):
    """write(tmp) exports and checks a temporary .onnx; it is renamed to out_path only on success."""
    with atomic_path(out_path, suffix=".onnx") as tmp:  # insightface routes by the .onnx suffix
        return write(tmp)
