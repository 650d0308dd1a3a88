#!/usr/bin/env python
"""Cost of the online FaceMAE batch stage: recognition step time with and without it.

One step is what arcface_torch's loop does per batch (mbf forward, margin softmax, backward,
clip, SGD step: ``train.recognise.train_step``); with the stage, the batch is first reconstructed
by a frozen FaceMAE (``ReconstructionStage``, masks from per-record keys) on the same device. Random
normalised 112x112 batches, so decoding is not timed. Prints a Markdown table and a JSON line.

    python benchmarks/stage_bench.py [--batch-size 32] [--iters 5] [--presets tiny small] [--device cuda]
"""
import argparse
import json
import statistics
import time

import torch

from facemae_plugin.train.losses import MarginSoftmax
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.privatizers.facemae import ReconstructionStage
from facemae_plugin.core.devices import pick_device
from facemae_plugin.train.common import OptimizerStep
from facemae_plugin.train.recognise import GRAD_CLIP_NORM, margin_loss, train_step


def recognition_step(network, device, num_classes, mixed):
    backbone = get_backbone(network, fp16=mixed).to(device).train()
    head = MarginSoftmax(512, num_classes).to(device)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    update = OptimizerStep(optimizer, backbone.parameters(), device, mixed, GRAD_CLIP_NORM)
    loss_of = margin_loss(backbone, head, update)
    return lambda images, labels: train_step(loss_of, update, images, labels)


def _clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def timed_steps(step, stages, batch_size, device, warmup, iters):
    """Seconds per recognition step, and per reconstruction for each stage.

    The recognition step is the same work in every configuration, so its time is the median over
    all of them; the reconstruction is timed per stage. Configurations run interleaved, one step
    each per round, so drifting load (shared CPUs) hits all of them alike.
    """
    images = torch.randn(batch_size, 3, 112, 112, device=device).clamp_(-1, 1)
    labels = torch.randint(0, 1000, (batch_size,), device=device)
    keys = torch.arange(batch_size)
    steps, reconstructions = [], {name: [0.0] for name in stages}
    for i in range(warmup + iters):
        for name, stage in stages.items():
            start = _clock(device)
            batch = stage(images, keys + i * batch_size) if stage is not None else images  # new keys, new masks
            staged = _clock(device)
            step(batch, labels)
            end = _clock(device)
            if i >= warmup:
                steps.append(end - staged)
                reconstructions[name].append(staged - start)
    return statistics.median(steps), {name: statistics.median(v[1:] or v) for name, v in reconstructions.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--network", default="mbf")
    parser.add_argument("--device", default=None)
    parser.add_argument("--autocast", action="store_true", help="fp16 (CUDA) / bf16 (CPU) for both models")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)

    step = recognition_step(args.network, device, 1000, args.autocast)
    stages = {"none": None}
    for preset in args.presets:
        stages[f"facemae {preset}"] = ReconstructionStage(create_facemae(preset), device=device,
                                                          autocast=args.autocast)
    step_s, reconstruct_s = timed_steps(step, stages, args.batch_size, device, args.warmup, args.iters)
    rows = [{"stage": name, "step_ms": round((step_s + part) * 1e3, 1), "reconstruct_ms": round(part * 1e3, 1),
             "ratio": round((step_s + part) / step_s, 2)} for name, part in reconstruct_s.items()]

    precision = "autocast" if args.autocast else "fp32"
    print(f"\n| batch stage | step ms | of which reconstruction ms | x without "
          f"({args.network}, {device.type}, batch {args.batch_size}, {precision}) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['stage']} | {row['step_ms']} | {row['reconstruct_ms']} | {row['ratio']} |")
    print(json.dumps({"bench": "stage", "device": str(device), "threads": torch.get_num_threads(),
                      "network": args.network, "batch_size": args.batch_size, "precision": precision,
                      "rows": rows}))


if __name__ == "__main__":
    main()
