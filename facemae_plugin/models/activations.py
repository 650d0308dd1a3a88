"""PReLU, the recognisers' activation, with a choice of kernel for its backward pass.

aten's PReLU backward computes the slope's gradient with every input gradient, and its CPU kernel
for bf16 and channels-last tensors is slow: it is one of the largest costs of an mbf training step
on a CPU (``benchmarks/train_bench.py``). Where gradients flow, a ``PReLU`` module runs the kernel
it is given instead:

- ``generated_kernel()``: the same formula compiled by ``torch.compile`` into one vectorised loop
  forward and one backward (training on a CPU, ``train.compiled``);
- ``frozen_kernel``: no slope gradient at all, for a frozen recogniser that passes gradients to its
  input (IRM's teacher, ``models.frozen``); its backward runs eagerly (``torch.where``, whose CPU
  kernel is slow as aten's PReLU backward), or as one generated loop (``generated_frozen_kernel()``,
  pretraining on a CPU, ``train.compiled``).

Every kernel computes the same forward values as aten's (``x`` or ``slope * x``: one rounding
either way); without gradients (inference, validation) aten's runs. State dicts are nn.PReLU's.
"""
import functools

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


def prelu_input_grad(grad, x, slope):
    """The gradient PReLU passes to ``x`` [N, C, H, W]: ``grad`` where ``x > 0``, else ``slope * grad``."""
    return torch.where(x > 0, grad, grad * slope)


class _FrozenPReLU(torch.autograd.Function):
    """PReLU whose backward returns the input's gradient alone, by ``input_grad``: the slope is not trained."""

    @staticmethod
    def forward(ctx, x, slope, input_grad):  # [N, C, H, W], [1, C, 1, 1] in x's dtype, a function
        ctx.save_for_backward(x, slope)
        ctx.input_grad = input_grad
        return F.prelu(x, slope.reshape(-1))

    @staticmethod
    def backward(ctx, grad):
        x, slope = ctx.saved_tensors
        return ctx.input_grad(grad, x, slope), None, None


def frozen_kernel(x, slope, input_grad=prelu_input_grad):
    """The kernel of a frozen recogniser's PReLU: gradients reach ``x``, never ``slope``."""
    return _FrozenPReLU.apply(x, slope.detach().to(x.dtype), input_grad)


def generated_frozen_kernel():
    """``frozen_kernel`` whose backward is ``prelu_input_grad`` under ``torch.compile`` (one vectorised
    loop; built on first call, one graph for every shape). Compiling the whole frozen PReLU instead
    yields a forward several times slower than aten's on a CPU."""
    return functools.partial(frozen_kernel, input_grad=torch.compile(prelu_input_grad, dynamic=True))
