"""`facemae verify` against arcface_torch's eval/verification.py `test()`.

Oracles: a loop/sklearn re-statement of test()'s logic written here, arcface_torch's own
functions exec'd from its source (when ARCFACE_TORCH_ROOT is set), cv2 decoding done here,
and onnxruntime vs torch for the same model.
"""
import ast
import json
import os
import pickle
import types

import cv2
import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facemae_plugin.formats.binfile import write_bin
from facemae_plugin.evaluation.embed import load_embedder
from facemae_plugin.evaluation.verification import ten_fold_tar_at_far
from facemae_plugin.evaluation.bin_report import verification_report, verify_bin
from facemae_plugin.export import export_recogniser
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.data.synthetic import make_synthetic_dataset
from tests.conftest import Hostile
from tests.helpers import facemae

ROC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


# ---------------------------------------------------------------- references written here

def reference_test_numbers(embeddings, flips, issame, k=10):
    """test()'s XNorm, accuracy mean and std, restated with loops, sklearn KFold and normalize."""
    norms = [np.sqrt(np.sum(row ** 2)) for block in (embeddings, flips) for row in block]
    xnorm = sum(norms) / len(norms)
    combined = normalize(embeddings + flips)
    e1, e2 = combined[0::2], combined[1::2]
    dist = np.array([np.sum((a - b) ** 2) for a, b in zip(e1, e2)])
    same = np.asarray(issame, dtype=bool)

    def accuracy(t, idx):
        return np.mean((dist[idx] < t) == same[idx])

    fold_acc = []
    for train, test in KFold(n_splits=k, shuffle=False).split(np.arange(len(dist))):
        train_acc = [accuracy(t, train) for t in ROC_THRESHOLDS]
        fold_acc.append(accuracy(ROC_THRESHOLDS[int(np.argmax(train_acc))], test))
    return xnorm, np.mean(fold_acc), np.std(fold_acc)


def reference_tar(dist, same, far_target, k=10):
    """The documented rule: per fold, the largest grid threshold with training FAR <= target."""
    tars = []
    for train, test in KFold(n_splits=k, shuffle=False).split(np.arange(len(dist))):
        best = 0.0
        for t in VAL_THRESHOLDS:
            accepted = dist[train] < t
            far = np.sum(accepted & ~same[train]) / np.sum(~same[train])
            if far <= far_target:
                best = t
        accepted = dist[test] < best
        tars.append(np.sum(accepted & same[test]) / np.sum(same[test]))
    return np.mean(tars), np.std(tars)


def planted_embeddings(n_pairs, dim, noise, seed):
    """Image and flip embeddings [2P, D] of varied norm; same pairs share a direction."""
    rng = np.random.default_rng(seed)
    same = rng.random(n_pairs) < 0.5
    first = rng.normal(size=(n_pairs, dim))
    second = np.where(same[:, None], first + noise * rng.normal(size=(n_pairs, dim)),
                      rng.normal(size=(n_pairs, dim)))
    images = np.empty((2 * n_pairs, dim))
    images[0::2], images[1::2] = first, second
    images *= rng.uniform(0.5, 30.0, size=(2 * n_pairs, 1))
    flips = images + 0.3 * rng.normal(size=images.shape) * np.abs(images).mean()
    return images, flips, same


# ---------------------------------------------------------------- report vs references

@pytest.mark.parametrize("n_pairs,noise,seed", [(400, 1.0, 0), (257, 1.5, 1)])
def test_report_matches_reference_of_test(n_pairs, noise, seed):
    images, flips, same = planted_embeddings(n_pairs, 24, noise, seed)
    xnorm, acc, std = reference_test_numbers(images, flips, same)
    report = verification_report(images, flips, same)
    assert abs(report["accuracy_flip"] - acc) < 1e-6 and abs(report["accuracy_std"] - std) < 1e-6
    assert abs(report["xnorm"] - xnorm) < 1e-6 * xnorm
    assert report["pairs"] == n_pairs and 0.6 < acc < 0.99  # planted: neither trivial nor hopeless
    # XNorm counts images and flips as separate vectors, not their sum.
    assert abs(report["xnorm"] - np.linalg.norm(images + flips, axis=1).mean()) > 1e-3


