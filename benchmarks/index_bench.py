"""Opening a large ``.idx``: facemae_plugin's array index against MXNet's ``MXIndexedRecordIO``.

For each size in --sizes (default 1M, 5.8M and 17M keys: MS1MV3, Glint360K-scale), builds a
shard whose ``train.idx`` lists keys 0..N-1 over a sparse ``train.rec`` of face-sized records,
with real 112x112 JPEG records written at --real-records random keys (the only ones read).
Then, each in a fresh process with the page cache warm:

  open     seconds to open the reader (parse the .idx), and the resident memory it added
           (anonymous RSS after opening minus before, and its peak), per key
  read     random ``read_idx`` of the real records, records per second

MXNet runs in the oracle venv ($FACEMAE_MXNET_PYTHON, else .venv-mxnet/bin/python); without it
only our side is measured. Last, at --loader-keys keys, a ``FaceRecordDataset`` DataLoader with
4 workers makes 20k random reads: the resident and privately dirtied memory of the parent and of
each worker after the first batch and after the last (copy-on-write copies show as private
dirty growth). Prints a Markdown table and, last, one JSON line {"bench": "index", ...}.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from recordio_bench import find_mxnet_python, run_json, smooth_face_sized_image  # noqa: E402

STRIDE = 7000  # bytes per record slot in the sparse .rec, about a 112x112 JPEG at quality 95
READS = 20_000
LOADER_WORKERS = 4

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,5800000,17000000",
                        help="comma-separated key counts (default 1M, 5.8M, 17M)")
    parser.add_argument("--loader-keys", type=int, default=5_800_000,
                        help="keys of the shard the DataLoader test reads (default 5.8M; 0 skips it)")
    parser.add_argument("--real-records", type=int, default=4096,
                        help="real JPEG records per shard, the ones that are read (default 4096)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where shards are built (default: a temp dir)")
    parser.add_argument("--mxnet-python", default=None,
                        help="interpreter that can import mxnet (default: $FACEMAE_MXNET_PYTHON, else .venv-mxnet)")
    # Internal: one reader measured in a fresh process (ours here, MXNet's in the oracle venv, which runs this
    # file too: everything it imports at the top is the standard library).
    parser.add_argument("--measure", nargs=5, metavar=("READER", "REC", "IDX", "KEYS", "READS"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-loader", nargs=2, metavar=("DIR", "KEYS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- shards


def build_sparse_shard(directory, n, real, seed=0):
    """``train.idx`` of keys 0..n-1, a sparse ``train.rec``, real records at ``real`` random keys."""
    import numpy as np

    from facemae_plugin.formats.recordindex import write_index_lines
    from facemae_plugin.formats.recordio import IRHeader, encode_image, frame_record, pack

    directory.mkdir(parents=True, exist_ok=True)
    rec, idx, keys_path = directory / "train.rec", directory / "train.idx", directory / "real_keys.json"
    if keys_path.exists():
        return rec, idx, keys_path
    rng = np.random.default_rng(seed)
    real_keys = np.unique(np.r_[0, rng.choice(n, size=min(real, n) - 1, replace=False)])  # key 0 is read first
    with open(rec, "wb") as f:
        f.truncate(n * STRIDE)
        for key in real_keys.tolist():
            jpeg = encode_image(smooth_face_sized_image(rng), quality=95)
            framed = frame_record(pack(IRHeader(0, float(key % 1000), key, 0), jpeg))
            assert len(framed) <= STRIDE, len(framed)
            os.pwrite(f.fileno(), framed, key * STRIDE)
    keys = np.arange(n, dtype=np.int64)
    with open(idx, "w") as f:
        write_index_lines(f, keys, keys * STRIDE)
    (directory / "property").write_text("1000,112,112\n")
    keys_path.write_text(json.dumps(real_keys.tolist()))
    return rec, idx, keys_path


# --------------------------------------------------------------------------- measuring


def open_reader(kind, rec, idx):
    """``(reader, key count)`` opener for ``kind``: ``ours`` (IndexedRecordReader) or ``mxnet``."""
    if kind == "mxnet":
        import mxnet as mx

        return lambda: mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    from facemae_plugin.formats.recordio import IndexedRecordReader

    return lambda: IndexedRecordReader(rec, idx)


def measure_reader(kind, rec, idx, keys_path, reads):
    """Open time and the resident memory the open added, then random ``read_idx`` of the real records."""
    import gc
    import random

    opener = open_reader(kind, rec, idx)
    keys = json.loads(Path(keys_path).read_text())
    gc.collect()
    before = status_kib()
    start = time.perf_counter()
    reader = opener()
    open_s = time.perf_counter() - start
    gc.collect()
    after = status_kib()
    rng = random.Random(0)
    order = [rng.choice(keys) for _ in range(reads)]
    for key in order[:1000]:
        reader.read_idx(key)
    start = time.perf_counter()
    for key in order:
        reader.read_idx(key)
    read_s = time.perf_counter() - start
    result = {"open_s": open_s, "anon_kb": after["RssAnon"] - before["RssAnon"],
              "peak_kb": after["VmHWM"] - before["VmRSS"], "reads_per_s": reads / read_s, "keys": len(reader.keys)}
    if kind == "ours":
        result["index_bytes"] = reader.index.nbytes
    return result


def status_kib():
    """Anonymous, total and peak resident memory of this process, in KiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("RssAnon", "VmRSS", "VmHWM")}


