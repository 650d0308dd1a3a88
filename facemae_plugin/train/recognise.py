"""The recognition loop: arcface_torch's recipe on one process or under ``torchrun``, CPU or CUDA.

It reads the same config keys as arcface_torch's ``train_v2.py`` (network,
embedding_size, margin_list, batch_size per process, lr, optimizer,
weight_decay, num_epoch, warmup_epoch, rec, num_classes, val_targets, fp16,
seed, output) and writes ``model.pt`` as a plain backbone ``state_dict`` with
arcface_torch's keys, so results and checkpoints are interchangeable.
Differences, on purpose: the classifier is one full margin-softmax layer
(PartialFC with ``sample_rate=1``), so it runs without NCCL or a GPU. arcface_torch keys this
loop has no use for (``sample_rate`` < 1, ``gradient_acc``, ``resume``, ``dali``) are refused by
name rather than ignored. A ``facemae`` block is honoured: ``stage="batch"`` reconstructs each
batch before the backbone (the random flip applied after the reconstruction, so a record's mask
lands on the record), ``stage="offline"`` checks that ``rec`` is that block's converted release.
IRM in recognition training is arcface-train's (``config.irm`` with a weight is refused here).
"""
import json
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import ConfigError, require
from ..core.devices import mixed_precision
from ..data.dataset import FaceRecordDataset, mirror_where
from ..evaluation.embed import decode_faces, embed_with_flip
from ..evaluation.verification import ten_fold_accuracy
from ..formats.binfile import load_bin
from ..formats.shard import FaceShard
from ..models.backbones import get_backbone, load_backbone
from ..privatizers.facemae import ReconstructionStage, check_offline_release
from .compiled import TrainingCompiler
from .common import (OptimizerStep, atomic_save, make_loader, polynomial_warmup_lr, reduce_mean,
                     seed_everything, set_lr, setup_process, teardown_process, unwrap)
from .losses import MarginSoftmax

GRAD_CLIP_NORM = 5.0  # arcface_torch clips the backbone's gradient norm at 5


# arcface_torch keys whose non-default values only train_v2 acts on: (key, default, what to do instead)
ARCFACE_ONLY = (
    ("sample_rate", 1.0, "this loop trains the full classifier (PartialFC sample_rate 1)"),
    ("gradient_acc", 1, "this loop steps every batch"),
    ("resume", False, "this loop does not resume; rerun it"),
    ("dali", False, "this loop reads the shard with its own dataset"),
)


def check_recognition_config(cfg):
    """Fail before any training on a config that cannot run; fills ``num_image`` from the shard."""
    path = cfg.get("config_path", "<config>")
    require(cfg, ["rec", "num_classes", "output"], path)
    for key, default, instead in ARCFACE_ONLY:
        if cfg[key] != default:
            raise ConfigError(f"{path}: config.{key}={cfg[key]!r} does nothing in facemae train ({instead}); "
                              f"remove it, or train with facemae arcface-train")
    if cfg.get("irm") is not None and cfg.irm.weight > 0:
        raise ConfigError(f"{path}: config.irm.weight={cfg.irm.weight}: facemae train adds no IRM term to "
                          f"recognition; train with facemae arcface-train, or set the weight to 0")
    try:
        shard = FaceShard(cfg.rec)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: config.rec: {exc}") from None
    with shard:
        if shard.property and shard.property[0] != cfg.num_classes:
            raise ConfigError(f"{path}: config.num_classes={cfg.num_classes} but {cfg.rec}/property "
                              f"says {shard.property[0]} identities")
        if cfg.num_image is None:
            cfg.num_image = len(shard)
    for name in cfg.val_targets:
        if not os.path.isfile(val_target_path(cfg, name)):
            raise ConfigError(f"{path}: config.val_targets: {val_target_path(cfg, name)} not found")
    return cfg


def val_target_path(cfg, name):
    """arcface_torch looks for ``<rec>/<name>.bin``; a path ending in .bin is taken as it is."""
    return name if name.endswith(".bin") else os.path.join(cfg.rec, f"{name}.bin")


def load_val_sets(cfg):
    sets = []
    for name in cfg.val_targets:
        images, issame = load_bin(val_target_path(cfg, name))
        sets.append((os.path.splitext(os.path.basename(name))[0], decode_faces(images, name), issame))
    return sets


def validation_accuracy(backbone, val_sets, device):
    """10-fold accuracy of each validation set, image + flip embeddings as arcface_torch does."""
    results = {}
    for name, images, issame in val_sets:
        embeddings = embed_with_flip(backbone, images, device=device)  # [2P, D]
        results[name] = float(ten_fold_accuracy(embeddings[0::2], embeddings[1::2], issame).accuracy_mean)
    return results


