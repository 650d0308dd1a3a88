"""Compiled training steps: when both loops compile and what, that compiled and eager steps agree,
and the fallback to eager when compiling fails."""
import json

import pytest
import torch

from facemae_plugin.train import compiled
from facemae_plugin.train.compiled import TrainingCompiler, compile_pays
from facemae_plugin.train.pretrain import pretrain
from facemae_plugin.train.recognise import train_recogniser

from .helpers import pretrain_config, recognition_config


def recogniser_losses(synth_dir, output, **kwargs):
    summary = train_recogniser(recognition_config(synth_dir, output, val_targets=[]), device="cpu",
                               progress=False, **kwargs)
    return summary["epochs"][0]["losses"], summary["runtime"], torch.load(output / "model.pt", weights_only=True)


def pretraining_losses(synth_dir, output, irm_teacher=None, **kwargs):
    irm = {"weight": 1.0, "teacher": irm_teacher, "network": "mbf"} if irm_teacher else None
    cfg = pretrain_config(synth_dir, output, num_epoch=1, **({"irm": irm} if irm else {}))
    summary = pretrain(cfg, device="cpu", progress=False, **kwargs)
    return [p for p in summary["epochs"][0]["parts"]], summary["runtime"]


def test_a_job_compiles_only_when_long_enough_to_repay_the_build():
    for device, after in compiled.COMPILE_AFTER_IMAGES.items():
        assert not compile_pays(device, after - 1) and compile_pays(device, after)
    assert TrainingCompiler("cpu", 10**9).runtime == "torch.compile (PReLU)"
    assert TrainingCompiler("cuda", 10**9).runtime == "torch.compile"
    assert TrainingCompiler("cpu", 10**9, enabled=False).runtime == "eager"
    assert TrainingCompiler("cpu", 1).runtime == "eager"


def test_the_test_sized_jobs_of_both_loops_run_eagerly(synth_dir, tmp_path):
    assert recogniser_losses(synth_dir, tmp_path / "r")[1] == "eager"
    assert pretraining_losses(synth_dir, tmp_path / "p")[1] == "eager"


def failing_compile(fn, **options):
    def run(*args, **kwargs):
        raise RuntimeError("C++ compile error\nmore detail")
    return run


def test_a_failing_compiler_falls_back_to_eager_with_one_line_and_the_same_training(synth_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    eager_losses, _, eager_model = recogniser_losses(synth_dir, tmp_path / "eager", compile=False)
    teacher = str(tmp_path / "eager" / "model.pt")
    eager_parts, _ = pretraining_losses(synth_dir, tmp_path / "eager-mae", compile=False)
    eager_irm_parts, _ = pretraining_losses(synth_dir, tmp_path / "eager-irm", teacher, compile=False)
    monkeypatch.setitem(compiled.COMPILE_AFTER_IMAGES, "cpu", 0)
    monkeypatch.setattr(compiled.torch, "compile", failing_compile)
    capsys.readouterr()

    losses, runtime, model = recogniser_losses(synth_dir, tmp_path / "fallback")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["facemae: torch.compile failed (RuntimeError: C++ compile error); training without it"]
    assert runtime == "eager (torch.compile failed)"
    assert losses == eager_losses and all(torch.equal(model[k], eager_model[k]) for k in model)

    # FaceMAE has no PReLU: on a CPU nothing of it compiles without IRM's teacher, so nothing fails
    parts, runtime = pretraining_losses(synth_dir, tmp_path / "fallback-mae")
    assert runtime == "eager" and parts == eager_parts
    assert capsys.readouterr().err.strip() == ""
    parts, runtime = pretraining_losses(synth_dir, tmp_path / "fallback-irm", teacher)  # the teacher's kernel fails
    assert runtime == "eager (torch.compile failed)" and parts == eager_irm_parts
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    monkeypatch.setitem(compiled.STRATEGY, "cpu", "step")  # the whole step, as on CUDA
    parts, runtime = pretraining_losses(synth_dir, tmp_path / "fallback-mae-step")
    assert runtime == "eager (torch.compile failed)" and parts == eager_parts
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_step_that_fails_eagerly_too_raises_its_own_error():
    compiler = TrainingCompiler("cpu", 10**9)

    def step():
        raise ValueError("labels out of range")
    with pytest.raises(ValueError, match="labels out of range"):
        compiler.step(step)
    assert compiler.failed  # the compiled attempt was given up first: the eager one raised the same way
    with pytest.raises(ValueError):
        TrainingCompiler("cpu", 1).step(step)


@pytest.mark.slow
def test_compiled_steps_match_eager_ones_and_repeat_exactly(synth_dir, tmp_path, monkeypatch):
    """Both loops compiled the way each device compiles them. On a CPU, the recogniser's PReLU
    kernel computes aten's values, so the first loss is eager's exactly; later steps stay close
    (the slopes' gradients are summed in another order); IRM's teacher trains no slope, so
    pretraining with its kernels repeats eager pretraining exactly. The whole step (CUDA's way, run here on a
    CPU): the first step's losses equal eager ones to float rounding, later ones stay close (fused
    kernels round differently, and float32 backward through a deep BatchNorm stack is itself only a
    few parts in a thousand from float64). A second compiled run repeats the first exactly."""
    eager_losses, _, _ = recogniser_losses(synth_dir, tmp_path / "teacher", compile=False)
    teacher = str(tmp_path / "teacher" / "model.pt")
    eager_parts, _ = pretraining_losses(synth_dir, tmp_path / "eager-mae", teacher, compile=False)
    monkeypatch.setitem(compiled.COMPILE_AFTER_IMAGES, "cpu", 0)

    runs = [recogniser_losses(synth_dir, tmp_path / f"prelu-{i}") for i in range(2)]
    assert runs[0][1] == runs[1][1] == "torch.compile (PReLU)"
    assert runs[0][0][0] == eager_losses[0]
    assert runs[0][0] == pytest.approx(eager_losses, rel=5e-2)
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][2][key], runs[1][2][key]) for key in runs[0][2])

    # IRM's frozen teacher passes the same input gradients through its generated kernels: no part differs
    prelu_parts, runtime = pretraining_losses(synth_dir, tmp_path / "prelu-mae", teacher)
    assert runtime == "torch.compile (PReLU)" and prelu_parts == eager_parts

    monkeypatch.setitem(compiled.STRATEGY, "cpu", "step")
    runs = [recogniser_losses(synth_dir, tmp_path / f"compiled-{i}") for i in range(2)]
    assert runs[0][1] == runs[1][1] == "torch.compile"
    assert runs[0][0][0] == pytest.approx(eager_losses[0], rel=1e-5)
    assert runs[0][0] == pytest.approx(eager_losses, rel=5e-2)
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][2][key], runs[1][2][key]) for key in runs[0][2])

    mae_runs = [pretraining_losses(synth_dir, tmp_path / f"compiled-mae-{i}", teacher) for i in range(2)]
    assert mae_runs[0][1] == "torch.compile"
    assert mae_runs[0][0][0] == pytest.approx(eager_parts[0], rel=1e-4)
    for compiled_part, eager_part in zip(mae_runs[0][0], eager_parts):
        assert compiled_part == pytest.approx(eager_part, rel=5e-2)
    assert json.dumps(mae_runs[0][0]) == json.dumps(mae_runs[1][0])
