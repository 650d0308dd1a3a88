"""What both training loops share: devices, torchrun processes, seeds, schedules, loaders, saving."""
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ..core import devices
from ..core.devices import amp_dtype, autocast, pick_device
from ..core.errors import ConfigError
from ..core.files import atomic_file


@dataclass
class Process:
    """Where this process runs and its place among ``torchrun`` ranks."""
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def setup_process(device=None):
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device)
    if world_size == 1:
        return Process(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(device, rank, world_size)


def teardown_process(process):
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def polynomial_warmup_lr(step, base_lr, warmup_steps, total_steps, power=1.0):
    """arcface_torch's PolynomialLRWarmup in closed form: linear warmup, then polynomial decay to 0."""
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return base_lr * (1.0 - (min(step, total_steps) - warmup_steps) / span) ** power


def cosine_warmup_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup, then half-cosine decay to ``min_lr`` (MAE's schedule)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


class OptimizerStep:
    """The update both training loops share: zero_grad, backward, unscale, clip, step.

    float16 gradients underflow without loss scaling (bfloat16 has float32's range and needs
    none), so a GradScaler runs whenever the autocast dtype is float16: CUDA by default, or a CPU
    given ``dtype=torch.float16``. Without an explicit ``dtype``, mixed precision is granted only where
    it is fast (``devices.mixed_precision``): a CPU without native bf16 trains in fp32. Gradients are unscaled before clipping, so the clip norm means
    what it says; a step whose gradients overflowed is skipped by the scaler.
    """

    def __init__(self, optimizer, clipped_params, device, mixed_precision, clip_norm, dtype=None):
        self.optimizer = optimizer
        self.clipped_params = list(clipped_params)
        self.device = torch.device(device)
        self.mixed_precision = bool(mixed_precision) and (dtype is not None or
                                                          devices.mixed_precision(self.device, True))
        self.dtype = dtype or amp_dtype(self.device)
        self.clip_norm = clip_norm
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.mixed_precision and self.dtype == torch.float16)

    def autocast(self):
        return autocast(self.device, self.mixed_precision, self.dtype)

    def __call__(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.clipped_params, self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def make_loader(dataset, batch_size, process, seed, num_workers, epoch=0):
    """Shuffled batches of ``batch_size`` per process.

    One permutation per epoch is dealt out round-robin to the ranks, so the
    union of the ranks' n-th batches is the n-th batch a single process with
    ``batch_size * world_size`` would draw: runs are comparable across scales.
    """
    if len(dataset) < batch_size * process.world_size:
        raise ConfigError(f"dataset has {len(dataset)} images, fewer than one batch of "
                         f"{batch_size} x {process.world_size} process(es)")
    sampler = DistributedSampler(dataset, num_replicas=process.world_size, rank=process.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=True, pin_memory=process.device.type == "cuda")


def atomic_save(obj, path):
    """``torch.save`` to a temporary name, then rename: a crash never leaves a half-written file."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (state_dict keys without ``module.``)."""
    return model.module if hasattr(model, "module") else model


def reduce_mean(value, process):
    """Mean of a scalar over all ranks (the loss a single process on the global batch would see)."""
    tensor = torch.as_tensor(float(value), dtype=torch.float64, device=process.device)
    if process.distributed:
        dist.all_reduce(tensor)
        tensor /= process.world_size
    return float(tensor)
