"""Pretraining: train the FaceMAE reconstructor with the pixel loss and instance relation matching.

loss = w_mse * pixel MSE (masked patches + w_visible * visible ones)
     + irm.weight * IRM(frozen teacher; originals vs reconstructions)

IRM sees the reconstruction in the output mode deployment will release
(``mae.output``), so what it teaches is what users get. Masks and flips come from
``(seed, epoch, record key)``: a record's draws do not depend on the batch it
lands in, which makes a ``torchrun`` run reproduce a single-process run and a
resumed run an uninterrupted one. IRM's teacher embeds each original once per
orientation where the run is long enough (``teacher_cache``).
"""
import json
import os
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import require
from ..core.devices import mixed_precision
from ..core.errors import CheckpointError, ConfigError
from ..core.keyseed import seed_for_key
from ..data.dataset import FaceRecordDataset, mirror_where
from ..models.backbones import load_backbone
from ..models.frozen import frozen_recogniser
from ..models.mae import create_facemae
from ..models.masking import mask_noise_for_keys
from ..models.weights import load_weights_file
from .compiled import TrainingCompiler
from .grids import save_reconstruction_grid
from .common import (OptimizerStep, atomic_save, cosine_warmup_lr, make_loader, reduce_mean, seed_everything,
                     set_lr, setup_process, teardown_process, unwrap)
from .losses import IRMLoss, masked_mse
from .teacher_cache import OriginalEmbeddings

CHECKPOINT_NAME = "facemae.pt"
RESUME_NAME = "resume.pt"
ADAMW_BETAS = (0.9, 0.95)  # MAE's pretraining betas
FLIP_STREAM = 0x666C6970  # separates the flips' per-record draws from the masks'
NO_DECAY_TOKENS = ("cls_token", "mask_token")  # learned embeddings MAE's recipe exempts from weight decay


def check_pretrain_config(cfg):
    path = cfg.get("config_path", "<config>")
    require(cfg, ["rec", "output"], path)
    if "mae" not in cfg:
        raise ConfigError(f"{path}: a pretraining recipe needs a config.mae block")
    if cfg.optimizer != "adamw":
        raise ConfigError(f"{path}: config.optimizer={cfg.optimizer!r}; pretraining uses AdamW with MAE's "
                          f"betas, set config.optimizer = 'adamw'")
    if not 0.0 <= cfg.mae.mask_ratio < 1.0:
        raise ConfigError(f"{path}: config.mae.mask_ratio={cfg.mae.mask_ratio}, expected 0 <= ratio < 1")
    irm = cfg.get("irm")
    if irm is not None and irm.weight > 0:
        require(cfg, ["irm.teacher", "irm.network"], path)
        if not os.path.isfile(irm.teacher):
            raise ConfigError(f"{path}: config.irm.teacher: {irm.teacher} not found")
    return cfg


def epoch_seed(cfg, epoch):
    return cfg.seed * 1_000_003 + epoch


def mask_noise(cfg, epoch, keys, num_patches):
    """Per-record mask noise for one epoch: a fresh mask each epoch, the same on any rank layout."""
    return mask_noise_for_keys(epoch_seed(cfg, epoch), keys.tolist(), num_patches)


def keyed_flips(cfg, epoch, keys):
    """Per-record horizontal flips for one epoch ([N] bool; none without ``cfg.flip``). Like the masks
    they come from (seed, epoch, record key), so a resumed run and any rank layout draw the same."""
    if not cfg.flip:
        return torch.zeros(len(keys), dtype=torch.bool)
    stream = seed_for_key(epoch_seed(cfg, epoch), FLIP_STREAM)  # apart from the masks' draws
    return torch.tensor([seed_for_key(stream, int(key)) >> 63 for key in keys], dtype=torch.bool)


class PretrainObjective(torch.nn.Module):
    """The pretraining loss; returns ``(total, parts)`` with parts for logging."""

    def __init__(self, cfg, device):
        super().__init__()
        self.mae_cfg = cfg.mae
        irm = cfg.get("irm")
        self.irm_weight = irm.weight if irm is not None else 0.0
        self.irm = None
        if self.irm_weight > 0:
            # in the step's precision, as the recogniser loop trains it (a float32 body would turn the
            # step's autocast off inside the teacher)
            teacher = load_backbone(irm.teacher, irm.network, device=str(device),
                                    fp16=mixed_precision(device, cfg.fp16))
            teacher = frozen_recogniser(teacher).to(memory_format=torch.channels_last)  # faster convolutions
            self.irm = IRMLoss(teacher, variant=irm.variant, temperature=irm.temperature)

    def forward(self, mae, images, pred, mask, embedded_original=None):
        target = unwrap(mae).patchify(images)  # [N, L, p*p*3]
        pixel = masked_mse(pred.float(), target, mask, w_visible=self.mae_cfg.w_visible)
        parts = {"mse": pixel.detach()}
        total = self.mae_cfg.w_mse * pixel
        if self.irm is not None:
            released = unwrap(mae).compose(images, pred, mask, self.mae_cfg.output)  # [N, 3, H, W]
            relation = self.irm(images, released, embedded_original)
            parts["irm"] = relation.detach()
            total = total + self.irm_weight * relation
        return total, parts


