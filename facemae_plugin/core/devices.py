"""Which torch device a job runs on, checked before any work starts, and its mixed precision."""
import os

import torch

from .errors import UsageError


def pick_device(name=None):
    """``name`` if given (checked: it must parse and exist here), else CUDA when available (under
    torchrun the rank's own GPU, ``LOCAL_RANK``), else CPU."""
    if not name:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ["LOCAL_RANK"])) if "LOCAL_RANK" in os.environ else torch.device("cuda")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"{name!r} is not a torch device; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{name!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"{name!r}: only cpu and cuda devices are supported")
    return device


def amp_dtype(device):
    """The autocast dtype where it pays: float16 on CUDA, bfloat16 on CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def autocast(device, enabled, dtype=None):
    """Mixed precision in ``amp_dtype(device)`` (or ``dtype``); fp32 when not ``enabled``."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=dtype or amp_dtype(device), enabled=bool(enabled))


def native_bf16():
    """Whether this CPU computes bfloat16 in hardware (``avx512_bf16`` or ``amx_bf16``); Linux only."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def fast_dtype(device):
    """The reduced precision that is fast here: fp16 on CUDA, bf16 on a CPU with native bf16; None
    (stay in fp32) elsewhere, where emulated bf16 is slower than fp32, for inference and training."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if native_bf16() else None


def mixed_precision(device, requested):
    """Whether a job that asks for mixed precision (a config's ``fp16``, a protocol's
    ``mixed_precision``) gets it on ``device`` (None: the default device): only where ``fast_dtype``
    has a fast dtype."""
    return bool(requested) and fast_dtype(pick_device(device)) is not None
