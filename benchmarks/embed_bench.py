"""Embedding throughput: a recogniser in float32 against the fast path (channels_last + autocast).

For each network (default mbf and r50; random weights seeded, or a trained --model for mbf), embeds
the images of a synthetic verification set (image + flip, as ``facemae verify`` does) with both
paths, interleaved --repeats times so that both see the same machine, and reports images per
second, the smallest cosine between the two paths' embeddings of the same image, and the 10-fold
accuracy of each on the set. The fast path is fp16 on CUDA and bf16 on the CPU (native when the
CPU has avx512_bf16 or amx_bf16, emulated and slow otherwise). Prints a Markdown table and, last,
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

    from facemae_plugin.evaluation.embed import embed_plain_and_flipped

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    plain, flipped = [], []
    for start in range(0, len(images), batch_size):
        a, b = embed_plain_and_flipped(embedder, images[start:start + batch_size], device)
        plain.append(a)
        flipped.append(b)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(plain), np.concatenate(flipped), time.perf_counter() - started


def measure(network, args, bin_path, device):
    import numpy as np
    import torch

    from facemae_plugin.evaluation.bin_report import verification_report
    from facemae_plugin.evaluation.embed import decode_faces, with_precision
    from facemae_plugin.formats.binfile import load_bin
    from facemae_plugin.models.backbones import get_backbone, load_backbone

    images, issame = load_bin(bin_path)
    decoded = decode_faces(images, bin_path)  # [2P, 3, 112, 112]
    torch.manual_seed(0)
    def fresh():
        if args.model and network == "mbf":
            return load_backbone(args.model, "mbf", device=str(device))
        return get_backbone(network).to(device).eval()
    reference, _ = with_precision(fresh(), device, "fp32")
    fast, precision = with_precision(fresh(), device, "fast")
    seconds = {"fp32": [], "fast": []}
    outputs = {}
    embed_pass(fast, decoded[:args.batch_size], args.batch_size, device)  # warm-up: autocast kernels
    for _ in range(args.repeats):
        for name, embedder in (("fp32", reference), ("fast", fast)):
            plain, flipped, took = embed_pass(embedder, decoded, args.batch_size, device)
            seconds[name].append(took)
            outputs[name] = (plain, flipped)
    a = outputs["fp32"][0] + outputs["fp32"][1]
    b = outputs["fast"][0] + outputs["fast"][1]
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    accuracy = {name: verification_report(*outputs[name], issame)["accuracy_flip"] for name in outputs}
    images_per_s = {name: 2 * len(decoded) / min(s) for name, s in seconds.items()}  # image + flip
    return {"network": network, "weights": "trained" if args.model and network == "mbf" else "random",
            "fast_precision": precision, "images": len(decoded), "images_per_s": images_per_s,
            "speedup": images_per_s["fast"] / images_per_s["fp32"], "min_cosine": float(cosine.min()),
            "accuracy": accuracy, "accuracy_difference_points": abs(accuracy["fast"] - accuracy["fp32"]) * 100}


def main(argv=None):
    args = parse_args(argv)
    import torch

    from facemae_plugin.core.devices import native_bf16, pick_device

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        bin_path = synthetic_bin(tmp, args.pairs)
        rows = [measure(network, args, bin_path, device) for network in args.networks.split(",") if network]
    print(f"\n### embeddings (image + flip), {device}, {torch.get_num_threads()} threads, native bf16: {native_bf16()}\n")
    print("| network | weights | fp32 img/s | fast img/s | fast path | speed-up | min cosine | accuracy fp32 "
          "| accuracy fast | difference (points) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['network']} | {r['weights']} | {r['images_per_s']['fp32']:.1f} | {r['images_per_s']['fast']:.1f} "
              f"| {r['fast_precision']} | {r['speedup']:.2f}x | {r['min_cosine']:.5f} | {r['accuracy']['fp32']:.4f} "
              f"| {r['accuracy']['fast']:.4f} | {r['accuracy_difference_points']:.2f} |")
    print(json.dumps({"bench": "embed", "device": str(device), "native_bf16": native_bf16(),
                      "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
