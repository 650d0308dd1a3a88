"""The plugin against a real arcface_torch checkout ($ARCFACE_TORCH_ROOT; skipped, saying so, without).

Oracles: arcface_torch's own code (get_config, MXFaceDataset, get_dataloader, backbones.get_model,
PartialFC_V2, its scheduler's closed form), real MXNet in the oracle venv, the reconstruction
stage recomputed from the shard's records, and `facemae convert`'s output. `train_v2.main` itself
runs end to end in one CPU process (`facemae arcface-train` without torchrun): its loss, its
`model.pt` loaded by the plugin's backbone and verified, its batches against `facemae convert`.
"""
import json
import logging
import os
import pickle
import runpy
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facemae_plugin.arcface import ArcfaceCheckout, ArcfaceCheckoutError, prepare
from facemae_plugin.arcface.configs import load_arcface_config
from facemae_plugin.arcface.dataloader import BatchRecord, wrap_get_dataloader
from facemae_plugin.arcface.irm_loss import IRMTerm, irm_partial_fc
from facemae_plugin.arcface.patches import patch_lr_scheduler, patch_verification_loader, scheduler_takes_verbose
from facemae_plugin.formats.binfile import BinFormatError
from facemae_plugin.config import ConfigError, merge_config
from facemae_plugin.data.dataset import normalise
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.formats.recordio import IRHeader, RecordWriter, pack_img
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.privatizers.facemae import ReconstructionStage
from tests.conftest import hostile_pickle, smooth_image, write_layout_a
from tests.helpers import IN_PROCESS
from tests.mxnet_oracle import run_oracle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH_RECIPE = os.path.join(REPO, "recipes", "arcface_synth_mbf_facemae.py")


@pytest.fixture
def arcface_root():
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("ARCFACE_TORCH_ROOT is unset: point it at recognition/arcface_torch of an insightface checkout")
    return root


@pytest.fixture
def checkout(arcface_root):
    """The checkout, imported fresh for each test (its configs.base edict is mutated by get_config)."""
    saved = {n: m for n, m in sys.modules.items() if n == "mxnet" or n.startswith("mxnet.")}
    checkout = ArcfaceCheckout(arcface_root)
    yield checkout
    checkout.forget()
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture
def shard(tmp_path):
    """Layout A: 3 identities, 2 + 3 + 4 images."""
    write_layout_a(tmp_path / "shard", [2, 3, 4])
    return str(tmp_path / "shard")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("facemae") / "facemae.pt"
    return create_facemae("tiny", patch_size=8).save_checkpoint(str(path))


