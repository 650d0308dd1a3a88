#!/usr/bin/env python
"""Training throughput on this machine: images/s of one forward+backward+step.

Pretraining (FaceMAE tiny/small, pixel loss, mask 0.75, plus IRM with a frozen mbf teacher given
``--irm``) and recognition (mbf, r18, r50 with the margin head), fp32 and bf16/fp16 autocast
(bf16 marked ``emulated`` on a CPU without native bf16, where it is slower than fp32), on random
normalised 112x112 batches, so only the model is timed (no decoding). Each row runs as the
training loops run it: ``eager``, and given ``--compile`` compiled as ``train.compiled`` compiles
on this device (the whole step on CUDA; on a CPU the PReLU kernels of the trained recogniser and
of IRM's teacher; their build time reported apart). ``--plain`` adds a first row per model with
the layers every recogniser used before the loops had faster ones (``nn.Conv2d`` for the strided depthwise convolutions,
aten's PReLU, an IRM teacher in float32 inside the step's autocast, neither folded nor frozen):
``vs plain`` is each row's rate over it.
Prints a Markdown table and a JSON line.

``--mae-root`` names a checkout of facebookresearch/mae: each FaceMAE row is then followed by its
``MaskedAutoencoderViT`` at the same dimensions (112x112 images, FaceMAE's patch size, the
preset's widths and depths) with its own pixel loss, timed the same way, and ``vs_mae`` is
FaceMAE's rate over that row's. Its code is run as it is, adapted only where today's libraries
moved: timm's ``Block`` no longer takes ``qk_scale`` (dropped, it was None) and numpy no longer
has ``np.float`` (lent as ``float`` while the model is built).
"""
import argparse
import contextlib
import functools
import importlib
import inspect
import json
import sys
import time

import torch

from facemae_plugin.core.devices import native_bf16
from facemae_plugin.train.losses import IRMLoss, MarginSoftmax, masked_mse
from facemae_plugin.models.backbones import StridedDepthwiseConv2d, get_backbone
from facemae_plugin.models.frozen import frozen_recogniser
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.train.common import autocast, pick_device
from facemae_plugin.train.compiled import TrainingCompiler


def maybe_compiled(module, compiled):
    return torch.compile(module) if compiled else module


def as_loops_compile(loss_of, models, device, compiled):
    """``loss_of`` as a training loop runs it: compiled the device's way (``train.compiled``) or eager."""
    return TrainingCompiler(device, float("inf")).compile(loss_of, *models) if compiled else loss_of


