"""The recognisers' fast layers compute what the plain ones compute: PReLU's kernels against aten's
(and float64 gradients), the strided depthwise convolution under CPU autocast against a float32
convolution, and the frozen teacher against the recogniser it was made from."""
import pytest
import torch
import torch.nn.functional as F

from facemae_plugin.models.activations import (PReLU, frozen_kernel, generated_frozen_kernel, generated_kernel,
                                                prelu, prelu_layers, use_kernel)
from facemae_plugin.models.backbones import StridedDepthwiseConv2d, get_backbone
from facemae_plugin.models.frozen import frozen_recogniser

from .helpers import randomise_weights


def inputs(dtype=torch.float32, channels_last=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 6, 7, generator=generator).to(dtype)  # [N, C, H, W], negatives and positives
    slope = (torch.rand(5, generator=generator, dtype=torch.float64) * 0.5).view(1, -1, 1, 1)
    slope = slope.to(torch.float64 if dtype == torch.float64 else torch.float32)  # a parameter's dtype
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), slope


def gradients(kernel, x, slope, grad):
    x, slope = x.detach().requires_grad_(True), slope.detach().requires_grad_(True)
    out = kernel(x, slope)
    out.backward(grad)
    return out.detach(), x.grad, slope.grad


def aten(x, slope):
    return F.prelu(x, slope.reshape(-1).to(x.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_prelu_kernel_gives_atens_values_and_input_gradient(dtype, channels_last):
    x, slope = inputs(dtype, channels_last)
    grad = torch.randn(x.shape).to(dtype)
    out, grad_x, grad_slope = gradients(aten, x, slope, grad)
    frozen = (frozen_kernel, generated_frozen_kernel())
    for kernel in (prelu, generated_kernel(), *frozen):
        k_out, k_grad_x, k_grad_slope = gradients(kernel, x, slope, grad)
        assert torch.equal(k_out, out) and k_out.dtype == dtype
        assert torch.equal(k_grad_x, grad_x)
        if kernel in frozen:
            assert k_grad_slope is None  # the frozen recogniser's slopes are not trained
        else:  # summed in another order (aten sums bf16 in bf16): both within rounding of float64's
            exact = gradients(aten, x.double(), slope.double(), grad.double())[2].float()
            tolerance = (2e-2 if dtype == torch.bfloat16 else 1e-5) * exact.abs().max()
            assert torch.allclose(k_grad_slope, exact, rtol=0, atol=tolerance)
            assert torch.allclose(grad_slope, exact, rtol=0, atol=tolerance)


def test_the_kernels_gradients_are_float64_finite_differences():
    x, slope = inputs(torch.float64)
    x = x + 0.05 * torch.sign(x)  # away from the kink at 0, where no derivative exists
    assert torch.autograd.gradcheck(frozen_kernel, (x.requires_grad_(True), slope))
    assert torch.autograd.gradcheck(prelu, (x, slope.requires_grad_(True)))
    grad = torch.randn(x.shape, dtype=torch.float64)  # a compiled backward runs once: against prelu's
    for got, expected in zip(gradients(generated_kernel(), x, slope, grad), gradients(prelu, x, slope, grad)):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_a_prelu_layer_runs_its_kernel_only_while_gradients_flow():
    layer = PReLU(5)
    calls = []
    model = torch.nn.Sequential(layer, torch.nn.ReLU())
    assert prelu_layers(model) == [layer]
    use_kernel(model, lambda x, s: calls.append(1) or prelu(x, s))
    x, _ = inputs()
    expected = F.prelu(x, layer.weight)
    assert torch.equal(layer(x), expected) and len(calls) == 1
    with torch.no_grad():
        assert torch.equal(layer(x), expected) and len(calls) == 1  # inference: aten's
    assert list(layer.state_dict()) == list(torch.nn.PReLU(5).state_dict())


def test_a_strided_depthwise_convolution_runs_in_float32_under_cpu_autocast():
    conv = StridedDepthwiseConv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    x = torch.randn(2, 8, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = conv(x.bfloat16())
        plain = torch.nn.Conv2d.forward(conv, x.bfloat16())
    assert fast.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.equal(fast, F.conv2d(x.bfloat16().float(), conv.weight, None, 2, 1, 1, 8))
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, None, 2, 1, 1, 8))  # no autocast: as it is
    mbf = get_backbone("mbf")
    strided = [m for m in mbf.modules() if isinstance(m, StridedDepthwiseConv2d)]
    assert [m.in_channels for m in strided] == [128, 256, 512]  # each bottleneck that halves the resolution


# BatchNorms that follow no convolution and stay: none in mbf; r18's pre-activation bn1 of its 8
# blocks and the bn2 before its head
UNFOLDED = {"mbf": 0, "r18": 9}


@pytest.mark.parametrize("name", ["mbf", "r18"])
def test_the_frozen_recogniser_computes_the_recogniser_and_its_input_gradient(name):
    model = randomise_weights(get_backbone(name), seed=3).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trained = [p.requires_grad for p in model.parameters()]
    frozen = frozen_recogniser(model)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules()) == UNFOLDED[name]
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    grads = []
    for network in (model, frozen):
        xi = x.clone().requires_grad_(True)
        out = network(xi)
        out.pow(2).sum().backward()
        grads.append((out.detach(), xi.grad))
    (out, grad), (frozen_out, frozen_grad) = grads
    assert torch.allclose(frozen_out, out, rtol=1e-4, atol=1e-4 * out.abs().max().item())
    assert torch.allclose(frozen_grad, grad, rtol=1e-3, atol=1e-3 * grad.abs().max().item())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # a copy
    assert [p.requires_grad for p in model.parameters()] == trained