def build_model(cfg, device):
    return create_facemae(cfg.mae.preset, patch_size=cfg.mae.patch_size).to(device)


def adamw_param_groups(model, weight_decay):
    """MAE's AdamW groups: no weight decay on biases, norm weights and the cls / mask tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.endswith(".bias") or name in NO_DECAY_TOKENS
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_resume_state(cfg, mae, update):
    """Restore weights, optimiser, scaler and progress from ``resume.pt``.

    Returns ``(epoch, step, history, seen)``: the run continues its epoch records and image count.
    """
    path = os.path.join(cfg.output, RESUME_NAME)
    if not os.path.isfile(path):
        raise ConfigError(f"--resume: {path} not found; nothing to resume")
    state = load_weights_file(path, "pretraining resume.pt")
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step"} <= set(state):
        raise CheckpointError(f"{path}: expected a resume state with model, optimizer, epoch and step")
    try:
        mae.load_state_dict(state["model"])
        update.load_state_dict(state)
        return (int(state["epoch"]), int(state["step"]), json.loads(state.get("history", "[]")),
                int(state.get("seen", 0)))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path}: does not fit this recipe's model and optimiser ({first_line})") from None


def pretrain(cfg, device=None, progress=True, resume=False, max_steps=None, compile=True):
    """Pretrain FaceMAE from ``cfg``; returns a summary dict (also ``summary.json`` in ``cfg.output``).

    ``compile``: compile the training step where the job repays it (``train.compiled``); False keeps
    it eager.
    """
    check_pretrain_config(cfg)
    process = setup_process(device)
    seed_everything(cfg.seed)
    dataset = FaceRecordDataset(cfg.rec, with_keys=True)  # flips are drawn per record (keyed_flips)
    mae = build_model(cfg, process.device)
    objective = PretrainObjective(cfg, process.device)
    optimizer = torch.optim.AdamW(adamw_param_groups(mae, cfg.weight_decay), lr=cfg.lr, betas=ADAMW_BETAS)
    update = OptimizerStep(optimizer, mae.parameters(), process.device, cfg.fp16, cfg.mae.clip_grad)
    start_epoch, step, history, seen = load_resume_state(cfg, mae, update) if resume else (0, 0, [], 0)
    model = DistributedDataParallel(mae) if process.distributed else mae
    steps_per_epoch = len(dataset) // (cfg.batch_size * process.world_size)
    total_steps, warmup_steps = steps_per_epoch * cfg.num_epoch, steps_per_epoch * cfg.warmup_epoch
    compiler = TrainingCompiler(process.device, len(dataset) * cfg.num_epoch, enabled=compile)
    loss_of = compiler.compile(pretraining_loss(cfg, model, objective, update), mae, objective)
    originals = teacher_cache(cfg, objective, update, len(dataset), cfg.num_epoch)
    grid_batch = fixed_grid_batch(dataset, cfg.mae.grid_images)
    trained_on = dataset.shard.fingerprint() if process.is_main else None  # kept in the checkpoint

    started, seen_before = time.time(), seen
    for epoch in range(start_epoch, cfg.num_epoch):
        loader = make_loader(dataset, cfg.batch_size, process, cfg.seed, cfg.num_workers, epoch)
        bar = tqdm(loader, desc=f"pretrain {epoch + 1}/{cfg.num_epoch}", unit="batch",
                   disable=not (progress and process.is_main), leave=False)
        model.train()
        epoch_parts = []
        for images, _, keys in bar:
            set_lr(optimizer, cosine_warmup_lr(step, cfg.lr, warmup_steps, total_steps))
            images = images.to(process.device, non_blocking=True)  # [N, 3, H, W] as stored
            flipped = keyed_flips(cfg, epoch, keys)  # [N]
            embedded = originals.embed(images, keys, flipped) if originals is not None else None  # [N, D]
            images = mirror_where(images, flipped)
            noise = mask_noise(cfg, epoch, keys, mae.num_patches)  # [N, L]
            loss, parts = compiler.step(pretrain_step, loss_of, update, images, noise, embedded)
            step += 1
            seen += len(images) * process.world_size
            logged = {name: reduce_mean(value, process) for name, value in
                      {"loss": loss.detach(), **parts}.items()}
            epoch_parts.append(logged)
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in logged.items()},
                             "img_s": f"{(seen - seen_before) / (time.time() - started):.0f}"})
            if max_steps is not None and step >= max_steps:
                break
        history.append(end_of_epoch(cfg, process, mae, grid_batch, epoch, step, epoch_parts, trained_on))
        save_resume_state(cfg, process, mae, update, epoch, step, history, seen)
        if max_steps is not None and step >= max_steps:
            break
    summary = {"checkpoint": os.path.join(cfg.output, CHECKPOINT_NAME), "steps": step, "epochs": history,
               "images_per_s": (seen - seen_before) / max(time.time() - started, 1e-9),
               "images_seen": seen, "world_size": process.world_size, "runtime": compiler.runtime,
               "device": str(process.device), "data": trained_on}
    if process.is_main:
        with open(os.path.join(cfg.output, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    teardown_process(process)
    return summary


def pretraining_loss(cfg, model, objective, update):
    """The step's forward and loss, one function to compile: FaceMAE and the objective under the
    update's autocast. Returns ``(total, parts)``."""
    def loss_of(images, noise, embedded):  # [N, 3, H, W], [N, L], [N, D] or None -> scalar, {name: scalar}
        with update.autocast():
            pred, mask = model(images, cfg.mae.mask_ratio, noise=noise)  # [N, L, p*p*3], [N, L]
            return objective(model, images, pred, mask, embedded)
    return loss_of


