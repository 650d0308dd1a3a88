"""Both training loops on a tiny synthetic shard: outputs, determinism, resume, config errors."""
import hashlib
import json
import os

import pytest
import torch

from facemae_plugin.config import ConfigError
from facemae_plugin.core.errors import CheckpointError
from facemae_plugin.data.dataset import normalise
from facemae_plugin.models.backbones import load_backbone
from facemae_plugin.models.mae import FaceMAE, create_facemae
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.privatizers.facemae import ReconstructionStage
from facemae_plugin.train import recognise
from facemae_plugin.train.common import OptimizerStep
from facemae_plugin.train.pretrain import adamw_param_groups, pretrain
from facemae_plugin.train.recognise import train_recogniser

from .helpers import pretrain_config, recognition_config



def test_recogniser_writes_an_arcface_model_pt(synth_dir, tmp_path):
    summary = train_recogniser(recognition_config(synth_dir, tmp_path), device="cpu", progress=False)
    assert summary["steps"] == 3  # 36 images // 12
    model = load_backbone(os.path.join(tmp_path, "model.pt"), "mbf")  # strict load, arcface keys
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 64)
    assert 0.0 <= summary["epochs"][0]["val"]["holdout"] <= 1.0
    with open(os.path.join(tmp_path, "summary.json")) as f:  # the data it learnt from, named by its .idx
        assert json.load(f)["data"] == summary["data"] == expected_fingerprint(synth_dir)


def test_a_recogniser_started_from_a_model_pt_trains_from_its_weights(synth_dir, tmp_path):
    first = train_recogniser(recognition_config(synth_dir, tmp_path / "first", val_targets=[]), progress=False)
    # the warmup's first step has learning rate 0: it moves nothing, so the weights saved are the ones it started from
    frozen = dict(warmup_epoch=1, val_targets=[], seed=4)
    started = train_recogniser(recognition_config(synth_dir, tmp_path / "started", **frozen), progress=False,
                               start=first["model"], max_steps=1)
    scratch = train_recogniser(recognition_config(synth_dir, tmp_path / "scratch", **frozen), progress=False,
                               max_steps=1)
    weights = {name: dict(load_backbone(summary["model"], "mbf").named_parameters())
               for name, summary in (("first", first), ("started", started), ("scratch", scratch))}
    assert all(torch.equal(weights["started"][key], value) for key, value in weights["first"].items())
    assert not all(torch.equal(weights["scratch"][key], value) for key, value in weights["first"].items())
    assert started["started_from"] == first["model"] and scratch["started_from"] is None
    with pytest.raises(CheckpointError, match="does not fit network 'r18'"):
        train_recogniser(recognition_config(synth_dir, tmp_path / "other", network="r18", **frozen), progress=False,
                         start=first["model"], max_steps=1)


