"""The pieces that let arcface_torch's train_v2 run in one process, without a checkout: the scoped
replacements, the CPU's stand-ins for train_v2's CUDA names, and the tolerant interpolation.

Oracles: torch itself (DDP, a gloo group, autocast), scipy's interp1d and numpy's interp."""
import types

import numpy as np
import pytest
import torch
from scipy import interpolate

from facemae_plugin.arcface import one_process
from facemae_plugin.arcface.patches import interp1d_over_ties, interp1d_refuses_ties, patch_verification_interpolation
from facemae_plugin.core.errors import UsageError


def test_replaced_names_come_back_even_when_the_block_fails():
    namespace = types.SimpleNamespace(a=1)
    with pytest.raises(KeyError):
        with one_process.replaced(namespace, a=2, b=3):
            assert (namespace.a, namespace.b) == (2, 3)
            raise KeyError("inside")
    assert namespace.a == 1 and not hasattr(namespace, "b")


def test_cuda_calls_land_on_the_runs_device_only_while_the_mode_is_on():
    with one_process.CudaToDevice("cpu"):
        tensor = torch.zeros(2, dtype=torch.int64).cuda()
        module = torch.nn.Linear(3, 2).cuda()
    assert tensor.device.type == "cpu" and tensor.dtype == torch.int64
    assert next(module.parameters()).device.type == "cpu" and isinstance(next(module.parameters()),
                                                                          torch.nn.Parameter)
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(1).cuda()


def test_train_v2s_torch_on_a_cpu_keeps_everything_but_its_cuda_names():
    cpu_torch = one_process.torch_for_cpu()
    assert cpu_torch.zeros is torch.zeros and cpu_torch.optim.SGD is torch.optim.SGD
    assert cpu_torch.nn.utils.clip_grad_norm_ is torch.nn.utils.clip_grad_norm_
    assert cpu_torch.cuda.set_device(0) is None
    scaler = cpu_torch.cuda.amp.grad_scaler.GradScaler(growth_interval=100)
    assert not scaler.is_enabled()
    loss = torch.tensor(2.0)
    assert scaler.scale(loss) is loss  # train_v2's fp16 branch runs unscaled
    with one_process.one_process_group():
        ddp = cpu_torch.nn.parallel.DistributedDataParallel(module=torch.nn.Linear(3, 2), device_ids=[0],
                                                             broadcast_buffers=False)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        torch.testing.assert_close(ddp(torch.ones(1, 3)), ddp.module(torch.ones(1, 3)))
    assert not torch.distributed.is_initialized()


def test_one_process_group_refuses_a_second_group_and_ports_differ():
    with one_process.one_process_group():
        with pytest.raises(UsageError, match="already exists"):
            with one_process.one_process_group():
                pass
    assert len({one_process.free_port() for _ in range(5)}) > 1


@pytest.mark.parametrize("native", [True, False])
def test_backbones_run_in_bf16_only_where_the_cpu_has_it(native, monkeypatch):
    monkeypatch.setattr("facemae_plugin.core.devices.native_bf16", lambda: native)
    get_model = one_process.autocast_backbones(lambda name, **kwargs: torch.nn.Linear(4, 3), torch.device("cpu"))
    fp16 = get_model("mbf", fp16=True)
    assert fp16(torch.ones(2, 4)).dtype == (torch.bfloat16 if native else torch.float32)
    assert isinstance(fp16, torch.nn.Linear)  # same class underneath: same state_dict keys
    assert get_model("mbf", fp16=False)(torch.ones(2, 4)).dtype == torch.float32


def test_interpolation_over_tied_fars_matches_numpy_and_scipy_where_there_are_no_ties():
    x = np.array([0.0, 0.1, 0.4, 0.7, 1.0])
    y = np.array([3.0, 2.5, 1.0, 0.5, 0.0])
    torch.testing.assert_close(float(interp1d_over_ties(x, y, kind="slinear")(0.25)),
                               float(interpolate.interp1d(x, y, kind="slinear")(0.25)))
    tied_x = np.array([1.0, 1.0, 0.4, 0.4, 0.0])  # FARs fall as thresholds rise, ties where they stall
    tied_y = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    first = {0.0: 2.0, 0.4: 1.0, 1.0: 0.0}  # the first threshold of each FAR
    for x_new in (0.0, 0.2, 0.4, 0.55, 1.0):
        expected = np.interp(x_new, sorted(first), [first[k] for k in sorted(first)])
        assert float(interp1d_over_ties(tied_x, tied_y, kind="slinear")(x_new)) == pytest.approx(expected)
    assert float(interp1d_over_ties([0.3, 0.3], [1.0, 2.0], kind="slinear")(0.3)) == 1.0


def test_the_interpolation_patch_applies_only_where_scipy_refuses_ties():
    verification = types.SimpleNamespace(interpolate=interpolate)
    note = patch_verification_interpolation(verification)
    if interp1d_refuses_ties():
        assert "tied" in note and verification.interpolate.interp1d is interp1d_over_ties
        assert verification.interpolate.make_interp_spline is interpolate.make_interp_spline
    else:
        assert note is None and verification.interpolate is interpolate
