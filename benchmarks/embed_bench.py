"""Embedding throughput: a recogniser in float32 against the fast path (channels_last + autocast), each
eager and through each compiler that runs here (``CompilingEmbedder``, compiled from the first batch):
``torch.compile`` everywhere, OpenVINO on a CPU.

For each network (default mbf and r50; random weights seeded, or a trained --model for mbf), embeds
the images of a synthetic verification set (image + flip, as ``facemae verify`` does) with every
path, interleaved --repeats times so that all see the same machine, and reports images per
second, the first batch's time (the compile, for a compiled path), the smallest cosine to the fp32
path's embedding of the same image, and the 10-fold accuracy of each on the set. The fast path
is fp16 on CUDA and bf16 on the CPU (native when the CPU has avx512_bf16 or amx_bf16, emulated
and slow otherwise). Prints a Markdown table and, last,
one JSON line {"bench": "embed", ...}.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="mbf,r50", help="comma list of backbones (default mbf,r50)")
    parser.add_argument("--model", default=None, help="a trained mbf model.pt to use instead of random weights")
    parser.add_argument("--pairs", type=int, default=300, help="pairs in the synthetic .bin (default 300)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved passes per path (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    return parser.parse_args(argv)


def synthetic_bin(folder, pairs):
    from facemae_plugin.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(folder, identities=2, images_per_identity=2, holdout_identities=max(10, pairs // 10),
                           num_pairs=pairs, progress=False)
    return os.path.join(folder, "holdout.bin")


def embed_pass(embedder, images, batch_size, device):
    """``(plain, flipped, seconds)`` of one pass over the decoded images (decoding not timed)."""
    import numpy as np
    import torch

    from facemae_plugin.evaluation.embed import embed_plain_and_flipped, embedding_job

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    plain, flipped = [], []
    with embedding_job(embedder, 2 * len(images)):
        for start in range(0, len(images), batch_size):
            a, b = embed_plain_and_flipped(embedder, images[start:start + batch_size], device)
            plain.append(a)
            flipped.append(b)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(plain), np.concatenate(flipped), time.perf_counter() - started


def build_paths(fresh, device):
    """``({name: embedder}, fast dtype name)``: each precision eager and through each compiler that runs here."""
    import torch

    from facemae_plugin.evaluation.embed import (CompilingEmbedder, OpenVinoCompiler, TorchCompiler, pick_compiler,
                                                 with_precision)

    paths, fast_name = {}, None
    for precision in ("fp32", "fast"):
        embedder, name = with_precision(fresh(), device, precision)
        fast_name = name if precision == "fast" else fast_name
        paths[precision] = embedder
        compiled, _ = with_precision(fresh(), device, precision)
        paths[f"{precision} torch.compile"] = CompilingEmbedder(compiled, TorchCompiler(compiled), after=0).eval()
        dtype = torch.float32 if name == "fp32" else getattr(torch, name)
        model = fresh()
        openvino = pick_compiler(model, model, device, dtype)  # OpenVINO wherever a job would run it
        if isinstance(openvino, OpenVinoCompiler):
            paths[f"{precision} openvino"] = CompilingEmbedder(model, openvino, after=0).eval()
    return paths, fast_name


def measure(network, args, bin_path, device):
    import numpy as np
    import torch

    from facemae_plugin.evaluation.bin_report import verification_report
    from facemae_plugin.evaluation.embed import decode_faces
    from facemae_plugin.formats.binfile import load_bin
    from facemae_plugin.models.backbones import get_backbone, load_backbone

    images, issame = load_bin(bin_path)
    decoded = decode_faces(images, bin_path)  # [2P, 3, 112, 112]

    def fresh():
        torch.manual_seed(0)  # every path gets the same random weights
        if args.model and network == "mbf":
            return load_backbone(args.model, "mbf", device=str(device))
        return get_backbone(network).to(device).eval()

    paths, precision = build_paths(fresh, device)
    warm_up = {}
    for name, embedder in paths.items():  # autocast kernels, and the compile of the compiled paths
        warm_up[name] = embed_pass(embedder, decoded[:args.batch_size], args.batch_size, device)[2]
    seconds, outputs = {name: [] for name in paths}, {}
    for _ in range(args.repeats):
        for name, embedder in paths.items():
            plain, flipped, took = embed_pass(embedder, decoded, args.batch_size, device)
            seconds[name].append(took)
            outputs[name] = (plain, flipped)
    a = outputs["fp32"][0] + outputs["fp32"][1]
    row = {"network": network, "weights": "trained" if args.model and network == "mbf" else "random",
           "fast_precision": precision, "images": len(decoded), "paths": {}}
    for name in paths:
        b = outputs[name][0] + outputs[name][1]
        cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        accuracy = verification_report(*outputs[name], issame)["accuracy_flip"]
        row["paths"][name] = {
            "images_per_s": 2 * len(decoded) / min(seconds[name]),  # image + flip
            "first_batch_s": warm_up[name], "min_cosine": float(cosine.min()), "accuracy": accuracy}
    base = row["paths"]["fp32"]
    for entry in row["paths"].values():
        entry["speedup"] = entry["images_per_s"] / base["images_per_s"]
        entry["accuracy_difference_points"] = abs(entry["accuracy"] - base["accuracy"]) * 100
    return row


def main(argv=None):
    args = parse_args(argv)
    import torch

    from facemae_plugin.core.devices import native_bf16, pick_device

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        bin_path = synthetic_bin(tmp, args.pairs)
        rows = [measure(network, args, bin_path, device) for network in args.networks.split(",") if network]
    print(f"\n### embeddings (image + flip), {device}, {torch.get_num_threads()} threads, "
          f"native bf16: {native_bf16()}\n")
    print("| network | weights | path | img/s | speed-up | first batch (s) | min cosine vs fp32 | accuracy "
          "| difference (points) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        for name, e in r["paths"].items():
            label = name.replace("fast", f"fast ({r['fast_precision']})")
            print(f"| {r['network']} | {r['weights']} | {label} | {e['images_per_s']:.1f} | {e['speedup']:.2f}x "
                  f"| {e['first_batch_s']:.1f} | {e['min_cosine']:.5f} | {e['accuracy']:.4f} "
                  f"| {e['accuracy_difference_points']:.2f} |")
    print(json.dumps({"bench": "embed", "device": str(device), "native_bf16": native_bf16(),
                      "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
