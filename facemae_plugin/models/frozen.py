"""A recogniser frozen for passing gradients to its input: IRM's teacher.

IRM backpropagates through the teacher to the reconstructions every step, so the teacher's
backward pass is most of a pretraining step. Frozen, the teacher computes the same function with
less: each BatchNorm that follows a convolution folds into that convolution's weights and bias (its
statistics never move), and its PReLU layers skip the slope's gradient (``activations.frozen_kernel``).
Folding rounds differently from normalising after the convolution, within float tolerance.
"""
import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .activations import frozen_kernel, use_kernel
from .backbones import IBasicBlock, IResNet


def frozen_recogniser(model):
    """An eval-mode copy of ``model`` (``get_backbone``'s) with no parameter requiring gradients,
    BatchNorm folded into the convolutions before it, and PReLU without the slope's gradient."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    for module in list(frozen.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            module.register_module(conv_name, fuse_conv_bn_eval(conv, norm).requires_grad_(False))
            module.register_module(norm_name, nn.Identity())
    use_kernel(frozen, frozen_kernel)
    return frozen


def _conv_norm_pairs(module):
    """Names of (convolution, the BatchNorm applied right after it) in ``module``'s own forward."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [(a, b) for a, b in zip(names, names[1:])
                if isinstance(module._modules[a], nn.Conv2d) and isinstance(module._modules[b], nn.BatchNorm2d)]
    if isinstance(module, IBasicBlock):  # bn1 comes before conv1: it does not fold
        return [("conv1", "bn2"), ("conv2", "bn3")]
    if isinstance(module, IResNet):
        return [("conv1", "bn1")]
    return []
