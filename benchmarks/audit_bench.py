"""Benchmark the privacy audit's retrieval: time, peak memory and recall against the gallery size.

For each size N a fresh process draws N random 512-d gallery embeddings (identities of
--images-per-identity rows each) and N queries = gallery + Gaussian noise (each query's planted
match is its source), writes both as unit rows to disk-backed arrays a block at a time (the
audit's ``EmbeddingRows``; never all in memory), then times ``evaluate_retrieval`` on them:
exact chunked search or, beyond the exact limit (``--search auto``), the approximate search with
its recall@1 measured against exact search on --recall-queries sampled queries. Memory is the
process's peak RSS (VmHWM, anonymous and file-backed pages together, reset once the embeddings
are on disk); the full N x N float32 score matrix, never formed, is shown for comparison.

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
    parser.add_argument("--search", choices=("auto", "exact", "approximate"), default="auto",
                        help="the audit's search (default auto: exact up to its pair limit)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="precision of the embeddings on disk (default float32)")
    parser.add_argument("--recall-queries", type=int, default=1000,
                        help="queries whose approximate top-1 is checked by exact search (default 1000)")
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
    import tempfile

    import numpy as np
    import torch

    from facemae_plugin.evaluation.embedding_store import EmbeddingRows
    from facemae_plugin.evaluation.retrieval import SearchOptions, evaluate_retrieval
    from facemae_plugin.evaluation.search import default_chunk, unit_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    keys = np.arange(size)
    labels = keys // args.images_per_identity
    with tempfile.TemporaryDirectory() as tmp:
        gallery, queries = planted_embeddings(size, args, tmp, EmbeddingRows, unit_rows)
        reset_peak_rss()
        before = rss_mib("VmRSS")
        start = time.perf_counter()
        options = SearchOptions(ks=(1, 5), chunk=args.chunk, search=args.search,
                                recall_queries=args.recall_queries, seed=args.seed)
        report = evaluate_retrieval(queries, gallery, keys, keys, labels, labels, options, normalised=True)
        seconds = time.perf_counter() - start
        peak = rss_mib("VmHWM")
    metrics = report.metrics
    return {"gallery": size, "queries": size, "dim": args.dim, "dtype": args.dtype,
            "chunk": args.chunk or default_chunk(size), "threads": torch.get_num_threads(),
            "seconds": seconds, "queries_per_s": size / seconds, "peak_rss_mib": peak,
            "start_rss_mib": before, "full_matrix_gib": size * size * 4 / 2 ** 30, "search": metrics["search"],
            "instance_rank1": metrics["instance_rank1"], "identity_rank5": metrics["identity_rank5"],
            "tar_at_far": metrics["tar_at_far"], "impostor_pairs": metrics["impostor_pairs"]}


def planted_embeddings(size, args, folder, rows_class, unit_rows, block=1 << 16):
    """``(gallery, queries)`` memory maps of unit rows, drawn and written a block at a time."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    gallery = rows_class(f"{folder}/gallery.npy", size, args.dtype)
    queries = rows_class(f"{folder}/queries.npy", size, args.dtype)
    for start in range(0, size, block):
        rows = min(block, size - start)
        g = rng.standard_normal((rows, args.dim), dtype=np.float32)  # [b, D]
        q = g + np.float32(args.noise) * rng.standard_normal((rows, args.dim), dtype=np.float32)
        gallery.append(unit_rows(g).numpy())
        queries.append(unit_rows(q).numpy())
    return gallery.finish(), queries.finish()


def run_child(size, args):
    """Measure one size in a fresh interpreter, so each peak RSS is that size's own."""
    command = [sys.executable, __file__, "--child", str(size), "--dim", str(args.dim),
               "--images-per-identity", str(args.images_per_identity), "--noise", str(args.noise),
               "--seed", str(args.seed), "--search", args.search, "--dtype", args.dtype,
               "--recall-queries", str(args.recall_queries)]
    if args.chunk:
        command += ["--chunk", str(args.chunk)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown_table(rows):
    lines = ["| gallery = queries | search | recall@1 (sampled) | threads | time (s) | queries/s | "
             "peak RSS in search (MiB) | N x N fp32 matrix (GiB, never formed) | instance rank-1 | TAR@FAR=1e-3 |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        search = r["search"]
        recall = "exact" if search["method"] == "exact" else (
            f"{search['recall_at_1']:.4f} of {search['recall_queries']} ({search['probes']} of {search['lists']} "
            f"lists, {search['candidates']} candidates)")
        lines.append(f"| {r['gallery']:,} | {search['method']} | {recall} | {r['threads']} | {r['seconds']:.1f} | "
                     f"{r['queries_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
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