def process_memory_kib(pid):
    """``(rss, private_dirty)`` of a process in KiB, from /proc/PID/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("Rss", "Private_Dirty"):
                fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Private_Dirty"]


def measure_loader(directory, keys_path):
    """RSS of a 4-worker DataLoader over the shard, after its first batch and after 20k random reads."""
    import numpy as np
    import torch

    from facemae_plugin.data.dataset import FaceRecordDataset

    real = np.asarray(json.loads(Path(keys_path).read_text()))
    dataset = FaceRecordDataset(directory)  # keys 0..N-1: a key is its own position
    sampler = np.random.default_rng(0).choice(real, size=READS).tolist()
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler, num_workers=LOADER_WORKERS,
                                         multiprocessing_context="fork", prefetch_factor=2)
    batches = iter(loader)
    next(batches)
    pids = [os.getpid()] + [worker.pid for worker in batches._workers]  # parent, then each worker
    first = [process_memory_kib(pid) for pid in pids]
    last = first
    for _ in batches:
        try:
            last = [process_memory_kib(pid) for pid in pids]
        except FileNotFoundError:  # the workers are leaving after their last batch
            break
    return {"keys": len(dataset), "reads": READS,
            "processes": [{"role": "parent" if i == 0 else f"worker {i}", "rss_first_kb": a[0],
                           "rss_last_kb": b[0], "private_dirty_first_kb": a[1], "private_dirty_last_kb": b[1]}
                          for i, (a, b) in enumerate(zip(first, last))]}


def run_measure(python, kind, rec, idx, keys_path):
    return run_json([python, __file__, "--measure", kind, str(rec), str(idx), str(keys_path), str(READS)])


# --------------------------------------------------------------------------- report


def size_row(n, ours, mxnet):
    row = {"keys": n, "ours": ours, "mxnet": mxnet,
           "ours_bytes_per_key": ours["anon_kb"] * 1024 / n}
    if mxnet:
        row.update(mxnet_bytes_per_key=mxnet["anon_kb"] * 1024 / n,
                   memory_ratio=mxnet["anon_kb"] / max(ours["anon_kb"], 1),
                   open_speedup=mxnet["open_s"] / ours["open_s"])
    return row


def print_table(rows, loader):
    print("| keys | ours open s | MXNet open s | speed-up | ours B/key | MXNet B/key | memory ratio "
          "| ours peak B/key | ours reads/s | MXNet reads/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        o, m = r["ours"], r["mxnet"] or {}
        print(f"| {r['keys']:,} | {o['open_s']:.2f} | {m.get('open_s', float('nan')):.2f} "
              f"| {r.get('open_speedup', float('nan')):.1f}x | {r['ours_bytes_per_key']:.1f} "
              f"| {r.get('mxnet_bytes_per_key', float('nan')):.1f} | {r.get('memory_ratio', float('nan')):.1f}x "
              f"| {o['peak_kb'] * 1024 / r['keys']:.1f} | {o['reads_per_s']:,.0f} "
              f"| {m.get('reads_per_s', float('nan')):,.0f} |")
    if loader:
        print(f"\nDataLoader, {LOADER_WORKERS} workers, {loader['reads']:,} random reads at {loader['keys']:,} keys (KiB)")
        print("| process | RSS first | RSS last | private dirty first | private dirty last |")
        print("|---|---:|---:|---:|---:|")
        for p in loader["processes"]:
            print(f"| {p['role']} | {p['rss_first_kb']:,} | {p['rss_last_kb']:,} | {p['private_dirty_first_kb']:,} "
                  f"| {p['private_dirty_last_kb']:,} |")


def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        kind, rec, idx, keys_path, reads = args.measure
        print(json.dumps(measure_reader(kind, rec, idx, keys_path, int(reads))))
        return
    if args.measure_loader:
        print(json.dumps(measure_loader(*args.measure_loader)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    mxnet_python = find_mxnet_python(args.mxnet_python)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        rows = []
        for n in sizes:
            rec, idx, keys_path = build_sparse_shard(Path(tmp) / f"keys-{n}", n, args.real_records)
            ours = run_measure(sys.executable, "ours", rec, idx, keys_path)
            mxnet = run_measure(mxnet_python, "mxnet", rec, idx, keys_path) if mxnet_python else None
            rows.append(size_row(n, ours, mxnet))
        loader = None
        if args.loader_keys:
            directory = Path(tmp) / f"keys-{args.loader_keys}"
            _, _, keys_path = build_sparse_shard(directory, args.loader_keys, args.real_records)
            loader = run_json([sys.executable, __file__, "--measure-loader", str(directory), str(keys_path)])
    print_table(rows, loader)
    if not mxnet_python:
        print("\nMXNet not measured: no interpreter that imports mxnet (run `make oracle`)")
    print(json.dumps({"bench": "index", "cpu_count": os.cpu_count(), "rows": rows, "loader": loader}))


if __name__ == "__main__":
    main()