def test_tar_at_far_where_scipy_interp1d_refuses():
    images, flips, same = planted_embeddings(500, 16, 1.0, 2)
    combined = normalize(images + flips)
    dist = np.sum((combined[0::2] - combined[1::2]) ** 2, axis=1)
    # FAR on a training part repeats across thresholds: the case where arcface_torch's
    # calculate_val calls scipy interp1d(far, thresholds), which current scipy refuses.
    far_train = [np.mean(dist[~same][100:] < t) for t in VAL_THRESHOLDS]
    assert len(set(far_train)) < len(far_train)
    for target in (1e-3, 1e-2, 0.1):
        result = ten_fold_tar_at_far(dist, same, target)
        tar, std = reference_tar(dist, same, target)
        assert abs(result.tar_mean - tar) < 1e-12 and abs(result.tar_std - std) < 1e-12
    assert verification_report(images, flips, same)["tar_at_far"] == ten_fold_tar_at_far(dist, same, 1e-3).tar_mean


def load_arcface_test():
    """arcface_torch's test() and helpers, exec'd from source without mxnet."""
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("ARCFACE_TORCH_ROOT is not set: no arcface_torch checkout to compare with")
    import datetime

    import sklearn.preprocessing
    from sklearn.decomposition import PCA

    path = os.path.join(root, "eval", "verification.py")
    wanted = {"LFold", "calculate_roc", "calculate_accuracy", "calculate_val", "calculate_val_far",
              "evaluate", "test"}
    tree = ast.parse(open(path).read())
    body = [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted]
    assert {node.name for node in body} == wanted, f"{path} no longer defines {wanted}"
    # calculate_val's scipy interp1d raises on repeated FAR values with current scipy; test()'s
    # accuracy and XNorm do not depend on it, so a numpy stand-in lets test() finish.
    stand_in = types.SimpleNamespace(interp1d=lambda x, y, kind: (lambda t: np.interp(t, x, y)))
    namespace = {"np": np, "sklearn": sklearn, "KFold": KFold, "PCA": PCA, "torch": torch,
                 "datetime": datetime, "interpolate": stand_in}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace["test"]


def test_report_matches_arcface_torch_test():
    arcface_test = load_arcface_test()
    rng = np.random.default_rng(3)
    n_pairs = 120
    same = rng.random(n_pairs) < 0.5
    first = rng.integers(0, 256, size=(n_pairs, 3, 8, 8)).astype(np.float32)
    second = np.where(same[:, None, None, None], np.clip(first + rng.normal(0, 40, first.shape), 0, 255),
                      rng.integers(0, 256, size=first.shape)).astype(np.float32)
    pixels = torch.from_numpy(np.stack([first, second], 1).reshape(-1, 3, 8, 8))  # [2P, 3, 8, 8]
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32)).eval()
    data_set = ([pixels, pixels.flip(-1)], list(same))
    _, _, acc, std, xnorm, _ = arcface_test(data_set, backbone, batch_size=50)

    with torch.no_grad():
        images = backbone((pixels / 255 - 0.5) / 0.5).double().numpy()
        flips = backbone((pixels.flip(-1) / 255 - 0.5) / 0.5).double().numpy()
    report = verification_report(images, flips, same)
    assert abs(report["accuracy_flip"] - acc) < 1e-6 and abs(report["accuracy_std"] - std) < 1e-6
    assert abs(report["xnorm"] - xnorm) < 1e-6 * xnorm
    assert 0.6 < acc < 1.0


# ---------------------------------------------------------------- verify_bin on real files

class ColourSensitiveEmbedder(torch.nn.Module):
    """A fixed random linear map of the whole image: channel order and flips change its output."""

    def __init__(self, seed=0, dim=16):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(3 * 112 * 112, dim, generator=generator) / 200)

    def forward(self, x):  # [N, 3, 112, 112] -> [N, dim]
        return x.flatten(1) @ self.weight


