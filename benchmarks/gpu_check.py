"""The GPU paths in one short run: every figure a CUDA user needs first, in one JSON line.

On one CUDA GPU, in a few minutes, runs each step in its own process with its own time limit:

  recogniser   the plugin's recognition loop, fp16 autocast with the GradScaler, one eager epoch of a
               synthetic shard (200 identities x 20): images/s and the loss it ends at
  recogniser_compiled
               the same epoch with the step compiled (torch.compile of forward, loss and backward,
               forced: a job this short would run eagerly): images/s, the build included, and the
               first losses beside the eager ones
  pretrain     FaceMAE tiny and base training throughput with IRM, fp32 and fp16, eager and compiled
               (benchmarks/train_bench.py)
  convert      ``facemae convert`` with FaceMAE tiny on the GPU under autocast against the model
               alone: the streaming pipeline's efficiency (benchmarks/convert_bench.py)
  stage        the batch stage's cost inside a recognition step (benchmarks/stage_bench.py)
  arcface      arcface_torch's own train_v2 for one epoch on the synthetic shard with the facemae
               block, when --arcface-root or $ARCFACE_TORCH_ROOT names a checkout: under torchrun (NCCL)
               and in one process (gloo, no torchrun)
  faiss        the audit's code search on the GPU, when faiss has GPU support

A failing step is recorded with the end of its output and the others still run. Without CUDA it
says so and exits 0 (``--device cpu`` rehearses every step at toy sizes on the CPU, arcface_torch
in one CPU process). Prints one line per step and, last, one JSON line {"bench": "gpu_check", ...}.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"

RECOGNISER_RECIPE = """from easydict import EasyDict as edict
config = edict(network="mbf", embedding_size=512, margin_list=(1.0, 0.0, 0.4), rec={rec!r},
               num_classes={classes}, val_targets=[], batch_size={batch}, optimizer="sgd", lr=0.1,
               weight_decay=5e-4, num_epoch=1, warmup_epoch=0, num_workers=4, fp16=True, seed=0,
               output={output!r})
"""

ARCFACE_OVERRIDES = """
config.rec = {rec!r}
config.num_classes = {classes}
config.num_image = {images}
config.num_epoch = 1
config.batch_size = {batch}
config.warmup_epoch = 0
config.val_targets = []
config.output = {output!r}
config.facemae.checkpoint = {checkpoint!r}
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to rehearse at toy sizes")
    parser.add_argument("--arcface-root", default=os.environ.get("ARCFACE_TORCH_ROOT"),
                        help="recognition/arcface_torch of an insightface checkout (default $ARCFACE_TORCH_ROOT)")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--step-timeout", type=int, default=150, help="seconds each step may take (default 150)")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write the JSON report here, rewritten after every step, so that a check cut "
                             "short (a lease ending) keeps the steps that ran")
    return parser.parse_args(argv)


def cuda_available():
    import torch

    return torch.cuda.is_available()


