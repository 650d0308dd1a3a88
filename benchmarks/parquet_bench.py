"""Benchmark rec2parquet and parquet2rec on a face-sized shard, against copying the shard in the same run.

Builds a layout-A shard of --records 112x112 JPEG records (distinct smooth images cycled, so
building is fast; every record is still read, written and checked in full), then times, page cache
warm:

  copy         train.rec and train.idx copied as files (the reference: the same bytes in and out)
  rec2parquet  shard -> train-*.parquet
  parquet2rec  train-*.parquet -> shard (checked byte-identical to the input)

and the peak RSS of each in a fresh process. Prints a Markdown table and, last, one JSON line:
{"bench": "parquet", ..., "rec2parquet_ratio": rec2parquet / copy seconds}.
"""
import argparse
import filecmp
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DISTINCT_IMAGES = 500
IMAGES_PER_IDENTITY = 20

STEP = r"""
import os, resource, shutil, sys, time, json
from facemae_plugin.convert.parquet import parquet_to_rec, rec_to_parquet
step, src, out = sys.argv[1:4]
start = time.perf_counter()
if step == "copy":
    os.makedirs(out)
    for name in ("train.rec", "train.idx"):
        shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
elif step == "rec2parquet":
    rec_to_parquet(src, out, rows_per_file=int(sys.argv[4]), progress=False)
else:
    parquet_to_rec([src], out, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_shard(path, records):
    import cv2
    import numpy as np

    from facemae_plugin.formats.recordio import encode_image
    from facemae_plugin.formats.shard import FaceShardWriter

    rng = np.random.default_rng(0)
    images = [encode_image(cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (112, 112),
                                      interpolation=cv2.INTER_CUBIC)) for _ in range(DISTINCT_IMAGES)]
    with FaceShardWriter(path) as writer:
        for start in range(0, records, IMAGES_PER_IDENTITY):
            count = min(IMAGES_PER_IDENTITY, records - start)
            writer.add_identity(images[(start + i) % DISTINCT_IMAGES] for i in range(count))


def run_step(step, src, out, rows_per_file):
    result = subprocess.run([sys.executable, "-c", STEP, step, str(src), str(out), str(rows_per_file)],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--work-dir", default=None, help="where the shard and outputs go (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="parquet-bench-"))
    shard = work / "shard"
    if shard.exists():
        shutil.rmtree(shard)
    build_shard(shard, args.records)
    size_mb = (shard / "train.rec").stat().st_size / 2**20
    results = {}
    for step, src, out in (("copy", shard, work / "copy"), ("rec2parquet", shard, work / "parquet"),
                           ("parquet2rec", work / "parquet", work / "back")):
        if out.exists():
            shutil.rmtree(out)
        results[step] = run_step(step, src, out, args.rows_per_file)
    identical = all(filecmp.cmp(shard / n, work / "back" / n, shallow=False) for n in ("train.rec", "train.idx"))
    print(f"{args.records} records, train.rec {size_mb:.0f} MB, {os.cpu_count()} CPUs\n")
    print("| step | seconds | records/s | MB/s | peak RSS MB |\n|---|---:|---:|---:|---:|")
    for step, r in results.items():
        print(f"| {step} | {r['seconds']:.1f} | {args.records / r['seconds']:.0f} | {size_mb / r['seconds']:.0f} | "
              f"{r['peak_rss_mb']:.0f} |")
    print(f"\nparquet2rec gives back the shard byte for byte: {identical}")
    print(json.dumps({"bench": "parquet", "records": args.records, "rec_mb": round(size_mb, 1),
                      **{f"{k}_s": round(v["seconds"], 2) for k, v in results.items()},
                      **{f"{k}_peak_rss_mb": round(v["peak_rss_mb"]) for k, v in results.items()},
                      "rec2parquet_ratio": round(results["rec2parquet"]["seconds"] / results["copy"]["seconds"], 3),
                      "parquet2rec_ratio": round(results["parquet2rec"]["seconds"] / results["copy"]["seconds"], 3),
                      "byte_identical": identical}))
    if not args.work_dir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