def expected_fingerprint(shard_dir):
    """The fingerprint of a shard, computed independently: the .idx bytes' sha256 and the header's counts."""
    with open(os.path.join(shard_dir, "train.idx"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with FaceShard(shard_dir) as shard:
        return {"idx_sha256": digest, "layout": "A", "images": 36, "identities": len(shard.identity_ranges())}


def test_recogniser_config_errors_come_before_training(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"config.num_classes=7 but .*property says 6 identities"):
        train_recogniser(recognition_config(synth_dir, tmp_path, num_classes=7), progress=False)
    with pytest.raises(ConfigError, match=r"config.val_targets: .*lfw.bin not found"):
        train_recogniser(recognition_config(synth_dir, tmp_path, val_targets=["lfw"]), progress=False)
    with pytest.raises(ConfigError, match=r"config.rec: .*not a face shard"):
        train_recogniser(recognition_config(tmp_path, tmp_path), progress=False)
    assert not os.path.exists(os.path.join(tmp_path, "model.pt"))


def test_pretrain_lowers_the_pixel_loss_and_saves_everything(synth_dir, tmp_path):
    summary = pretrain(pretrain_config(synth_dir, tmp_path, num_epoch=3), device="cpu", progress=False)
    first, last = summary["epochs"][0]["mse"], summary["epochs"][-1]["mse"]
    assert last < 0.8 * first
    model = FaceMAE.from_checkpoint(os.path.join(tmp_path, "facemae.pt"))
    assert model.step == summary["steps"] and model.extra_config["mask_ratio"] == 0.75
    assert model.extra_config["data"] == summary["data"] == expected_fingerprint(synth_dir)
    assert os.path.isfile(os.path.join(tmp_path, "grid_epoch003.png"))


def test_pretrain_resume_continues_exactly(synth_dir, tmp_path):
    straight = tmp_path / "straight"
    pretrain(pretrain_config(synth_dir, straight), device="cpu", progress=False)
    resumed = tmp_path / "resumed"
    # The first run stops after epoch 1 of 2 (3 steps), as if killed; the schedule still spans 2 epochs.
    pretrain(pretrain_config(synth_dir, resumed), device="cpu", progress=False, max_steps=3)
    pretrain(pretrain_config(synth_dir, resumed), device="cpu", progress=False, resume=True)
    a = torch.load(straight / "facemae.pt", weights_only=True)["model"]
    b = torch.load(resumed / "facemae.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    straight_summary = json.loads((straight / "summary.json").read_text())
    resumed_summary = json.loads((resumed / "summary.json").read_text())
    assert [e["epoch"] for e in resumed_summary["epochs"]] == [1, 2]  # the history goes on
    assert resumed_summary["epochs"] == straight_summary["epochs"]
    assert resumed_summary["images_seen"] == straight_summary["images_seen"] == 2 * 36
    assert "scaler" in torch.load(resumed / "resume.pt", weights_only=True)


def _underflowing_step(use_scaler):
    """One fp16-autocast step on a CPU whose gradient (1e-8 per weight) is below fp16's smallest subnormal."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    update = OptimizerStep(optimizer, layer.parameters(), "cpu", mixed_precision=True, clip_norm=1e9,
                           dtype=torch.float16)
    if not use_scaler:
        update.scaler = torch.amp.GradScaler("cpu", enabled=False)
    before = layer.weight.detach().clone()
    with update.autocast():
        out = layer(torch.ones(4, 8))  # fp16 under autocast
    update(out.float().sum() * 1e-8)
    return (layer.weight.detach() - before).abs().max().item(), update


def test_fp16_steps_use_a_grad_scaler_so_small_gradients_still_train():
    moved_without, _ = _underflowing_step(use_scaler=False)
    moved_with, update = _underflowing_step(use_scaler=True)
    assert moved_without == 0.0  # the gradient underflowed to zero in fp16
    assert moved_with > 0.0 and update.scaler.is_enabled()
    # bf16 (the CPU default) has fp32's range: no scaler
    assert not OptimizerStep(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), [], "cpu",
                             True, 1.0).scaler.is_enabled()


def test_recogniser_loop_scales_fp16_losses(synth_dir, tmp_path, monkeypatch):
    made = []
    original = OptimizerStep.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(OptimizerStep, "__init__", spy)
    monkeypatch.setattr("facemae_plugin.train.common.amp_dtype", lambda device: torch.float16)
    monkeypatch.setattr("facemae_plugin.core.devices.fast_dtype", lambda device: torch.float16)
    train_recogniser(recognition_config(synth_dir, tmp_path, fp16=True), device="cpu", progress=False, max_steps=2)
    (update,), = [made]
    assert update.dtype == torch.float16 and update.scaler.is_enabled()
    assert update.scaler.get_scale() > 1.0


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_is_granted_only_where_it_is_fast(native, monkeypatch):
    """A CPU without native bf16 emulates it, slower than fp32: a loop asking for fp16 trains in fp32
    there (same steps as fp32), and in bf16 where the CPU has it; an explicit dtype is always honoured."""
    monkeypatch.setattr("facemae_plugin.core.devices.native_bf16", lambda: native)
    params = [torch.zeros(1, requires_grad=True)]
    update = OptimizerStep(torch.optim.SGD(params, lr=1), params, "cpu", True, 1.0)
    assert update.mixed_precision is native
    with update.autocast():
        out = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    assert OptimizerStep(torch.optim.SGD(params, lr=1), params, "cpu", True, 1.0,
                         dtype=torch.float16).mixed_precision
    assert not OptimizerStep(torch.optim.SGD(params, lr=1), params, "cpu", False, 1.0).mixed_precision


def test_pretrain_adamw_exempts_biases_norms_and_tokens_from_weight_decay():
    model = create_facemae("tiny", patch_size=16)
    decay, no_decay = adamw_param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"cls_token", "mask_token", "norm.weight", "norm.bias", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.bias", "decoder_pred.bias"} <= exempt
    assert not exempt & {"blocks.0.attn.qkv.weight", "decoder_pred.weight", "patch_embed.proj.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_pretrain_refuses_an_optimizer_it_would_not_use(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"config.optimizer='sgd'; pretraining uses AdamW"):
        pretrain(pretrain_config(synth_dir, tmp_path, optimizer="sgd"), device="cpu", progress=False)


def test_pretrain_with_irm_uses_a_frozen_teacher(synth_dir, tmp_path):
    train_recogniser(recognition_config(synth_dir, tmp_path / "teacher", val_targets=[]), progress=False)
    teacher = str(tmp_path / "teacher" / "model.pt")
    before = torch.load(teacher, weights_only=True)
    cfg = pretrain_config(synth_dir, tmp_path / "mae", num_epoch=1,
                          irm={"weight": 1.0, "teacher": teacher, "network": "mbf"})
    summary = pretrain(cfg, device="cpu", progress=False)
    assert summary["epochs"][0]["irm"] > 0
    after = torch.load(teacher, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pretrain_irm_needs_its_teacher(synth_dir, tmp_path):
    cfg = pretrain_config(synth_dir, tmp_path, irm={"weight": 1.0, "teacher": str(tmp_path / "x.pt")})
    with pytest.raises(ConfigError, match=r"config.irm.teacher: .*x.pt not found"):
        pretrain(cfg, progress=False)


def test_batch_stage_sees_each_record_as_stored_and_the_flip_comes_after(synth_dir, tmp_path, monkeypatch):
    seen, flags = [], []

    def stage(images, keys):
        seen.append((images.clone(), [int(k) for k in keys]))
        return images

    real_mirror = recognise.mirror_where

    def mirror_spy(images, flipped):
        flags.extend(bool(f) for f in flipped)
        return real_mirror(images, flipped)

    monkeypatch.setattr(recognise, "mirror_where", mirror_spy)
    train_recogniser(recognition_config(synth_dir, tmp_path, flip=True), device="cpu", progress=False,
                     batch_stage=stage, max_steps=3)
    with FaceShard(synth_dir) as shard:
        for images, keys in seen:
            for image, key in zip(images, keys):
                assert torch.equal(image, normalise(shard.decode(key))), key  # never a mirrored record
    assert len(flags) == 36 and 0 < sum(flags) < 36  # arcface_torch's random flip still happens


def test_facemae_train_honours_a_facemae_block(synth_dir, tmp_path, monkeypatch):
    checkpoint = create_facemae("tiny", patch_size=16).save_checkpoint(str(tmp_path / "facemae.pt"))
    calls = []
    real_call = ReconstructionStage.__call__
    monkeypatch.setattr(ReconstructionStage, "__call__",
                        lambda self, images, keys: calls.append(len(keys)) or real_call(self, images, keys))
    cfg = recognition_config(synth_dir, tmp_path / "run", facemae={"checkpoint": checkpoint, "mask_ratio": 0.5})
    train_recogniser(cfg, device="cpu", progress=False, max_steps=2)
    assert calls == [12, 12]


@pytest.mark.parametrize("key,value,message", [
    ("sample_rate", 0.3, r"config.sample_rate=0.3 does nothing in facemae train"),
    ("gradient_acc", 4, r"config.gradient_acc=4 does nothing"),
    ("resume", True, r"config.resume=True does nothing"),
    ("dali", True, r"config.dali=True does nothing"),
    ("irm", {"weight": 1.0, "teacher": "t.pt", "network": "mbf"}, r"config.irm.weight=1.0: facemae train adds no IRM"),
])
def test_recognition_refuses_keys_it_would_ignore(synth_dir, tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        train_recogniser(recognition_config(synth_dir, tmp_path, **{key: value}), device="cpu", progress=False)


def test_pretrain_without_a_grid_writes_none(synth_dir, tmp_path):
    pretrain(pretrain_config(synth_dir, tmp_path, num_epoch=1, mae={"preset": "tiny", "grid_images": 0}),
             device="cpu", progress=False)
    assert os.path.isfile(tmp_path / "facemae.pt") and not list(tmp_path.glob("grid_epoch*.png"))
