"""Benchmark the privacy audit's retrieval: time and peak memory against the gallery size.

For each size N a fresh process draws N random 512-d gallery embeddings (identities of
--images-per-identity rows each) and N queries = gallery + Gaussian noise, then times
``retrieval_metrics`` (L2 normalisation, chunked top-5 search, source ranks, impostor sample,
TAR@FAR) with float32 torch matmuls on the CPU. Memory is the process's peak RSS (VmHWM,
reset once the embeddings exist) during the search and the part of it the search adds over
the embeddings (2 x N x D float32) already in memory; the full N x N float32 score matrix,
never formed, is shown for comparison.

Prints a Markdown table and, last, one JSON line {"bench": "audit", "rows": [...]}.
Timings are rough when other jobs share the CPU.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,100000",
                        help="comma-separated gallery sizes; queries = gallery size (default 10000,50000,100000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    parser.add_argument("--images-per-identity", type=int, default=10, help="gallery rows per identity (default 10)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="std of the per-dimension noise added to make queries (default 1.0)")
    parser.add_argument("--chunk", type=int, default=None, help="query rows per chunk (default: automatic)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random embeddings (default 0)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one size, in-process
    return parser.parse_args(argv)


def rss_mib(field):
    """VmHWM (peak) or VmRSS (now) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss():
    """Restart VmHWM at the current RSS (Linux: "5" to /proc/self/clear_refs), so the peak is the search's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_one(size, args):
    """Run in a fresh process: one gallery size, returns a result row."""
    import numpy as np
    import torch

    from facemae_plugin.evaluation.retrieval import default_chunk, retrieval_metrics

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    gallery = rng.standard_normal((size, args.dim), dtype=np.float32)  # [N, D]
    queries = gallery + np.float32(args.noise) * rng.standard_normal((size, args.dim), dtype=np.float32)
    keys = np.arange(size)
    labels = keys // args.images_per_identity
    del rng  # the embeddings stay; their generation's temporaries must not count as the search's
    reset_peak_rss()
    before = rss_mib("VmRSS")
    start = time.perf_counter()
    metrics = retrieval_metrics(queries, gallery, keys, keys, labels, labels, ks=(1, 5), chunk=args.chunk)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    return {"gallery": size, "queries": size, "dim": args.dim, "chunk": args.chunk or default_chunk(size),
            "threads": torch.get_num_threads(), "seconds": seconds, "queries_per_s": size / seconds,
            "peak_rss_mib": peak, "embeddings_rss_mib": before, "search_added_mib": peak - before,
            "full_matrix_gib": size * size * 4 / 2 ** 30, "instance_rank1": metrics["instance_rank1"],
            "identity_rank5": metrics["identity_rank5"], "tar_at_far": metrics["tar_at_far"],
            "impostor_pairs": metrics["impostor_pairs"]}


def run_child(size, args):
    """Measure one size in a fresh interpreter, so each peak RSS is that size's own."""
    command = [sys.executable, __file__, "--child", str(size), "--dim", str(args.dim),
               "--images-per-identity", str(args.images_per_identity), "--noise", str(args.noise),
               "--seed", str(args.seed)]
    if args.chunk:
        command += ["--chunk", str(args.chunk)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown_table(rows):
    lines = ["| gallery = queries | chunk rows | threads | time (s) | queries/s | peak RSS in search (MiB) | "
             "added by search (MiB) | N x N fp32 matrix (GiB, never formed) | instance rank-1 | TAR@FAR=1e-3 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['gallery']:,} | {r['chunk']} | {r['threads']} | {r['seconds']:.1f} | "
                     f"{r['queries_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {r['search_added_mib']:.0f} | "
                     f"{r['full_matrix_gib']:.1f} | {r['instance_rank1']:.4f} | {r['tar_at_far']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_one(args.child, args)))
        return
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    rows = []
    for size in sizes:
        rows.append(run_child(size, args))
        print(f"size {size}: {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    print(markdown_table(rows))
    print(json.dumps({"bench": "audit", "rows": rows}))


if __name__ == "__main__":
    main()
