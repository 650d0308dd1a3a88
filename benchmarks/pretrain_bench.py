#!/usr/bin/env python
"""Whole pretraining runs with IRM, with and without the teacher's cache of the originals.

The pretraining loop (``facemae pretrain``: decoding, flips, masks, FaceMAE, pixel loss, IRM through
a frozen mbf teacher, AdamW) on a synthetic shard made here, ``--epochs`` epochs each way; the
teacher is an untrained mbf (its weights do not change the work). The cache is off when its
``MAX_BYTES`` is 0. Prints a Markdown table and a JSON line.

    python benchmarks/pretrain_bench.py [--identities 40] [--images-per-identity 10] [--epochs 4]
"""
import argparse
import json
import os
import tempfile
import time

import torch

from facemae_plugin.config import merge_config
from facemae_plugin.core.devices import fast_dtype
from facemae_plugin.data.synthetic import make_synthetic_dataset
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.train import teacher_cache
from facemae_plugin.train.pretrain import pretrain


def run(shard, teacher, output, epochs, batch_size, preset, cached):
    cfg = merge_config({
        "rec": shard, "batch_size": batch_size, "lr": 1e-3, "weight_decay": 0.05, "optimizer": "adamw",
        "num_epoch": epochs, "warmup_epoch": 0, "num_workers": 1, "output": output, "seed": 0, "flip": True,
        "fp16": fast_dtype("cpu") is not None,
        "mae": {"preset": preset, "grid_images": 0}, "irm": {"weight": 1.0, "teacher": teacher, "network": "mbf"}})
    budget = teacher_cache.MAX_BYTES
    teacher_cache.MAX_BYTES = budget if cached else 0
    try:
        start = time.perf_counter()
        summary = pretrain(cfg, device="cpu", progress=False, compile=False)
        return time.perf_counter() - start, summary
    finally:
        teacher_cache.MAX_BYTES = budget


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=40)
    parser.add_argument("--images-per-identity", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shard = os.path.join(tmp, "shard")
        make_synthetic_dataset(shard, identities=args.identities, images_per_identity=args.images_per_identity,
                               holdout_identities=2, num_pairs=10, progress=False)
        teacher = os.path.join(tmp, "teacher.pt")
        torch.manual_seed(0)
        torch.save(get_backbone("mbf").state_dict(), teacher)
        rows = []
        for cached in (False, True):
            seconds, summary = run(shard, teacher, os.path.join(tmp, f"run-{cached}"), args.epochs,
                                   args.batch_size, args.preset, cached)
            rows.append({"teacher_cache": cached, "seconds": round(seconds, 1),
                         "images_per_s": round(summary["images_seen"] / seconds, 1),
                         "last_epoch_loss": round(summary["epochs"][-1]["loss"], 4)})
    base = rows[0]["seconds"]
    print(f"| teacher cache | seconds ({args.epochs} epochs, {args.identities * args.images_per_identity} images, "
          f"FaceMAE {args.preset} + IRM) | images/s | speed-up | last epoch loss |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {'on' if row['teacher_cache'] else 'off'} | {row['seconds']} | {row['images_per_s']} | "
              f"{base / row['seconds']:.2f} | {row['last_epoch_loss']} |")
    print(json.dumps({"bench": "pretrain", "threads": torch.get_num_threads(), "epochs": args.epochs,
                      "preset": args.preset, "rows": rows}))


if __name__ == "__main__":
    main()
