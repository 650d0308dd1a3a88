"""Recognisers: state_dict layout and function equal arcface_torch's backbones."""
import importlib.util
import json
import os

import pytest
import torch

from facemae_plugin.models.backbones import KNOWN_NETWORKS, get_backbone, load_backbone

from .helpers import randomise_weights

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
KEYS_FILE = os.path.join(DATA_DIR, "arcface_backbone_keys.json")


def _load_generator():
    """The script that wrote KEYS_FILE (it also knows how to import arcface_torch)."""
    path = os.path.join(DATA_DIR, "make_arcface_backbone_keys.py")
    spec = importlib.util.spec_from_file_location("_make_arcface_backbone_keys", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arcface_root():
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("ARCFACE_TORCH_ROOT is not set: no arcface_torch checkout to compare with")
    return root


@pytest.fixture(scope="module")
def arcface_backbones(arcface_root):
    return _load_generator().import_arcface_package(
        arcface_root, "backbones", "_arcface_torch_backbones")


def _shapes(model):
    return {key: list(tensor.shape) for key, tensor in model.state_dict().items()}


def _faces(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1  # [B, 3, 112, 112]


# ------------------------------------------------------------------ always-on layout checks

@pytest.mark.parametrize("name", ["r18", "r34", "r50", "r100", "mbf"])
def test_state_dict_keys_and_shapes_equal_arcface_torch(name):
    with open(KEYS_FILE) as f:
        expected = json.load(f)[name]
    assert _shapes(get_backbone(name)) == expected


def test_known_networks_cover_the_keys_file():
    with open(KEYS_FILE) as f:
        assert sorted(json.load(f)) == sorted(KNOWN_NETWORKS)


def test_unknown_network_lists_the_known_names():
    with pytest.raises(ValueError, match=r"unknown network 'r200'.*r18, r34, r50, r100, mbf"):
        get_backbone("r200")


def test_mbf_rejects_dropout():
    with pytest.raises(ValueError, match="no dropout"):
        get_backbone("mbf", dropout=0.2)


@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_embedding_shape_and_width(name):
    model = get_backbone(name, num_features=128).eval()
    with torch.no_grad():
        out = model(_faces())
    assert out.shape == (2, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_fp16_runs_body_in_reduced_precision_on_cpu_and_head_in_fp32(name):
    model = get_backbone(name, fp16=True).eval()
    body = model.layer1 if name == "r18" else model.layers[0]
    seen = []
    body.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.no_grad():
        out = model(_faces())
    assert seen == [torch.bfloat16]
    assert out.dtype == torch.float32 and out.shape == (2, 512)


def test_fp32_model_has_no_autocast():
    model = get_backbone("r18").eval()
    seen = []
    model.layer1.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.no_grad():
        model(_faces())
    assert seen == [torch.float32]


def test_embedding_bn_scale_is_frozen_like_arcface_torch():
    model = get_backbone("r18")
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(512))


# ------------------------------------------------------------------------------ loading

def test_load_backbone_round_trip(tmp_path):
    source = randomise_weights(get_backbone("r18")).eval()
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    loaded = load_backbone(str(path), "r18")
    assert not loaded.training
    faces = _faces()
    with torch.no_grad():
        assert torch.equal(loaded(faces), source(faces))


def test_load_backbone_reads_embedding_width_from_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(get_backbone("mbf", num_features=256).state_dict(), path)
    loaded = load_backbone(str(path), "mbf")
    assert loaded.features.layers[3].num_features == 256


def test_load_backbone_accepts_ddp_prefixed_keys(tmp_path):
    source = get_backbone("r18")
    path = tmp_path / "model.pt"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    loaded = load_backbone(str(path), "r18")
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)


def test_load_backbone_wrong_network_names_the_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(get_backbone("r18").state_dict(), path)
    with pytest.raises(ValueError, match=r"model\.pt does not fit network 'r34'.*missing"):
        load_backbone(str(path), "r34")


def test_load_backbone_rejects_non_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"model\.pt is not a backbone state_dict"):
        load_backbone(str(path), "r18")


def test_load_backbone_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_backbone(str(tmp_path / "nothing.pt"), "r18")


# ------------------------------------------------------------- against real arcface_torch
# arcface_torch's backbones still call the deprecated torch.cuda.amp.autocast; not our concern.
arcface_warning = pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast:FutureWarning")


def test_keys_file_is_current(arcface_root):
    with open(KEYS_FILE) as f:
        assert _load_generator().collect_keys(arcface_root) == json.load(f)


@arcface_warning
@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_arcface_torch_weights_load_into_ours_and_give_same_embeddings(name, arcface_backbones):
    theirs = randomise_weights(arcface_backbones.get_model(name), seed=1).eval()
    ours = get_backbone(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    faces = _faces(seed=2)
    with torch.no_grad():
        expected, actual = theirs(faces), ours(faces)
    assert expected.abs().max() > 1e-2  # a meaningful signal, not all zeros
    assert (actual - expected).abs().max() < 1e-5


@arcface_warning
@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_our_weights_load_into_arcface_torch_and_give_same_embeddings(name, arcface_backbones):
    ours = randomise_weights(get_backbone(name), seed=3).eval()
    theirs = arcface_backbones.get_model(name).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    faces = _faces(seed=4)
    with torch.no_grad():
        expected, actual = theirs(faces), ours(faces)
    assert expected.abs().max() > 1e-2
    assert (actual - expected).abs().max() < 1e-5


@arcface_warning
def test_arcface_torch_model_pt_loads_with_load_backbone(tmp_path, arcface_backbones):
    theirs = randomise_weights(arcface_backbones.get_model("r18"), seed=5).eval()
    path = tmp_path / "model.pt"
    torch.save(theirs.state_dict(), path)
    ours = load_backbone(str(path), "r18")
    faces = _faces(seed=6)
    with torch.no_grad():
        assert (ours(faces) - theirs(faces)).abs().max() < 1e-5