def write_recipe(path, **blocks):
    """An arcface_torch config on ``rec`` with the given plugin blocks (dicts)."""
    lines = ["from easydict import EasyDict as edict", "config = edict()",
             "config.network = 'mbf'", "config.margin_list = (1.0, 0.0, 0.4)", "config.batch_size = 4",
             "config.num_classes = 3", "config.num_image = 9", "config.num_epoch = 1", "config.warmup_epoch = 0",
             "config.val_targets = []", "config.dali = False"]
    for key, value in blocks.items():
        lines.append(f"config.{key} = edict({value!r})" if isinstance(value, dict) else f"config.{key} = {value!r}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ----------------------------------------------------------------- checkout and configs

def test_checkout_matches_the_hooked_signatures(checkout):
    modules = checkout.check_library_modules()
    checkout.check_train_v2_source()
    assert modules["dataset"].__file__.startswith(checkout.root)
    assert "train_v2" not in sys.modules  # importing it would start NCCL


def test_the_commit_is_the_checkouts_not_that_of_a_repository_it_was_copied_into(tmp_path):
    import subprocess

    from facemae_plugin.arcface.checkout import REQUIRED_FILES
    repo, git = tmp_path / "project", ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    folder = repo / "scratch" / "arcface_torch"
    for name in REQUIRED_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
    (repo / "README").write_text("another project")
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "x"], check=True)
    assert ArcfaceCheckout(folder).commit == "commit unknown: not a git checkout"
    subprocess.run([*git, "-C", str(repo), "add", "scratch"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "y"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert ArcfaceCheckout(folder).commit == head


def test_signature_drift_names_file_and_commit(checkout, monkeypatch):
    dataset = checkout.import_module("dataset")

    def get_dataloader(root_dir, batch_size, local_rank, dali=False):
        pass

    monkeypatch.setattr(dataset, "get_dataloader", get_dataloader)
    with pytest.raises(ArcfaceCheckoutError) as error:
        checkout.check_library_modules()
    message = str(error.value)
    assert os.path.join(checkout.root, "dataset.py") in message and checkout.commit in message
    assert "get_dataloader(root_dir, batch_size, local_rank, dali)" in message


def test_train_v2_drift_is_found_without_importing_it(tmp_path):
    for name in ("dataset.py", "partial_fc_v2.py", "utils/utils_config.py", "backbones/__init__.py",
                 "configs/base.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    imports = ("from dataset import get_dataloader\nfrom partial_fc_v2 import PartialFC_V2\n"
               "from utils.utils_config import get_config\nfrom lr_scheduler import PolynomialLRWarmup\n"
               "from utils.utils_callbacks import CallBackLogging, CallBackVerification\n")
    (tmp_path / "train_v2.py").write_text(imports + "def main(config, rank):\n    pass\n")
    with pytest.raises(ArcfaceCheckoutError, match=r"train_v2.py.*expected main\(args\), found main\(config, rank\)"):
        ArcfaceCheckout(tmp_path).check_train_v2_source()
    (tmp_path / "train_v2.py").write_text(imports.replace("dataset", "data_v3") + "def main(args):\n    pass\n")
    with pytest.raises(ArcfaceCheckoutError, match="from dataset import get_dataloader"):
        ArcfaceCheckout(tmp_path).check_train_v2_source()


def test_not_a_checkout_fails_in_one_line(tmp_path):
    with pytest.raises(ArcfaceCheckoutError, match="not an arcface_torch checkout.*train_v2.py"):
        ArcfaceCheckout(tmp_path)


def test_arcface_get_config_loads_a_plugin_recipe(checkout):
    cfg = load_arcface_config(checkout, SYNTH_RECIPE)
    recipe = runpy.run_path(SYNTH_RECIPE)["config"]
    base = runpy.run_path(os.path.join(checkout.root, "configs", "base.py"))["config"]
    for key, value in recipe.items():
        if key != "facemae" and value is not None:
            assert cfg[key] == value, key
    for key in set(base) - set(recipe):  # keys only arcface_torch's base.py sets
        assert cfg[key] == base[key], key
    assert cfg.output == os.path.join("work_dirs", "arcface_synth_mbf_facemae")  # get_config's own default
    assert cfg.facemae.checkpoint == recipe.facemae.checkpoint and cfg.facemae.autocast is None
    assert "configs.arcface_synth_mbf_facemae" not in sys.modules


def test_bad_facemae_block_names_the_key(checkout, tmp_path):
    path = write_recipe(tmp_path / "typo.py", facemae=dict(checkpoint="x.pt", mask_raito=0.5))
    with pytest.raises(ConfigError, match=r"config.facemae: unknown key 'mask_raito' \(did you mean 'mask_ratio'\?\)"):
        load_arcface_config(checkout, path)


# ------------------------------------------------------------------ data through compat

MXFACE_ORACLE = r"""
import json, os, sys
import numpy as np
import mxnet as mx

# MXFaceDataset's reading rules: key 0 with flag > 0 gives image keys 1..a-1, else every .idx key;
# an array label contributes its first value; images decode to RGB.
root, out = sys.argv[1], sys.argv[2]
rec = mx.recordio.MXIndexedRecordIO(os.path.join(root, "train.idx"), os.path.join(root, "train.rec"), "r")
header, _ = mx.recordio.unpack(rec.read_idx(0))
keys = list(range(1, int(header.label[0]))) if header.flag > 0 else list(rec.keys)
images, labels = [], []
for key in keys:
    header, payload = mx.recordio.unpack(rec.read_idx(key))
    label = header.label if isinstance(header.label, float) else header.label[0]
    labels.append(int(label))
    images.append(mx.image.imdecode(payload).asnumpy())
np.savez(out, images=np.stack(images), labels=np.array(labels), keys=np.array(keys))
"""


def write_layout_b(out_dir, count=5, seed=1):
    """im2rec's layout: keys from 0, scalar labels, no header record."""
    os.makedirs(out_dir)
    rng = np.random.default_rng(seed)
    with RecordWriter(os.path.join(out_dir, "train.rec"), os.path.join(out_dir, "train.idx")) as writer:
        for key in range(count):
            writer.write_idx(key, pack_img(IRHeader(0, float(key % 2), key, 0), smooth_image(rng)))
    return out_dir


def test_mxfacedataset_through_compat_equals_real_mxnet(checkout, shard, tmp_path, mxnet_python, monkeypatch):
    monkeypatch.setenv("FACEMAE_COMPAT_MXNET", "shim")
    dataset_module = checkout.import_module("dataset")
    assert sys.modules["mxnet"].__version__.endswith("facemae.compat")
    for root in (shard, write_layout_b(str(tmp_path / "layout_b"))):
        dataset = dataset_module.MXFaceDataset(root_dir=root, local_rank=0)
        dataset.transform = None  # what its transform receives: the decoded uint8 RGB array
        samples = [dataset[i] for i in range(len(dataset))]
        run_oracle(mxnet_python, MXFACE_ORACLE, [root, tmp_path / "mx.npz"], cwd=tmp_path)
        expected = np.load(tmp_path / "mx.npz")
        np.testing.assert_array_equal(dataset.imgidx, expected["keys"])
        np.testing.assert_array_equal(np.stack([s[0] for s in samples]), expected["images"])
        assert [int(s[1]) for s in samples] == expected["labels"].tolist()


LOAD_BIN_ORACLE = r"""
import pickle, sys
import numpy as np
import mxnet as mx
from mxnet import ndarray as nd

bins, issame = pickle.load(open(sys.argv[1], "rb"))
out = [[], []]
for raw in bins:
    img = mx.image.imdecode(raw)
    if img.shape[1] != 112:
        img = mx.image.resize_short(img, 112)
    img = nd.transpose(img, axes=(2, 0, 1))
    out[0].append(img.asnumpy())
    out[1].append(mx.ndarray.flip(data=img, axis=2).asnumpy())
np.save(sys.argv[2], np.array(out).astype(np.float32))
"""


def test_verification_load_bin_through_compat_equals_real_mxnet(checkout, tmp_path, mxnet_python, monkeypatch):
    monkeypatch.setenv("FACEMAE_COMPAT_MXNET", "shim")
    rng = np.random.default_rng(5)
    sizes = [112, 112, 128, 112]  # a 128x128 image goes through resize_short
    bins = [cv2.imencode(".jpg", smooth_image(rng, size))[1].tobytes() for size in sizes]
    with open(tmp_path / "pairs.bin", "wb") as f:
        pickle.dump((bins, [True, False]), f)
    verification = checkout.import_module("eval.verification")
    data_list, issame = verification.load_bin(str(tmp_path / "pairs.bin"), (112, 112))
    run_oracle(mxnet_python, LOAD_BIN_ORACLE, [tmp_path / "pairs.bin", tmp_path / "mx.npy"], cwd=tmp_path)
    expected = np.load(tmp_path / "mx.npy")
    assert issame == [True, False]
    for flip in (0, 1):
        np.testing.assert_array_equal(data_list[flip].numpy(), expected[flip])


def _bare_callback(callback_class):
    """A CallBackVerification without its __init__ (which needs a process group): just the set lists."""
    callback = callback_class.__new__(callback_class)
    callback.ver_list, callback.ver_name_list = [], []
    return callback


def test_train_v2_validation_sets_load_through_the_restricted_unpickler(checkout, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEMAE_COMPAT_MXNET", "shim")
    callbacks = checkout.import_module("utils.utils_callbacks")
    train_v2 = types.SimpleNamespace(CallBackVerification=callbacks.CallBackVerification)
    assert "restricted unpickler" in patch_verification_loader(train_v2)
    assert issubclass(train_v2.CallBackVerification, callbacks.CallBackVerification)

    (tmp_path / "evil.bin").write_bytes(hostile_pickle(tmp_path / "pwned"))
    with pytest.raises(BinFormatError, match=r"evil.bin: refused to load posix.system"):
        _bare_callback(train_v2.CallBackVerification).init_dataset(["evil"], str(tmp_path), (112, 112))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(TypeError):  # upstream's own loader runs the payload, then fails to unpack its result
        _bare_callback(callbacks.CallBackVerification).init_dataset(["evil"], str(tmp_path), (112, 112))
    assert (tmp_path / "pwned").exists()

    rng = np.random.default_rng(2)
    bins = [cv2.imencode(".jpg", smooth_image(rng, size))[1].tobytes() for size in (112, 112, 128, 112)]
    with open(tmp_path / "lfw.bin", "wb") as f:
        pickle.dump((bins, [True, False]), f)
    patched = _bare_callback(train_v2.CallBackVerification)
    patched.init_dataset(["lfw", "absent"], str(tmp_path), (112, 112))
    (data_list, issame), = patched.ver_list
    expected, expected_issame = checkout.import_module("eval.verification").load_bin(str(tmp_path / "lfw.bin"),
                                                                                     (112, 112))
    assert patched.ver_name_list == ["lfw"] and list(issame) == expected_issame == [True, False]
    for flip in (0, 1):
        assert torch.equal(data_list[flip], expected[flip])


def test_arcface_get_model_loads_our_model_pt_strictly(checkout, tmp_path):
    backbones = checkout.import_module("backbones")
    images = torch.randn(2, 3, 112, 112)
    for name in ("mbf", "r18"):
        torch.manual_seed(1)
        ours = get_backbone(name, num_features=512).eval()
        torch.save(ours.state_dict(), tmp_path / "model.pt")
        theirs = backbones.get_model(name, dropout=0.0, fp16=False, num_features=512)
        theirs.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(theirs.eval()(images), ours(images), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the batch stage

def cpu_data_loader(local_rank, **kwargs):
    """Stand-in for arcface_torch's DataLoaderX, whose CUDA streams need a GPU; same DataLoader args."""
    return DataLoader(**kwargs)


def reconstruct_from_records(stage, shard_dir, keys, flipped):
    """What the batch must hold, computed apart from the loader: decode, normalise, stage, mirror."""
    with FaceShard(shard_dir) as faces:
        originals = torch.stack([normalise(faces.decode(int(k))) for k in keys])
    out = stage(originals, keys)
    return torch.where(flipped.view(-1, 1, 1, 1), out.flip(-1), out)


def test_wrapped_get_dataloader_yields_stage_output(checkout, shard, checkpoint, monkeypatch):
    dataset_module = checkout.import_module("dataset")
    monkeypatch.setattr(dataset_module, "DataLoaderX", cpu_data_loader)
    stage = ReconstructionStage.from_checkpoint(checkpoint, device="cpu")
    record = BatchRecord()
    get_dataloader = wrap_get_dataloader(dataset_module.get_dataloader, stage, record)
    loader = get_dataloader(shard, 0, 4, False, False, 2048, 0)
    stock = dataset_module.get_dataloader(shard, 0, 4, False, False, 2048, 0)
    assert isinstance(loader, DataLoader)  # train_v2 calls sampler.set_epoch only on DataLoaders

    torch.manual_seed(11)
    staged = [(images, labels, record.keys.clone(), record.flipped.clone(), record.originals.clone())
              for images, labels in loader]
    torch.manual_seed(11)
    plain = list(stock)
    assert len(staged) == len(plain) == 2  # 9 images, batches of 4, drop_last
    all_flips = torch.cat([s[3] for s in staged])
    assert all_flips.any() and not all_flips.all()  # both branches of the flip are exercised
    for (images, labels, keys, flipped, originals), (plain_images, plain_labels) in zip(staged, plain):
        # Same order, labels and flips as arcface_torch without the plugin: the flip moved, not changed.
        torch.testing.assert_close(originals, plain_images, rtol=0, atol=0)
        assert torch.equal(labels, plain_labels)
        with FaceShard(shard) as faces:
            assert [faces.label(int(k)) for k in keys] == labels.tolist()
        expected = reconstruct_from_records(stage, shard, keys.tolist(), flipped)
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


def test_batch_stage_equals_facemae_convert_and_offline_checks_it(checkout, shard, checkpoint, tmp_path):
    from facemae_plugin.convert import convert

    stage = ReconstructionStage.from_checkpoint(checkpoint, device="cpu")
    released = str(tmp_path / "released")
    convert(shard, released, stage, IN_PROCESS, progress=False)
    with FaceShard(shard) as faces:
        keys = list(faces.image_keys)
        originals = torch.stack([normalise(faces.decode(k)) for k in keys])
    online = ((stage(originals, keys) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # [N, 3, H, W]
    with FaceShard(released) as faces:
        for key, rgb in zip(keys, online.permute(0, 2, 3, 1).numpy()):
            # convert writes the stage's image as a quality-95 BGR JPEG; nothing else may differ.
            jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
            np.testing.assert_array_equal(faces.decode(key), cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])

    good = write_recipe(tmp_path / "offline.py", rec=released,
                        facemae=dict(checkpoint=checkpoint, stage="offline"))
    plan = prepare(checkout.root, good, device="cpu")
    assert plan.stage is None and plan.release["privatizer"]["checkpoint_sha256"] == stage.checkpoint["sha256"]
    other_ckpt = create_facemae("tiny", patch_size=8).save_checkpoint(str(tmp_path / "other.pt"))
    wrong = write_recipe(tmp_path / "wrong.py", rec=released, facemae=dict(checkpoint=other_ckpt, stage="offline"))
    with pytest.raises(ConfigError, match="made with checkpoint_sha256=.*other.pt"):
        prepare(checkout.root, wrong, device="cpu")
    seed = write_recipe(tmp_path / "seed.py", rec=released, facemae=dict(checkpoint=checkpoint, seed=3,
                                                                          stage="offline"))
    with pytest.raises(ConfigError, match="made with seed=0, config.facemae asks for 3"):
        prepare(checkout.root, seed, device="cpu")
    raw = write_recipe(tmp_path / "raw.py", rec=shard, facemae=dict(checkpoint=checkpoint, stage="offline"))
    with pytest.raises(ConfigError, match="facemae_provenance.json does not exist"):
        prepare(checkout.root, raw, device="cpu")


# ------------------------------------------------------------------ IRM and patches

@pytest.fixture
def gloo_world():
    """A one-process gloo group: PartialFC_V2 asserts a process group exists."""
    from facemae_plugin.arcface.one_process import one_process_group

    with one_process_group():
        yield


def test_irm_partial_fc_adds_weighted_irm_to_arcface_loss(checkout, gloo_world, monkeypatch):
    partial_fc_v2 = checkout.import_module("partial_fc_v2")
    losses = checkout.import_module("losses")
    # PartialFC_V2.forward allocates with .cuda(); on a CPU that is the identity (test stand-in only).
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    margin = losses.CombinedMarginLoss(64, 1.0, 0.0, 0.4, 0)
    torch.manual_seed(2)
    plain = partial_fc_v2.PartialFC_V2(margin, 512, 5, 1.0, False)
    teacher = get_backbone("mbf").eval()
    record = BatchRecord()
    record.originals = torch.randn(4, 3, 112, 112)
    term = IRMTerm(teacher, record, weight=0.5)
    joint_class = irm_partial_fc(partial_fc_v2.PartialFC_V2, term)
    joint = joint_class(margin, 512, 5, 1.0, False)
    joint.load_state_dict(plain.state_dict())  # same keys: checkpoints and resume unchanged
    assert list(joint.state_dict()) == list(plain.state_dict())
    assert [p.shape for p in joint.parameters()] == [p.shape for p in plain.parameters()]

    embeddings = torch.randn(4, 512, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    loss = joint(embeddings, labels.clone())
    with torch.no_grad():
        arcface_loss = plain(embeddings, labels.clone())
        unit_t = torch.nn.functional.normalize(teacher(record.originals), dim=1)
        unit_b = torch.nn.functional.normalize(embeddings, dim=1)
        irm = ((unit_b @ unit_b.T - unit_t @ unit_t.T) ** 2).mean()
    torch.testing.assert_close(loss.detach(), arcface_loss + 0.5 * irm, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert embeddings.grad is not None and all(p.grad is None for p in teacher.parameters())


def test_lr_scheduler_patch_runs_upstream_schedule(checkout):
    if scheduler_takes_verbose():
        pytest.skip(f"torch {torch.__version__} still takes LRScheduler(verbose=): no patch needed")
    lr_scheduler = checkout.import_module("lr_scheduler")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match="verbose"):
        lr_scheduler.PolynomialLRWarmup(optimizer, warmup_iters=3, total_iters=10)
    namespace = types.SimpleNamespace(PolynomialLRWarmup=lr_scheduler.PolynomialLRWarmup)
    assert "verbose" in patch_lr_scheduler(namespace)
    scheduler = namespace.PolynomialLRWarmup(optimizer, warmup_iters=3, total_iters=10)
    assert isinstance(scheduler, lr_scheduler.PolynomialLRWarmup)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(scheduler.get_last_lr(), scheduler._get_closed_form_lr())  # upstream's formula


# ------------------------------------------------------------------ prepare, CLI, own loop

def test_dry_run_reports_hooks_and_irm_weight_zero_changes_nothing(checkout, shard, checkpoint, tmp_path, capsys):
    from facemae_plugin.cli import main

    torch.save(get_backbone("mbf").state_dict(), tmp_path / "teacher.pt")
    irm = dict(weight=0.5, teacher=str(tmp_path / "teacher.pt"), network="mbf")
    joint = write_recipe(tmp_path / "joint.py", rec=shard, facemae=dict(checkpoint=checkpoint), irm=irm)
    assert main(["arcface-train", "--arcface-root", checkout.root, joint, "--dry-run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    hooks = " ".join(result["hooks"])
    assert "get_dataloader" in hooks and "PartialFC_V2: + 0.5 * IRM" in hooks and not result["trained"]
    assert result["stage"]["checkpoint_sha256"] and result["arcface_commit"] == checkout.commit

    plain = write_recipe(tmp_path / "plain.py", rec=shard, irm=dict(irm, weight=0.0))
    plan = prepare(checkout.root, plain, device="cpu")
    assert plan.stage is None and plan.irm_term is None  # nothing to hook: arcface_torch as shipped
    no_stage = write_recipe(tmp_path / "no_stage.py", rec=shard, irm=irm)
    with pytest.raises(ConfigError, match="irm.weight=0.5 needs config.facemae with stage='batch'"):
        prepare(checkout.root, no_stage, device="cpu")
    assert main(["arcface-train", "--arcface-root", str(tmp_path), joint, "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("facemae arcface-train: error: ")


def test_under_torchrun_without_cuda_training_says_to_start_one_process(checkout, shard, tmp_path, capsys,
                                                                        monkeypatch):
    from facemae_plugin.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    plain = write_recipe(tmp_path / "plain.py", rec=shard)
    assert main(["arcface-train", "--arcface-root", checkout.root, plain, "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("facemae arcface-train: error:") and "without torchrun" in lines[-1]
    assert "train_v2" not in sys.modules


# ------------------------------------------------------------------ train_v2.main in one process

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """20 identities x 10 images, and a held-out .bin of 200 pairs (what train_v2 validates on)."""
    from facemae_plugin.cli import main

    out = tmp_path_factory.mktemp("arcface_faces") / "faces"
    assert main(["synth", str(out), "--identities", "20", "--images-per-identity", "10", "--holdout-identities",
                 "10", "--pairs", "200", "--seed", "1", "--quiet"]) == 0
    return str(out)


# A FaceMAE that never trained keeps half the face: paste mode at mask 0.5 leaves something to learn.
STAGE = dict(output="paste", mask_ratio=0.5)


def train_v2_recipe(path, rec, output, **blocks):
    """A few epochs of train_v2 on ``faces``: validation on the held-out set once, at the end."""
    return write_recipe(path, rec=rec, output=str(output), num_classes=20, num_image=200, batch_size=20,
                        num_epoch=6, warmup_epoch=1, lr=0.1, val_targets=["holdout"], verbose=60, frequent=2,
                        num_workers=0, **blocks)


def logged_losses(output):
    with open(os.path.join(output, "training.log")) as f:
        return [float(line.split("Loss ")[1].split()[0]) for line in f if "Loss " in line]


def verified_accuracy(model, bin_path, capsys):
    from facemae_plugin.cli import main

    capsys.readouterr()
    assert main(["verify", "--model", str(model), "--network", "mbf", bin_path, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sets"][0]["accuracy_flip"]


def arcface_train(checkout, config):
    from facemae_plugin.cli import main

    return main(["arcface-train", "--arcface-root", checkout.root, config, "--device", "cpu", "--quiet"])


def assert_trained_and_put_back(checkout, output, handlers):
    """train_v2 learnt, wrote what it writes, and the process is as before the run."""
    losses = logged_losses(output)
    assert len(losses) >= 6 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
    assert os.listdir(os.path.join(output, "tensorboard"))
    model = get_backbone("mbf")
    model.load_state_dict(torch.load(os.path.join(output, "model.pt"), weights_only=True), strict=True)
    train_v2 = sys.modules["train_v2"]
    assert train_v2.torch is torch and train_v2.get_dataloader is checkout.import_module("dataset").get_dataloader
    assert train_v2.PartialFC_V2 is checkout.import_module("partial_fc_v2").PartialFC_V2
    assert checkout.import_module("dataset").DataLoaderX.__module__ == "dataset"
    assert not torch.distributed.is_initialized()
    assert logging.getLogger().handlers == handlers  # train_v2's training.log handler went with the run
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1).cuda()  # no redirection left behind (a machine without CUDA)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="runs train_v2 on the CPU of a machine without CUDA")
def test_train_v2_main_in_one_cpu_process_with_the_batch_stage_and_irm(checkout, faces, checkpoint, tmp_path,
                                                                         monkeypatch, capsys):
    from facemae_plugin.convert import convert

    pytest.importorskip("tensorboard", reason="train_v2 imports torch.utils.tensorboard (pip install tensorboard)")
    torch.manual_seed(0)
    teacher = str(tmp_path / "teacher.pt")
    torch.save(get_backbone("mbf").state_dict(), teacher)
    seen, reconstruct = [], ReconstructionStage.__call__

    def spy(self, images, keys):  # what train_v2's loader hands the backbone, before the flip
        out = reconstruct(self, images, keys)
        seen.append((list(map(int, keys)), out.clone()))
        return out

    monkeypatch.setattr(ReconstructionStage, "__call__", spy)
    config = train_v2_recipe(tmp_path / "joint.py", faces, tmp_path / "out",
                             facemae=dict(checkpoint=checkpoint, stage="batch", **STAGE),
                             irm=dict(weight=1.0, teacher=teacher, network="mbf"))
    handlers = list(logging.getLogger().handlers)
    assert arcface_train(checkout, config) == 0
    assert_trained_and_put_back(checkout, tmp_path / "out", handlers)
    with open(tmp_path / "out" / "training.log") as f:
        logged = f.read()
    assert "[holdout][60]Accuracy-Flip" in logged  # the callback read the .bin (restricted unpickler)
    assert verified_accuracy(tmp_path / "out" / "model.pt", os.path.join(faces, "holdout.bin"), capsys) > 0.6

    # Every batch train_v2 trained on is what `facemae convert` writes for those records.
    assert len(seen) == 60
    monkeypatch.setattr(ReconstructionStage, "__call__", reconstruct)
    released = str(tmp_path / "released")
    convert(faces, released, ReconstructionStage.from_checkpoint(checkpoint, **STAGE), IN_PROCESS, progress=False)
    with FaceShard(released) as converted:
        for keys, out in seen[::19]:
            online = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for key, rgb in zip(keys, online):
                jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                np.testing.assert_array_equal(converted.decode(key), cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="runs train_v2 on the CPU of a machine without CUDA")
@pytest.mark.parametrize("block", ["offline", "none"])
def test_train_v2_main_in_one_cpu_process_on_a_converted_shard_or_as_shipped(block, checkout, faces, checkpoint,
                                                                              tmp_path, capsys):
    from facemae_plugin.convert import convert

    pytest.importorskip("tensorboard", reason="train_v2 imports torch.utils.tensorboard (pip install tensorboard)")
    if block == "offline":
        rec = str(tmp_path / "released")
        convert(faces, rec, ReconstructionStage.from_checkpoint(checkpoint, **STAGE), IN_PROCESS, progress=False)
        blocks = dict(facemae=dict(checkpoint=checkpoint, stage="offline", **STAGE))
    else:
        rec, blocks = faces, {}
    config = train_v2_recipe(tmp_path / f"{block}.py", rec, tmp_path / "out", **blocks)
    handlers = list(logging.getLogger().handlers)
    assert arcface_train(checkout, config) == 0
    assert_trained_and_put_back(checkout, tmp_path / "out", handlers)
    assert verified_accuracy(tmp_path / "out" / "model.pt", os.path.join(faces, "holdout.bin"), capsys) > 0.6


@pytest.mark.slow
def test_two_one_process_runs_at_once_do_not_collide(checkout, faces, tmp_path):
    """Each run's process group listens on a port of its own (train_v2 alone would bind 12584 twice)."""
    import subprocess

    pytest.importorskip("tensorboard", reason="train_v2 imports torch.utils.tensorboard (pip install tensorboard)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = REPO
    runs = []
    for name in ("a", "b"):
        config = write_recipe(tmp_path / f"{name}.py", rec=faces, output=str(tmp_path / name), num_classes=20,
                              num_image=200, batch_size=50, num_workers=0)
        runs.append(subprocess.Popen([sys.executable, "-m", "facemae_plugin.cli", "arcface-train", "--arcface-root",
                                      checkout.root, config, "--device", "cpu", "--quiet"], env=env, cwd=tmp_path,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-2000:]
    assert all((tmp_path / name / "model.pt").is_file() for name in ("a", "b"))


def test_plugin_loop_runs_the_batch_stage_in_place_of_train_v2(checkout, shard, checkpoint, tmp_path):
    """CPU stand-in for train_v2's CUDA loop: the plugin's loop with the same stage, then arcface loads it."""
    from facemae_plugin.train.recognise import train_recogniser

    stage = ReconstructionStage.from_checkpoint(checkpoint, device="cpu")
    seen = []

    def batch_stage(images, keys):
        out = stage(images, keys)
        seen.append((images.clone(), list(map(int, keys)), out))
        return out

    cfg = merge_config(dict(network="mbf", rec=shard, num_classes=3, batch_size=4, num_epoch=1, lr=0.01,
                            num_workers=0, output=str(tmp_path / "out"), margin_list=(1.0, 0.0, 0.4),
                            flip=False))
    summary = train_recogniser(cfg, device="cpu", progress=False, batch_stage=batch_stage, max_steps=2)
    assert summary["steps"] == 2 and len(seen) == 2
    for images, keys, out in seen:
        expected = reconstruct_from_records(stage, shard, keys, torch.zeros(len(keys), dtype=torch.bool))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        with FaceShard(shard) as faces:
            originals = torch.stack([normalise(faces.decode(k)) for k in keys])
        torch.testing.assert_close(images, originals, rtol=0, atol=0)
    backbones = checkout.import_module("backbones")
    model = backbones.get_model("mbf", dropout=0.0, fp16=False, num_features=512)
    model.load_state_dict(torch.load(summary["model"], weights_only=True), strict=True)


TRAIN_V2_IMPORT = r"""
import json, sys
from facemae_plugin.arcface import ArcfaceCheckout

checkout = ArcfaceCheckout(sys.argv[1])
try:
    checkout.import_module("train_v2")
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"error": error, "mxnet": sys.modules["mxnet"].__version__,
                  "imported": sorted(n for n in ("dataset", "partial_fc_v2", "lr_scheduler", "eval.verification",
                                                 "utils.utils_callbacks", "utils.utils_config") if n in sys.modules)}))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine train_v2 imports fully")
def test_train_v2_imports_through_compat_up_to_nccl(checkout, tmp_path):
    """On a CPU, `import train_v2` gets through every import (MXNet via compat) and stops at NCCL."""
    import socket
    import subprocess

    pytest.importorskip("tensorboard", reason="train_v2 imports torch.utils.tensorboard (pip install tensorboard)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", TRAIN_V2_IMPORT, checkout.root], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "NCCL" in result["error"] and "GPU" in result["error"], result["error"]
    assert result["mxnet"].endswith("facemae.compat")
    assert result["imported"] == sorted(["dataset", "partial_fc_v2", "lr_scheduler", "eval.verification",
                                         "utils.utils_callbacks", "utils.utils_config"])
