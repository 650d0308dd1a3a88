"""PReLU, the recognisers' activation, with a choice of kernel for its backward pass.

aten's PReLU backward computes the slope's gradient with every input gradient, and its CPU kernel
for bf16 and channels-last tensors is slow: it is one of the largest costs of an mbf training step
on a CPU (``benchmarks/train_bench.py``). Where gradients flow, a ``PReLU`` module runs the kernel
it is given instead:

- ``generated_kernel()``: the same formula compiled by ``torch.compile`` into one vectorised loop
  forward and one backward (training on a CPU, ``train.compiled``);
- ``frozen_kernel``: no slope gradient at all, for a frozen recogniser that passes gradients to its
  input (IRM's teacher, ``models.frozen``).

Every kernel computes the same forward values as aten's (``x`` or ``slope * x``: one rounding
either way); without gradients (inference, validation) aten's runs. State dicts are nn.PReLU's.
"""
import torch
import torch.nn.functional as F
from torch import nn


def prelu(x, slope):
    """PReLU of ``x`` [N, C, H, W] with per-channel ``slope`` [1, C, 1, 1]."""
    return torch.where(x > 0, x, x * slope.to(x.dtype))


class PReLU(nn.PReLU):
    """``nn.PReLU`` over [N, C, H, W] that runs ``kernel(x, slope [1, C, 1, 1])`` while gradients flow."""

    def __init__(self, num_parameters):
        super().__init__(num_parameters)
        self.kernel = None  # None: aten's

    def forward(self, x):
        if self.kernel is None or not torch.is_grad_enabled():
            return super().forward(x)
        return self.kernel(x, self.weight.view(1, -1, 1, 1))


def prelu_layers(model):
    return [module for module in model.modules() if isinstance(module, PReLU)]


def use_kernel(model, kernel):
    """Every ``PReLU`` of ``model`` runs ``kernel`` (None: aten's)."""
    for layer in prelu_layers(model):
        layer.kernel = kernel


def generated_kernel():
    """``prelu`` under ``torch.compile``, built on first call: one graph for every shape (dynamic)
    rather than one per layer's shape. Built graphs are cached per process and on disk, so the
    next training run's kernel is ready at once."""
    return torch.compile(prelu, dynamic=True)


class _FrozenPReLU(torch.autograd.Function):
    """PReLU whose backward returns the input's gradient alone: the slope is not trained."""

    @staticmethod
    def forward(ctx, x, slope):  # [N, C, H, W], [1, C, 1, 1] in x's dtype
        ctx.save_for_backward(x, slope)
        return F.prelu(x, slope.reshape(-1))

    @staticmethod
    def backward(ctx, grad):
        x, slope = ctx.saved_tensors
        return torch.where(x > 0, grad, grad * slope), None


def frozen_kernel(x, slope):
    """The kernel of a frozen recogniser's PReLU: gradients reach ``x``, never ``slope``."""
    return _FrozenPReLU.apply(x, slope.detach().to(x.dtype))