def build_optimizer(cfg, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_recogniser(cfg, device=None, progress=True, batch_stage=None, max_steps=None, compile=True, start=None):
    """Train a recogniser from ``cfg``; returns a summary dict (also saved as ``summary.json``).

    ``batch_stage(images, keys) -> images`` transforms each batch on the device before the
    backbone (the FaceMAE reconstruction stage). ``max_steps`` stops early (tests, smoke runs).
    ``compile``: compile the training step where the job repays it (``train.compiled``); False keeps
    it eager. ``start``: a ``model.pt`` of ``cfg.network`` whose weights the backbone starts from (a
    fine-tune) instead of random ones; the margin head starts random either way.
    """
    check_recognition_config(cfg)
    process = setup_process(device)
    seed_everything(cfg.seed)  # same initial weights on every rank
    if batch_stage is None:
        batch_stage = facemae_stage(cfg, process.device)
    dataset = FaceRecordDataset(cfg.rec, flip=cfg.get("flip", True), with_keys=True,
                                defer_flip=batch_stage is not None)
    # channels_last lets oneDNN/cuDNN pick their fast convolution kernels
    fp16 = mixed_precision(process.device, cfg.fp16)
    backbone = (get_backbone(cfg.network, cfg.embedding_size, fp16=fp16) if start is None else
                load_backbone(start, cfg.network, num_features=cfg.embedding_size, fp16=fp16).train())
    backbone = backbone.to(process.device, memory_format=torch.channels_last)
    head = MarginSoftmax(cfg.embedding_size, cfg.num_classes, cfg.margin_list).to(process.device)
    if process.distributed:
        backbone, head = DistributedDataParallel(backbone), DistributedDataParallel(head)
    optimizer = build_optimizer(cfg, [{"params": backbone.parameters()}, {"params": head.parameters()}])
    update = OptimizerStep(optimizer, backbone.parameters(), process.device, cfg.fp16, GRAD_CLIP_NORM)
    compiler = TrainingCompiler(process.device, cfg.num_image * cfg.num_epoch, enabled=compile)
    loss_of = compiler.compile(margin_loss(backbone, head, update), unwrap(backbone))
    steps_per_epoch = cfg.num_image // (cfg.batch_size * process.world_size)
    total_steps = steps_per_epoch * cfg.num_epoch
    warmup_steps = steps_per_epoch * cfg.warmup_epoch
    val_sets = load_val_sets(cfg) if process.is_main else []
    os.makedirs(cfg.output, exist_ok=True)

    history, step, started = [], 0, time.time()
    for epoch in range(cfg.num_epoch):
        loader = make_loader(dataset, cfg.batch_size, process, cfg.seed, cfg.num_workers, epoch)
        bar = tqdm(loader, desc=f"recognise {epoch + 1}/{cfg.num_epoch}", unit="batch",
                   disable=not (progress and process.is_main), leave=False)
        backbone.train()
        epoch_losses = []
        for images, labels, keys, *flipped in bar:
            set_lr(optimizer, polynomial_warmup_lr(step, cfg.lr, warmup_steps, total_steps))
            images = images.to(process.device, memory_format=torch.channels_last)
            labels = labels.to(process.device)
            if batch_stage is not None:  # the record's own reconstruction, then the flip drawn for it
                images = mirror_where(batch_stage(images, keys), flipped[0])
            loss = compiler.step(train_step, loss_of, update, images, labels)
            loss = reduce_mean(loss, process)
            epoch_losses.append(loss)
            step += 1
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}",
                            img_s=f"{step * cfg.batch_size * process.world_size / (time.time() - started):.0f}")
            if max_steps is not None and step >= max_steps:
                break
        history.append(end_of_epoch(cfg, process, backbone, val_sets, epoch, epoch_losses))
        if max_steps is not None and step >= max_steps:
            break
    summary = {"model": os.path.join(cfg.output, "model.pt"), "steps": step, "epochs": history,
               "images_per_s": step * cfg.batch_size * process.world_size / (time.time() - started),
               "world_size": process.world_size, "device": str(process.device), "runtime": compiler.runtime,
               "started_from": start, "data": dataset.shard.fingerprint() if process.is_main else None}
    if process.is_main:
        with open(os.path.join(cfg.output, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    teardown_process(process)
    return summary


def facemae_stage(cfg, device):
    """The batch stage a ``facemae`` block asks for (None without one, or for an offline release)."""
    block = cfg.get("facemae")
    if block is None:
        return None
    path = cfg.get("config_path", "<config>")
    if block.stage == "offline":
        check_offline_release(cfg.rec, block, path)
        return None
    if not block.checkpoint:
        raise ConfigError(f"{path}: config.facemae.checkpoint must name the reconstructor (facemae.pt)")
    return ReconstructionStage.from_block(block, device, cfg.fp16)


def margin_loss(backbone, head, update):
    """The step's forward and loss, one function to compile: the backbone under the update's
    autocast, the margin head in float32."""
    def loss_of(images, labels):  # [B, 3, 112, 112], [B] -> scalar
        with update.autocast():
            embeddings = backbone(images)  # [B, D]
        return head(embeddings.float(), labels)
    return loss_of


def train_step(loss_of, update, images, labels):
    loss = loss_of(images, labels)
    update(loss)
    return loss.item()


def end_of_epoch(cfg, process, backbone, val_sets, epoch, losses):
    """Verify and save ``model.pt`` on the main process; every rank returns the epoch record."""
    record = {"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1), "losses": losses}
    if process.is_main:
        record["val"] = validation_accuracy(unwrap(backbone), val_sets, process.device)
        atomic_save(unwrap(backbone).state_dict(), os.path.join(cfg.output, "model.pt"))
        shown = "  ".join(f"{name} {acc * 100:.2f}%" for name, acc in record["val"].items())
        tqdm.write(f"epoch {epoch + 1}: loss {record['loss']:.4f}  {shown}")
    return record
