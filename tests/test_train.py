"""Both training loops on a tiny synthetic shard: outputs, determinism, resume, config errors."""
import os

import pytest
import torch

from facemae_plugin.config import ConfigError, merge_config
from facemae_plugin.models.backbones import load_backbone
from facemae_plugin.models.mae import FaceMAE
from facemae_plugin.synthdata import make_synthetic_dataset
from facemae_plugin.train.pretrain import pretrain
from facemae_plugin.train.recognise import train_recogniser

IDENTITIES = 6


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, identities=IDENTITIES, images_per_identity=6, holdout_identities=4,
                           num_pairs=20, progress=False)
    return out


def recognition_config(synth_dir, output, **overrides):
    return merge_config({
        "network": "mbf", "embedding_size": 64, "rec": str(synth_dir), "num_classes": IDENTITIES,
        "batch_size": 12, "lr": 0.05, "num_epoch": 1, "num_workers": 0, "val_targets": ["holdout"],
        "output": str(output), "seed": 3, **overrides})


def pretrain_config(synth_dir, output, **overrides):
    return merge_config({
        "rec": str(synth_dir), "batch_size": 12, "lr": 2e-3, "weight_decay": 0.05, "optimizer": "adamw",
        "num_epoch": 2, "num_workers": 0, "output": str(output), "seed": 5, "flip": False,
        "mae": {"preset": "tiny", "mask_ratio": 0.75, "grid_images": 4}, **overrides})


def test_recogniser_writes_an_arcface_model_pt(synth_dir, tmp_path):
    summary = train_recogniser(recognition_config(synth_dir, tmp_path), device="cpu", progress=False)
    assert summary["steps"] == 3  # 36 images // 12
    model = load_backbone(os.path.join(tmp_path, "model.pt"), "mbf")  # strict load, arcface keys
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 64)
    assert 0.0 <= summary["epochs"][0]["val"]["holdout"] <= 1.0


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
