"""benchmarks/gpu_check.py: without CUDA it says so and succeeds; its CPU rehearsal runs every step."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def run(*argv, timeout=900):
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: the check would run")
def test_without_cuda_the_check_says_so_and_exits_0():
    report = run()
    assert report["bench"] == "gpu_check" and report["cuda"] is False and "no CUDA" in report["reason"]


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_step(tmp_path):
    # each step is checked for running, not for speed: a loaded 2-core CPU emulating bf16 needs more than the default
    report = run("--device", "cpu", "--work-dir", str(tmp_path), "--step-timeout", "600", timeout=2400)
    failed = {name: step.get("error") for name, step in report["steps"].items() if not step["ok"]}
    assert not failed, failed
    steps = report["steps"]
    assert set(steps) >= {"synth", "recogniser", "pretrain", "convert", "stage", "faiss"}
    assert steps["recogniser"]["result"]["images_per_s"] > 0
    assert {row["precision"].split()[0] for row in steps["pretrain"]["result"]["rows"]} == {"fp32", "bf16"}
    assert steps["convert"]["result"]["autocast"] is True and steps["stage"]["result"]["device"] == "cpu"
