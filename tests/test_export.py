"""ONNX export: recognisers for InsightFace tools, the FaceMAE reconstructor, and bad input.

Oracles: onnxruntime run on the exported file vs the torch module, the ONNX graph read back
with the onnx package, insightface's own model router, and the input pixels themselves
(paste mode must copy the visible patches unchanged).
"""
import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from facemae_plugin import cli
from facemae_plugin.export import (OnnxCheckError, check_recogniser_onnx, export_reconstructor,
                                   export_recogniser, mask_ids_for_keys)
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.models.masking import patchify


def tiny_facemae(seed=0):
    torch.manual_seed(seed)
    return create_facemae("tiny", depth=2, decoder_depth=1).eval()


def random_backbone(network, seed=0):
    torch.manual_seed(seed)
    model = get_backbone(network).eval()
    # Non-trivial BatchNorm statistics, so eval-mode export matters (fresh ones are 0 / 1).
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def run_onnx(path, feeds):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ---------------------------------------------------------------- recogniser

@pytest.mark.parametrize("network", ["mbf", "r18"])
def test_recogniser_onnx_passes_check_and_matches_torch(tmp_path, network):
    model = random_backbone(network)
    out = tmp_path / f"{network}.onnx"
    summary = export_recogniser(model, out, network=network)
    assert summary["min_cosine"] > 0.9999 and summary["input_mean"] == 127.5

    graph = onnx.load(str(out))
    (graph_input,) = graph.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "data"
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert len(graph.graph.output) == 1
    float_dtypes = {onnx.numpy_helper.to_array(t).dtype for t in graph.graph.initializer
                    if onnx.numpy_helper.to_array(t).dtype.kind == "f"}
    assert float_dtypes == {np.dtype(np.float32)}
    assert not any(node.op_type in ("Sub", "Div") for node in graph.graph.node[:8]), \
        "normalisation must stay outside the graph"

    # A batch size other than the export's, normalised our way.
    images = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    (onnx_out,) = run_onnx(out, {"data": images.numpy()})
    with torch.no_grad():
        torch_out = model(images).numpy()
    cosine = np.sum(onnx_out * torch_out, 1) / (
        np.linalg.norm(onnx_out, axis=1) * np.linalg.norm(torch_out, axis=1))
    assert onnx_out.shape == (3, 512) and cosine.min() > 0.9999


def test_insightface_routes_export_to_arcface(tmp_path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    out = tmp_path / "mbf.onnx"
    export_recogniser(random_backbone("mbf"), out, network="mbf", check=False)
    recogniser = get_model(str(out), providers=["CPUExecutionProvider"])
    assert isinstance(recogniser, ArcFaceONNX)
    assert (recogniser.input_mean, recogniser.input_std) == (127.5, 127.5)


def test_check_fails_for_another_model(tmp_path):
    out = tmp_path / "a.onnx"
    export_recogniser(random_backbone("mbf", seed=1), out, network="mbf", check=False)
    with pytest.raises(OnnxCheckError, match="disagree"):
        check_recogniser_onnx(out, random_backbone("mbf", seed=2))


def test_failed_check_leaves_no_file(tmp_path, monkeypatch):
    import facemae_plugin.export as export

    def refuse(path, model):
        raise OnnxCheckError(f"{path}: refused for the test")

    monkeypatch.setattr(export, "check_recogniser_onnx", refuse)
    with pytest.raises(OnnxCheckError):
        export_recogniser(random_backbone("mbf"), tmp_path / "m.onnx", network="mbf")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- reconstructor

@pytest.mark.parametrize("output", ["full", "paste"])
def test_reconstructor_onnx_reproduces_torch(tmp_path, output):
    mae = tiny_facemae()
    out = tmp_path / f"mae_{output}.onnx"
    summary = export_reconstructor(mae, out, mask_ratio=0.6, output=output)
    assert summary["len_keep"] == int(mae.num_patches * 0.4)

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (meta["mask_ratio"], meta["len_keep"], meta["output"]) == ("0.6", str(summary["len_keep"]), output)

    keys, seed = [5, 9, 1000, 7, 123456], 11
    images = torch.rand(len(keys), 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1
    expected, expected_mask = mae.reconstruct(images, 0.6, output, keys=keys, seed=seed)
    ids = mask_ids_for_keys(mae.num_patches, keys, seed, 0.6)
    got, got_mask = run_onnx(out, {"images": images.numpy(), "ids_shuffle": ids})
    assert np.abs(got - expected.numpy()).max() < 1e-4
    np.testing.assert_array_equal(got_mask, expected_mask.numpy())
    assert got_mask.sum(1).tolist() == [mae.num_patches - summary["len_keep"]] * len(keys)

    # Independent of torch's reconstruct: paste keeps visible input patches, full predicts them.
    visible = got_mask == 0  # [N, L]
    input_patches = patchify(images, mae.patch_size).numpy()
    output_patches = patchify(torch.from_numpy(got), mae.patch_size).numpy()
    same_as_input = np.abs(output_patches - input_patches).max(-1) < 1e-6  # [N, L]
    if output == "paste":
        assert same_as_input[visible].all()
    else:
        assert not same_as_input[visible].any()


def test_reconstructor_export_from_checkpoint_via_cli(tmp_path, capsys):
    checkpoint = tiny_facemae().save_checkpoint(tmp_path / "facemae.pt")
    out = tmp_path / "rec.onnx"
    assert cli.main(["export", "--facemae", checkpoint, str(out), "--output", "paste", "--quiet"]) == 0
    assert "export: FaceMAE" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["output"] == "paste" and meta["kind"] == "facemae-reconstructor"


# ---------------------------------------------------------------- bad input

@pytest.fixture
def files(tmp_path):
    facemae_ckpt = tiny_facemae().save_checkpoint(tmp_path / "facemae.pt")
    backbone = tmp_path / "model.pt"
    torch.save(random_backbone("mbf").state_dict(), backbone)
    return {"facemae": facemae_ckpt, "backbone": str(backbone), "out": str(tmp_path / "x.onnx")}


@pytest.mark.parametrize("argv,message", [
    (lambda f: [f["backbone"], f["out"], "--network", "r999"], "unknown network 'r999'"),
    (lambda f: [f["facemae"], f["out"], "--network", "r18"], "is a FaceMAE reconstructor checkpoint"),
    (lambda f: ["--facemae", f["backbone"], f["out"]], "looks like a recogniser state_dict"),
    (lambda f: [f["backbone"], f["out"]], "--network NAME"),
    (lambda f: [f["backbone"], f["out"], "--network", "r18"], "does not fit network 'r18'"),
])
def test_bad_export_input_gives_one_line(files, capsys, argv, message):
    assert cli.main(["export", *argv(files), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("facemae export: error:")
    assert not os.path.exists(files["out"])
