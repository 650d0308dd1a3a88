"""Benchmark facemae_plugin.formats.recordio against MXNet's own RecordIO on a face-sized shard.

Builds (once, cached in --work-dir) a shard of --records 112x112 JPEG records
written by our RecordWriter, plus a quarter-size shard, then measures in fresh
processes, with the page cache warm and the same shuffled key order:

  raw     random IndexedRecordReader.read_idx   vs  mx.recordio.MXIndexedRecordIO.read_idx
  decode  read_idx + unpack + cv2.imdecode      vs  read_idx + mx.recordio.unpack_img
          (first 5000 shuffled keys; mostly measures each venv's OpenCV build)
  memory  peak and anonymous RSS of our reader on the small and the full shard

MXNet runs in the oracle venv ($FACEMAE_MXNET_PYTHON, else .venv-mxnet/bin/python);
without it only our side is measured. Prints a Markdown table and, last, one JSON
line: {"bench": "recordio", ..., "raw_read_ratio": ours / mxnet}.
"""
import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IMAGE_SIZE = 112
JPEG_QUALITY = 95
IMAGES_PER_IDENTITY = 20
DECODE_RECORDS = 5000  # decode passes use the first keys of the shuffled order
SHARD_VERSION = "v1"  # bump when the shard recipe changes, so stale caches are rebuilt

# Runs in the MXNet venv: times its own loops, prints one JSON line.
MXNET_MEASURE = r"""
import json, sys, time
import mxnet as mx
rec, idx, keys_path, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
DECODE_RECORDS = int(sys.argv[5])
keys = json.load(open(keys_path))
reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
for key in keys:  # warm the page cache and the reader
    reader.read_idx(key)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    for key in keys:
        reader.read_idx(key)
    best = min(best, time.perf_counter() - start)
decode_keys = keys[:DECODE_RECORDS]
decode = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    for key in decode_keys:
        mx.recordio.unpack_img(reader.read_idx(key))
    decode = min(decode, time.perf_counter() - start)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"raw_rps": len(keys) / best, "decode_rps": len(decode_keys) / decode,
                  "peak_rss_kb": int(status["VmHWM"].split()[0])}))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20000, help="records in the full shard (default 20000)")
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="where the shards are built and cached between runs (default: a fresh temp dir)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per loop; the best counts (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for images and key order (default 0)")
    parser.add_argument(
        "--mxnet-python", default=None,
        help="interpreter that can import mxnet (default: $FACEMAE_MXNET_PYTHON, else .venv-mxnet/bin/python)",
    )
    # Internal: measure our reader in a fresh process, so its RSS is the reader's alone.
    parser.add_argument("--measure-ours", nargs=3, metavar=("REC", "KEYS", "REPEATS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- shard


def smooth_face_sized_image(rng):
    """A 112x112 BGR image: upsampled low-frequency colour plus mild sensor-like noise.

    Smooth content plus noise gives JPEG sizes close to real aligned face crops.
    """
    import cv2
    import numpy as np

    coarse = rng.integers(0, 256, size=(7, 7, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 4, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def build_shard(directory, count, seed):
    """Write ``count`` JPEG records (keys 0..count-1) unless a complete cached copy exists."""
    import numpy as np

    from facemae_plugin.formats.recordio import IRHeader, RecordWriter, encode_image, pack

    rec = directory / f"bench-{SHARD_VERSION}-{count}-{seed}.rec"
    idx = rec.with_suffix(".idx")
    if rec.exists() and idx.exists():  # the writer renames into place only when complete
        return rec, idx
    rng = np.random.default_rng(seed)
    with RecordWriter(rec, idx) as writer:
        for key in range(count):
            jpeg = encode_image(smooth_face_sized_image(rng), quality=JPEG_QUALITY)
            writer.write_idx(key, pack(IRHeader(0, float(key // IMAGES_PER_IDENTITY), key, 0), jpeg))
    return rec, idx


def shuffled_keys(count, seed, directory):
    keys = list(range(count))
    random.Random(seed).shuffle(keys)
    path = directory / f"keys-{count}-{seed}.json"
    path.write_text(json.dumps(keys))
    return path


# --------------------------------------------------------------------------- measuring


def memory_kib():
    """Peak, anonymous and file-backed resident memory of this process, in KiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0])
    return fields