def plain_layers(model):
    """``model`` with the layers it had before the fast ones: ``nn.Conv2d`` for each strided
    depthwise convolution (aten's PReLU is what a ``PReLU`` runs until given a kernel)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, StridedDepthwiseConv2d):
                conv = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                       child.padding, groups=child.groups, bias=False)
                conv.load_state_dict(child.state_dict())
                module.register_module(name, conv)
    return model


def irm_teacher(device, mixed, plain):
    """IRM's teacher as pretraining runs it (frozen, in the step's precision), or as it ran before
    (``plain``: float32 inside the step's autocast, neither folded nor frozen)."""
    teacher = plain_layers(get_backbone("mbf")) if plain else frozen_recogniser(get_backbone("mbf", fp16=mixed))
    return IRMLoss(teacher.to(device, memory_format=torch.channels_last))


def pretrain_step(preset, device, mixed, compiled=False, irm=False, plain=False):
    model = create_facemae(preset).to(device)
    irm_loss = irm_teacher(device, mixed, plain) if irm else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def loss_of(images, mixed):
        with autocast(device, mixed):
            pred, mask = model(images, 0.75)
            relation = irm_loss(images, model.compose(images, pred, mask, "full")) if irm else 0.0
        return masked_mse(pred.float(), model.patchify(images), mask, w_visible=1.0) + relation
    loss_of = as_loops_compile(loss_of, [model, irm_loss] if irm else [model], device, compiled)

    def step(images, mixed):
        loss = loss_of(images, mixed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


@contextlib.contextmanager
def numpy_float_alias():
    """``np.float`` (removed from numpy) as ``float`` while the reference model builds its positions."""
    import numpy as np
    had = "float" in np.__dict__
    np.float = float
    try:
        yield
    finally:
        if not had:
            del np.float


def reference_mae(root, preset, device):
    """facebookresearch/mae's ``MaskedAutoencoderViT`` from the checkout ``root``, at FaceMAE's dims."""
    from torch import nn

    from facemae_plugin.models.mae import PRESETS
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module("models_mae")
    block = module.Block
    if isinstance(block, type) and "qk_scale" not in inspect.signature(block).parameters:
        module.Block = lambda *args, qk_scale=None, **kwargs: block(*args, **kwargs)
    with numpy_float_alias():
        return module.MaskedAutoencoderViT(img_size=112, patch_size=create_facemae(preset).patch_size,
                                           **PRESETS[preset], mlp_ratio=4.0,
                                           norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)).to(device)


def reference_pretrain_step(root, preset, device, compiled=False):
    model = reference_mae(root, preset, device)
    forward = maybe_compiled(model, compiled)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def step(images, mixed):
        with autocast(device, mixed):
            loss, _, _ = forward(images, 0.75)  # its own loss: masked patches only
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def recognise_step(network, device, mixed, num_classes=1000, compiled=False, plain=False):
    backbone = get_backbone(network, fp16=mixed)  # as the loop builds it: its body under autocast
    backbone = (plain_layers(backbone) if plain else backbone).to(device, memory_format=torch.channels_last)
    head = MarginSoftmax(512, num_classes).to(device)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)

    def loss_of(images, labels, mixed):
        with autocast(device, mixed):
            embeddings = backbone(images.contiguous(memory_format=torch.channels_last))
        return head(embeddings.float(), labels)
    loss_of = as_loops_compile(loss_of, [backbone], device, compiled)

    def step(images, mixed):
        labels = torch.randint(0, num_classes, (images.shape[0],), device=device)
        loss = loss_of(images, labels, mixed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def images_per_second(step, batch_size, device, mixed, warmup, iters):
    """``(images/s, seconds of the first step)``: the first step is where a compiled graph is built."""
    images = torch.randn(batch_size, 3, 112, 112, device=device).clamp_(-1, 1)
    start = time.perf_counter()
    step(images, mixed)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step(images, mixed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step(images, mixed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - start), first


def time_row(name, device, mixed, compiled, args, mixed_name, plain=False):
    """The row of network ``name`` (and, given ``--mae-root``, the reference's beside a FaceMAE row)."""
    facemae = name.startswith("facemae-")
    steps = [(name + (" + IRM" if args.irm and facemae else ""),
              pretrain_step(name.split("-", 1)[1], device, mixed, compiled, args.irm, plain) if facemae
              else recognise_step(name, device, mixed, compiled=compiled, plain=plain))]
    if facemae and args.mae_root and not plain:
        steps.append((f"facebookresearch/mae at {name.split('-', 1)[1]} dims",
                      reference_pretrain_step(args.mae_root, name.split("-", 1)[1], device, compiled)))
    rows = []
    for model, step in steps:
        rate, first = images_per_second(step, args.batch_size, device, mixed, max(args.warmup, 1), args.iters)
        rows.append({"model": model, "precision": mixed_name if mixed else "fp32", "compiled": compiled,
                     "plain": plain, "images_per_s": round(rate, 1), "first_step_s": round(first, 1)})
        print(f"{model:34s} {rows[-1]['precision']:15s} {step_name(rows[-1]):14s} "
              f"{rate:8.1f} img/s (first step {first:.1f} s)", flush=True)
    if len(rows) == 2:  # FaceMAE's own pixel loss (and IRM, given --irm) against the reference's
        rows[0]["vs_mae"] = round(rows[0]["images_per_s"] / rows[1]["images_per_s"], 2)
    return rows


def step_name(row):
    return "eager, plain" if row["plain"] else ("compiled" if row["compiled"] else "eager")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per row (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models", default="facemae-tiny,facemae-small,mbf,r18",
                        help="comma list of facemae-tiny, facemae-small, facemae-base, mbf, r18, r50")
    parser.add_argument("--irm", action="store_true", help="FaceMAE steps add IRM with a frozen mbf teacher")
    parser.add_argument("--compile", action="store_true",
                        help="also time each row under torch.compile (speed-up against eager, build time apart)")
    parser.add_argument("--plain", action="store_true",
                        help="also time each model with the plain layers, eager (the reference of vs plain)")
    parser.add_argument("--mae-root", default=None, metavar="DIR",
                        help="a facebookresearch/mae checkout: time its model beside each FaceMAE row")
    parser.add_argument("--precisions", default="fp32,mixed",
                        help="comma list of fp32 and mixed (fp16 on CUDA, bf16 on a CPU; default both)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    mixed_name = "fp16" if device.type == "cuda" else ("bf16" if native_bf16() else "bf16 (emulated)")

    rows = []
    for name in args.models.split(","):
        for mixed in [p == "mixed" for p in args.precisions.split(",")]:
            if args.plain:
                rows += time_row(name, device, mixed, False, args, mixed_name, plain=True)
            for compiled in (False, True) if args.compile else (False,):
                rows += time_row(name, device, mixed, compiled, args, mixed_name)
    reference = {}
    for row in rows:
        key = row["model"], row["precision"]
        if not row["compiled"] and not row["plain"]:
            reference.setdefault(("eager",) + key, row["images_per_s"])
        if row["plain"]:
            reference[("plain",) + key] = row["images_per_s"]
    for row in rows:
        key = row["model"], row["precision"]
        row["vs_eager"] = round(row["images_per_s"] / reference[("eager",) + key], 2)
        if ("plain",) + key in reference:
            row["vs_plain"] = round(row["images_per_s"] / reference[("plain",) + key], 2)

    print(f"\n| model | precision | step | train images/s ({device.type}, batch {args.batch_size}) | vs eager | "
          f"vs plain | vs facebookresearch/mae | first step s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['precision']} | {step_name(row)} | {row['images_per_s']} | "
              f"{row['vs_eager']:.2f} | {row.get('vs_plain', '')} | {row.get('vs_mae', '')} | {row['first_step_s']} |")
    print(json.dumps({"bench": "train", "device": str(device), "threads": torch.get_num_threads(),
                      "native_bf16": native_bf16(), "batch_size": args.batch_size, "rows": rows}))


if __name__ == "__main__":
    main()