def pretrain_step(loss_of, update, images, noise, embedded):
    loss, parts = loss_of(images, noise, embedded)
    update(loss)
    return loss, parts


def teacher_cache(cfg, objective, update, records, epochs):
    """IRM's teacher embeddings of the originals, kept across epochs where that pays (else None).
    Decided on the whole run's ``epochs``, so a resumed run takes the same path as an uninterrupted one."""
    if objective.irm is None:
        return None
    teacher = objective.irm.teacher
    if not OriginalEmbeddings.pays(records, epochs, cfg.flip, teacher.num_features):
        return None
    return OriginalEmbeddings(teacher, cfg.batch_size, cfg.flip, update.autocast)


def save_resume_state(cfg, process, mae, update, epoch, step, history, seen):
    """``resume.pt``: everything ``--resume`` needs to continue as if the run had not stopped."""
    if process.is_main:
        atomic_save({"model": mae.state_dict(), **update.state_dict(), "epoch": epoch + 1, "step": step,
                     "history": json.dumps(history), "seen": seen}, os.path.join(cfg.output, RESUME_NAME))


def fixed_grid_batch(dataset, count):
    """``count`` images spread over the dataset (so over identities), the same in every epoch's grid;
    None for no grid (``count`` 0)."""
    if count == 0:
        return None
    indices = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([item[0] for item in items]), torch.tensor([item[2] for item in items])


def end_of_epoch(cfg, process, mae, grid_batch, epoch, step, parts, trained_on):
    record = {"epoch": epoch + 1, "step": step,
              **{name: sum(p[name] for p in parts) / max(len(parts), 1) for name in (parts[0] if parts else {})},
              "losses": [p["loss"] for p in parts], "parts": parts}
    if not process.is_main:
        return record
    extra = {"recipe": os.path.basename(cfg.get("config_path", "")), "mask_ratio": cfg.mae.mask_ratio,
             "output": cfg.mae.output, "w_visible": cfg.mae.w_visible,
             "irm_weight": cfg.irm.weight if cfg.get("irm") else 0.0, "data": trained_on}
    mae.save_checkpoint(os.path.join(cfg.output, CHECKPOINT_NAME), step=step, extra_config=extra)

    if grid_batch is not None:
        save_epoch_grid(cfg, process, mae, grid_batch, epoch)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "step", "losses", "parts"))
    tqdm.write(f"epoch {epoch + 1}: {shown}")
    return record


def save_epoch_grid(cfg, process, mae, grid_batch, epoch):
    images, keys = grid_batch
    recon, mask = mae.reconstruct(images.to(process.device), cfg.mae.mask_ratio, cfg.mae.output,
                                  keys=keys.tolist(), seed=cfg.seed)
    save_reconstruction_grid(os.path.join(cfg.output, f"grid_epoch{epoch + 1:03d}.png"),
                             images, mask, recon.cpu(), mae.patch_size)