def test_verify_bin_decodes_like_arcface(tmp_path):
    rng = np.random.default_rng(4)
    n_pairs = 30
    same = rng.random(n_pairs) < 0.5
    bgr = []
    for is_same in same:
        a = cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (112, 112))
        b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8) if is_same else \
            cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (112, 112))
        bgr += [a, b]
    path = tmp_path / "set.bin"
    write_bin(path, [cv2.imencode(".png", img)[1].tobytes() for img in bgr], same)  # lossless

    embedder = ColourSensitiveEmbedder().eval()
    report = verify_bin(embedder, path, batch_size=7, roc_dir=tmp_path / "roc")

    rgb = np.stack(bgr)[..., ::-1].astype(np.float32)  # [2P, H, W, 3]
    @torch.no_grad()
    def embed(hwc):
        x = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))
        return embedder((x / 255 - 0.5) / 0.5).double().numpy()

    images, flips = embed(rgb), embed(rgb[:, :, ::-1])  # flip = mirror the width axis
    xnorm, acc, std = reference_test_numbers(images, flips, same)
    assert abs(report["accuracy_flip"] - acc) < 1e-6 and abs(report["accuracy_std"] - std) < 1e-6
    assert abs(report["xnorm"] - xnorm) < 1e-5 * xnorm
    # Feeding BGR instead would change XNorm: the check above can tell the two apart.
    wrong_order = reference_test_numbers(embed(np.stack(bgr).astype(np.float32)),
                                         embed(np.stack(bgr)[:, :, ::-1].astype(np.float32)), same)[0]
    assert abs(wrong_order - xnorm) > 1e-3 * xnorm
    png = cv2.imread(report["roc_png"])
    assert report["roc_png"].endswith("set_roc.png") and png is not None and png.shape[2] == 3


def test_verify_bin_refuses_wrong_image_size(tmp_path):
    small = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    write_bin(tmp_path / "small.bin", [small] * 20, [True] * 10)
    with pytest.raises(ValueError, match=r"small\.bin: image 0 is 64x64, expected an aligned 112x112"):
        verify_bin(ColourSensitiveEmbedder(), tmp_path / "small.bin")


# ---------------------------------------------------------------- the command and a real model

def test_hostile_bin_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([Hostile(marker)], [True]), protocol=2))
    # No model exists: the .bin must be refused before anything else is loaded.
    result = facemae("verify", "--model", tmp_path / "missing.pt", "--network", "mbf", path, "--quiet")
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "lfw.bin: refused to load" in err[0] and "system" in err[0]
    assert not marker.exists()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    make_synthetic_dataset(root / "synth", identities=2, images_per_identity=2, holdout_identities=6,
                           num_pairs=24, progress=False)
    torch.manual_seed(0)
    model = get_backbone("mbf").eval()
    for module in model.modules():  # non-trivial statistics, so eval-mode BatchNorm matters
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), root / "model.pt")
    export_recogniser(model, root / "model.onnx", network="mbf", check=False)
    return root / "synth" / "holdout.bin", root / "model.pt", root / "model.onnx"


def test_pt_and_onnx_give_the_same_verification(small_set):
    bin_path, pt, onnx_path = small_set
    from_pt = verify_bin(load_embedder(pt, "mbf"), bin_path, batch_size=16)
    from_onnx = verify_bin(load_embedder(onnx_path), bin_path, batch_size=16)
    assert from_pt["pairs"] == 24 and len(set(from_pt["best_thresholds"])) >= 1
    assert from_pt["accuracy_flip"] == from_onnx["accuracy_flip"]
    assert from_pt["accuracy_std"] == from_onnx["accuracy_std"]
    assert from_pt["tpr"] == from_onnx["tpr"] and from_pt["fpr"] == from_onnx["fpr"]
    assert abs(from_pt["xnorm"] - from_onnx["xnorm"]) < 1e-4 * from_pt["xnorm"]
    assert 0 < np.mean(from_pt["tpr"]) < 1, "distances must spread over the thresholds"

    result = facemae("verify", "--model", onnx_path, bin_path, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    (cli_set,) = json.loads(result.stdout.strip().splitlines()[-1])["sets"]
    assert cli_set["accuracy_flip"] == from_onnx["accuracy_flip"] and cli_set["name"] == "holdout"
    assert "verify: holdout" in result.stdout


def test_an_onnx_with_a_fixed_batch_of_one_embeds_like_torch(tmp_path):
    torch.manual_seed(3)
    model = get_backbone("mbf").eval()
    path = str(tmp_path / "batch1.onnx")
    torch.onnx.export(model, (torch.zeros(1, 3, 112, 112),), path, opset_version=17, dynamo=False,
                      input_names=["data"], output_names=["embedding"])  # no dynamic axes: N is 1
    embedder = load_embedder(path)
    assert embedder.fixed_batch == 1
    images = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        expected = model(images).numpy()
    got = embedder(images).numpy()
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert got.shape == (3, 512) and cosine.min() > 0.9999
