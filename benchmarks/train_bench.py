#!/usr/bin/env python
"""Training throughput on this machine: images/s of one forward+backward+step.

Pretraining (FaceMAE tiny/small, pixel loss, mask 0.75) and recognition (mbf, r18
with the ArcFace margin head), fp32 and bf16/fp16 autocast, on random normalised
112x112 batches, so only the model is timed (no decoding). Prints a Markdown
table and a JSON line.
"""
import argparse
import json
import time

import torch

from facemae_plugin.train.losses import MarginSoftmax, masked_mse
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.train.common import autocast, pick_device


def pretrain_step(preset, device):
    model = create_facemae(preset).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def step(images, mixed):
        with autocast(device, mixed):
            pred, mask = model(images, 0.75)
        loss = masked_mse(pred.float(), model.patchify(images), mask, w_visible=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def recognise_step(network, device, num_classes=1000):
    backbone = get_backbone(network).to(device)
    head = MarginSoftmax(512, num_classes).to(device)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)

    def step(images, mixed):
        labels = torch.randint(0, num_classes, (images.shape[0],), device=device)
        with autocast(device, mixed):
            embeddings = backbone(images)
        loss = head(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def images_per_second(step, batch_size, device, mixed, warmup, iters):
    images = torch.randn(batch_size, 3, 112, 112, device=device).clamp_(-1, 1)
    for _ in range(warmup):
        step(images, mixed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step(images, mixed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per row (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models", default="facemae-tiny,facemae-small,mbf,r18",
                        help="comma list of facemae-tiny, facemae-small, facemae-base, mbf, r18, r50")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)

    rows = []
    for name in args.models.split(","):
        for mixed in (False, True):
            step = (pretrain_step(name.split("-", 1)[1], device) if name.startswith("facemae-")
                    else recognise_step(name, device))
            rate = images_per_second(step, args.batch_size, device, mixed, args.warmup, args.iters)
            rows.append({"model": name, "precision": ("fp16" if device.type == "cuda" else "bf16") if mixed
                         else "fp32", "images_per_s": round(rate, 1)})
            print(f"{name:14s} {rows[-1]['precision']:5s} {rate:8.1f} img/s", flush=True)

    print(f"\n| model | precision | train images/s ({device.type}, batch {args.batch_size}) |")
    print("|---|---|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['precision']} | {row['images_per_s']} |")
    print(json.dumps({"bench": "train", "device": str(device), "threads": torch.get_num_threads(),
                      "batch_size": args.batch_size, "rows": rows}))


if __name__ == "__main__":
    main()