def run_step(command, timeout, env=None):
    """Run one step; ``{"ok", "seconds", "result" (its last JSON line) or "error"}``."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": timeout, "error": f"timed out after {timeout} s"}
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        return {"ok": False, "seconds": seconds, "error": (done.stdout + done.stderr)[-2000:]}
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    return {"ok": True, "seconds": seconds, "result": json.loads(lines[-1]) if lines else None}


def facemae(*argv):
    return [sys.executable, "-m", "facemae_plugin.cli", *map(str, argv)]


def steps(args, work, toy):
    """``[(name, command, env)]`` for this device; sizes shrink to toys on the CPU rehearsal."""
    classes, per_identity = (10, 4) if toy else (200, 20)
    synth, checkpoint = work / "synth", work / "facemae_tiny.pt"
    recipes = {}
    for name in ("recogniser", "recogniser_compiled"):
        recipes[name] = work / f"{name}.py"
        recipes[name].write_text(RECOGNISER_RECIPE.format(rec=str(synth), classes=classes, batch=16 if toy else 128,
                                                          output=str(work / name)))
    device = args.device
    plan = [
        ("synth", facemae("synth", synth, "--identities", classes, "--images-per-identity", per_identity,
                          "--holdout-identities", 2, "--pairs", 10, "--quiet", "--overwrite"), None),
        ("recogniser", facemae("train", recipes["recogniser"], "--device", device, "--no-compile", "--quiet",
                               "--json"), None),
        ("recogniser_compiled", [sys.executable, __file__, "--compiled-train-child", recipes["recogniser_compiled"],
                                 device], None),
        ("pretrain", [sys.executable, BENCHMARKS / "train_bench.py", "--device", device, "--models",
                      "facemae-tiny" if toy else "facemae-tiny,facemae-base", "--iters", 1 if toy else 10,
                      "--warmup", 1 if toy else 3, "--batch-size", 8 if toy else 128,
                      *([] if toy else ["--compile", "--irm"])], None),
        ("convert", [sys.executable, BENCHMARKS / "convert_bench.py", "--images", 200 if toy else 4000,
                     "--models", "tiny", "--baselines", "", "--device", device, "--autocast",
                     "--work-dir", work / "convert"], None),
        ("stage", [sys.executable, BENCHMARKS / "stage_bench.py", "--device", device, "--autocast",
                   "--presets", "tiny", "--iters", 1 if toy else 10], None),
    ]
    if args.arcface_root:
        for launch in ([] if toy else ["torchrun"]) + ["one_process"]:
            command = arcface_command(args, work, synth, checkpoint, classes * per_identity, classes, 8 if toy else 64,
                                      launch)
            plan.append((f"arcface_{launch}", command, {"ARCFACE_TORCH_ROOT": args.arcface_root}))
    plan.append(("faiss", [sys.executable, __file__, "--faiss-gpu-child"], None))
    return [(name, [str(part) for part in command], env) for name, command, env in plan]


def arcface_command(args, work, synth, checkpoint, images, classes, batch, launch):
    """train_v2 for one epoch with the facemae block (a random-init FaceMAE tiny: speed, not quality),
    under torchrun (NCCL) or in one process (gloo) on ``--device``."""
    config = work / f"arcface_synth_mbf_facemae_{launch}.py"
    config.write_text((REPO_ROOT / "recipes" / "arcface_synth_mbf_facemae.py").read_text() + ARCFACE_OVERRIDES.format(
        rec=str(synth), classes=classes, images=images, batch=batch, output=str(work / f"arcface_{launch}"),
        checkpoint=str(checkpoint)))
    verb = ["facemae", "arcface-train", "--arcface-root", args.arcface_root, config, "--json"]
    if launch == "one_process":
        return [sys.executable, "-m", "facemae_plugin.cli", *verb[1:], "--device", args.device]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--no-python", *verb]


def make_checkpoint(path):
    import torch

    from facemae_plugin.models.mae import create_facemae

    torch.manual_seed(0)
    create_facemae("tiny").save_checkpoint(path)


def faiss_gpu_child():
    """Time the audit's code search on the GPU when faiss has GPU support; else say so."""
    import faiss
    import numpy as np

    if not hasattr(faiss, "StandardGpuResources"):
        return {"skipped": "this faiss build has no GPU support (faiss-cpu)"}
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((200_000, 512), dtype=np.float32)
    faiss.normalize_L2(gallery)
    index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(512))
    index.add(gallery)
    started = time.perf_counter()
    index.search(gallery[:100_000], 5)
    return {"exact_queries_per_s": 100_000 / (time.perf_counter() - started), "gallery": len(gallery)}


def compiled_train_child(recipe, device):
    """``facemae train`` with its step compiled whatever the job's size."""
    import torch

    from facemae_plugin import cli
    from facemae_plugin.train import compiled

    compiled.COMPILE_AFTER_IMAGES[torch.device(device).type] = 0
    cli.main(["train", recipe, "--device", device, "--quiet", "--json"])


def main(argv=None):
    if argv is None and sys.argv[1:] == ["--faiss-gpu-child"]:
        print(json.dumps(faiss_gpu_child()))
        return
    if argv is None and sys.argv[1:2] == ["--compiled-train-child"]:
        compiled_train_child(*sys.argv[2:4])
        return
    args = parse_args(argv)
    toy = args.device == "cpu"
    if not toy and not cuda_available():
        print(json.dumps({"bench": "gpu_check", "cuda": False,
                          "reason": "no CUDA device here; run it on a GPU machine, or --device cpu to rehearse"}))
        return
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        make_checkpoint(work / "facemae_tiny.pt")
        results = {}
        for name, command, env in steps(args, work, toy):
            results[name] = run_step(command, args.step_timeout, env)
            state = "ok" if results[name]["ok"] else "FAILED"
            print(f"{name:11s} {state:6s} {results[name]['seconds']:7.1f} s", flush=True)
            report = {"bench": "gpu_check", "cuda": not toy, "device": args.device, "steps": results}
            if args.report:
                write_report(args.report, report)
    print(json.dumps(report))


def write_report(path, report):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1))
    os.replace(partial, path)


if __name__ == "__main__":
    main()
