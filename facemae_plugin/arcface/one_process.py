"""arcface_torch's ``train_v2`` in one process, without torchrun: CPU or one GPU, no NCCL.

``train_v2`` starts NCCL on a fixed port when it is imported and hard-wires CUDA (``.cuda()`` on
modules and tensors, ``torch.cuda.set_device``, ``DataLoaderX``'s CUDA stream, a CUDA GradScaler,
``device_ids`` for DDP). Started without torchrun, the plugin instead

- starts the process group itself, on gloo over a port the operating system hands out, so two
  runs on one machine never meet; ``train_v2``'s own ``init_process_group`` is a no-op while it is
  imported (the only moment torch's function is replaced, and put back right after);
- on a CPU, replaces for the run only, in the names arcface_torch's modules see: ``torch`` in
  ``train_v2`` (an overlay whose ``cuda.set_device``, CUDA GradScaler and DDP are the CPU's),
  ``DataLoaderX`` in ``dataset`` (a plain DataLoader), ``get_model`` in ``train_v2`` (bf16 autocast
  where the CPU has native bf16 and the config asks for fp16); ``.cuda()`` on any tensor or module
  moves it to the run's device while ``train_v2.main`` runs (a torch function mode, so nothing in
  torch is patched);
- on one GPU, ``train_v2`` runs as shipped on that device.

Everything replaced comes back when the run ends, including the root logger's handlers that
``train_v2`` adds for ``training.log``. Under torchrun nothing here applies: NCCL, as shipped.
"""
import logging
import os
import socket
import types
from contextlib import ExitStack, contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from ..core.devices import autocast, fast_dtype, mixed_precision
from ..core.errors import UsageError

log = logging.getLogger(__name__)


def under_torchrun():
    """Whether torchrun (or another launcher) started this process as one rank of several."""
    return "WORLD_SIZE" in os.environ


def free_port():
    """A local TCP port nothing listens on now (the operating system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def replaced(namespace, **names):
    """Set ``names`` on ``namespace`` (a module) for the block; the previous values come back after."""
    missing = object()
    previous = {name: getattr(namespace, name, missing) for name in names}
    for name, value in names.items():
        setattr(namespace, name, value)
    try:
        yield namespace
    finally:
        for name, value in previous.items():
            if value is missing:
                delattr(namespace, name)
            else:
                setattr(namespace, name, value)


@contextmanager
def one_process_group():
    """A gloo process group of one rank on a free local port, destroyed on leaving."""
    if dist.is_initialized():
        raise UsageError("a torch.distributed process group already exists in this process; "
                         "run facemae arcface-train in a fresh process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def import_train_v2(checkout):
    """``import train_v2`` with its module-level ``init_process_group`` a no-op (the group exists)."""
    def already_started(*args, **kwargs):
        log.info("facemae: train_v2's init_process_group skipped; one gloo process group is running")

    with replaced(dist, init_process_group=already_started):
        return checkout.import_module("train_v2")


class CudaToDevice(TorchFunctionMode):
    """``Tensor.cuda()`` (and so ``Module.cuda()``) moves to ``device`` instead, while active."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0].to(self.device, non_blocking=bool((kwargs or {}).get("non_blocking")))
        return func(*args, **(kwargs or {}))


def overlay(module, **overrides):
    """A stand-in for ``module``: the ``overrides`` by name, every other attribute the module's own."""
    stand_in = types.ModuleType(module.__name__)
    stand_in.__dict__.update(overrides)
    stand_in.__getattr__ = lambda name: getattr(module, name)  # module __getattr__ (PEP 562)
    return stand_in


def cpu_grad_scaler(*args, **kwargs):
    """train_v2's CUDA GradScaler on a CPU: disabled (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler("cpu", enabled=False)


def cpu_ddp(module, device_ids=None, **kwargs):
    """DDP of a CPU module: torch refuses ``device_ids`` for one."""
    return DistributedDataParallel(module, **kwargs)


def torch_for_cpu():
    """What ``torch`` is in ``train_v2``'s namespace during a CPU run."""
    return overlay(
        torch,
        cuda=overlay(torch.cuda, set_device=lambda device: None,
                     amp=overlay(torch.cuda.amp, grad_scaler=overlay(torch.cuda.amp.grad_scaler,
                                                                     GradScaler=cpu_grad_scaler))),
        nn=overlay(torch.nn, parallel=overlay(torch.nn.parallel, DistributedDataParallel=cpu_ddp)))


class CpuLoader(DataLoader):
    """``DataLoaderX`` without its CUDA stream and prefetch thread: a plain DataLoader."""

    def __init__(self, local_rank, **kwargs):
        kwargs["pin_memory"] = False
        super().__init__(**kwargs)


def autocast_backbones(get_model, device):
    """``get_model`` whose backbones run under the CPU's autocast when asked for fp16 where it is fast.

    arcface_torch's backbones enter ``torch.cuda.amp.autocast(fp16)``, which does nothing on a CPU;
    the returned module's class is a subclass whose ``forward`` runs under bf16 autocast instead.
    """
    def get_model_on_cpu(name, **kwargs):
        model = get_model(name, **kwargs)
        if mixed_precision(device, kwargs.get("fp16", False)):
            base = type(model)

            def forward(self, *args, **kw):
                with autocast(device, True, fast_dtype(device)):
                    return base.forward(self, *args, **kw)

            model.__class__ = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__})
        return model

    return get_model_on_cpu


@contextmanager
def training_logs_kept_to_the_run():
    """The root logger's level and handlers as they were before ``train_v2``'s ``init_logging``."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


@contextmanager
def one_process_run(checkout, device):
    """Yield ``train_v2`` ready for ``main`` in this one process on ``device``; everything back after."""
    device = torch.device(device)
    if under_torchrun():
        raise UsageError("one_process_run is for a process started without torchrun")
    with ExitStack() as stack:
        stack.enter_context(one_process_group())
        stack.enter_context(training_logs_kept_to_the_run())
        train_v2 = import_train_v2(checkout)
        if device.type == "cuda":
            # train_v2 reads its module-level local_rank for set_device, DDP and the loader's stream
            stack.enter_context(replaced(train_v2, local_rank=device.index or 0))
        else:
            stack.enter_context(replaced(train_v2, torch=torch_for_cpu(),
                                         get_model=autocast_backbones(train_v2.get_model, device)))
            stack.enter_context(replaced(checkout.import_module("dataset"), DataLoaderX=CpuLoader))
            stack.enter_context(CudaToDevice(device))
        yield train_v2