def measure_ours(rec, keys_path, repeats):
    """Our side of the benchmark; runs in its own process and returns a dict."""
    import cv2

    from facemae_plugin.formats.recordio import IndexedRecordReader, decode_image, unpack

    keys = json.loads(Path(keys_path).read_text())
    before = memory_kib()
    reader = IndexedRecordReader(rec)
    for key in keys:  # warm the page cache and the reader
        reader.read_idx(key)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for key in keys:
            reader.read_idx(key)
        best = min(best, time.perf_counter() - start)
    decode_keys = keys[:DECODE_RECORDS]
    decode = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for key in decode_keys:
            header, payload = unpack(reader.read_idx(key))
            decode_image(payload, cv2.IMREAD_UNCHANGED)  # MXNet's unpack_img default (-1)
        decode = min(decode, time.perf_counter() - start)
    after = memory_kib()
    return {
        "raw_rps": len(keys) / best,
        "decode_rps": len(decode_keys) / decode,
        "peak_rss_kb": after["VmHWM"],
        "anon_growth_kb": after["RssAnon"] - before["RssAnon"],
        "file_rss_kb": after["RssFile"] - before["RssFile"],
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_json(command):
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_ours(rec, keys_path, repeats):
    return run_json([sys.executable, __file__, "--measure-ours", str(rec), str(keys_path), str(repeats)])


def run_mxnet(python, rec, idx, keys_path, repeats):
    command = [python, "-c", MXNET_MEASURE, str(rec), str(idx), str(keys_path), str(repeats), str(DECODE_RECORDS)]
    return run_json(command)


def find_mxnet_python(explicit):
    candidates = [explicit, os.environ.get("FACEMAE_MXNET_PYTHON"), REPO_ROOT / ".venv-mxnet/bin/python"]
    return next((str(c) for c in candidates if c and os.access(c, os.X_OK)), None)


# --------------------------------------------------------------------------- report


def mib(kib):
    return kib / 1024


def report(results, records, small, shard_bytes):
    ours, mx, ours_small = results["ours"], results.get("mxnet"), results["ours_small"]

    def ratio(name):
        return ours[name] / mx[name] if mx else None

    def cell(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    rows = [
        ("random read_idx, records/s", ours["raw_rps"], mx and mx["raw_rps"], ratio("raw_rps"), ",.0f"),
        ("read + JPEG decode, records/s", ours["decode_rps"], mx and mx["decode_rps"], ratio("decode_rps"), ",.0f"),
        (f"peak RSS, {records} records (MiB)", mib(ours["peak_rss_kb"]), mx and mib(mx["peak_rss_kb"]), None, ".1f"),
    ]
    print(f"\nShard: {records} JPEG records, {shard_bytes / 2**20:.1f} MiB; small shard: {small} records.\n")
    print("| measurement | ours | MXNet 1.9.1 | ours / MXNet |")
    print("|---|---:|---:|---:|")
    for name, a, b, r, fmt in rows:
        print(f"| {name} | {cell(a, fmt)} | {cell(b, fmt)} | {cell(r, '.2f')} |")
    print("\n| our reader, memory | " + f"{small} records | {records} records |")
    print("|---|---:|---:|")
    for label, key in (("peak RSS (MiB)", "peak_rss_kb"), ("anonymous RSS growth (MiB)", "anon_growth_kb"),
                       ("file-backed RSS growth (MiB)", "file_rss_kb")):
        print(f"| {label} | {mib(ours_small[key]):.1f} | {mib(ours[key]):.1f} |")
    print("\nThe reader uses positional reads, so the shard stays in the shared page cache;")
    print("anonymous growth is the key -> offset index (about 100 bytes per key, as in MXNet).\n")
    summary = {
        "bench": "recordio", "records": records, "shard_mib": round(shard_bytes / 2**20, 1),
        "ours_raw_rps": round(ours["raw_rps"]), "mxnet_raw_rps": mx and round(mx["raw_rps"]),
        "ours_decode_rps": round(ours["decode_rps"]), "mxnet_decode_rps": mx and round(mx["decode_rps"]),
        "ours_anon_growth_mib": {str(small): round(mib(ours_small["anon_growth_kb"]), 1),
                                 str(records): round(mib(ours["anon_growth_kb"]), 1)},
        "ours_peak_rss_mib": {str(small): round(mib(ours_small["peak_rss_kb"]), 1),
                              str(records): round(mib(ours["peak_rss_kb"]), 1)},
        "decode_ratio": ratio("decode_rps") and round(ratio("decode_rps"), 3),
        "raw_read_ratio": ratio("raw_rps") and round(ratio("raw_rps"), 3),
    }
    print(json.dumps(summary))


def main(argv=None):
    args = parse_args(argv)
    if args.measure_ours:
        rec, keys_path, repeats = args.measure_ours
        print(json.dumps(measure_ours(rec, keys_path, int(repeats))))
        return
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="recordio-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    small = max(1, args.records // 4)
    print(f"building shards in {work_dir} ...", file=sys.stderr)
    rec, idx = build_shard(work_dir, args.records, args.seed)
    small_rec, _ = build_shard(work_dir, small, args.seed)
    keys = shuffled_keys(args.records, args.seed, work_dir)
    results = {
        "ours": run_ours(rec, keys, args.repeats),
        "ours_small": run_ours(small_rec, shuffled_keys(small, args.seed, work_dir), args.repeats),
    }
    mxnet_python = find_mxnet_python(args.mxnet_python)
    if mxnet_python:
        results["mxnet"] = run_mxnet(mxnet_python, rec, idx, keys, args.repeats)
    else:
        print("MXNet oracle venv not found: measuring our reader only", file=sys.stderr)
    report(results, args.records, small, rec.stat().st_size)


if __name__ == "__main__":
    main()
