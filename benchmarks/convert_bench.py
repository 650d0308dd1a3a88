"""Benchmark `facemae convert`: is the streaming pipeline as fast as its slowest stage?

Builds (once, cached in --work-dir) a synthetic layout-A shard of --images faces and a quarter-size
one, randomly initialised FaceMAE tiny/small checkpoints (speed does not depend on training), then
measures, each conversion in a fresh process:

  copy      decode + re-encode, no model (Identity privatizer), 1 worker and all cores
  baseline  blur / pixelate / noise / masked, all cores
  facemae   tiny and small, output full and paste, all cores (tiny full also with 1 worker)
  model     the privatizer alone on in-memory batches (images/s), no decoding or encoding
  memory    peak RSS of the converter and of its largest worker on the full and the quarter shard

Pipeline efficiency = converter images/s / min(privatizer-only images/s, copy-only images/s) with
the same worker count; the target is >= 0.85. That bound assumes the stages have their own cores
(model on a GPU, or spare CPU cores); when model threads and codec workers share the same few
cores their times add up, so the table also shows converter images/s * (1/privatizer + 1/copy),
the efficiency against that shared-core bound. Prints a Markdown table and, last, one JSON line
{"bench": "convert", ...}.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IMAGES_PER_IDENTITY = 20
TARGET_EFFICIENCY = 0.85
SHARD_VERSION = "v1"  # bump when the shard recipe changes, so stale caches are rebuilt


# --------------------------------------------------------------------------- setup (parent)


def build_shard(directory, images):
    from facemae_plugin.data.synthetic import make_synthetic_dataset

    marker = directory / f".complete-{SHARD_VERSION}"
    if marker.exists():
        return directory
    identities = max(2, images // IMAGES_PER_IDENTITY)
    make_synthetic_dataset(directory, identities=identities, images_per_identity=IMAGES_PER_IDENTITY,
                           holdout_identities=2, num_pairs=2, progress=True)
    marker.touch()
    return directory


def build_checkpoint(path, preset):
    import torch

    from facemae_plugin.models.mae import create_facemae

    if not path.exists():
        torch.manual_seed(0)
        create_facemae(preset).save_checkpoint(path)
    return path


# --------------------------------------------------------------------------- one measurement (child)


def make(spec):
    from facemae_plugin.privatizers.baselines import Identity
    from facemae_plugin.privatizers.methods import make_privatizer

    if spec["method"] == "copy":
        return Identity()
    params = dict(spec.get("params", {}))
    if spec["method"] == "facemae":
        params["device"] = spec.get("device", "cpu")
        params["autocast"] = spec.get("autocast", False)
    return make_privatizer(spec["method"], **params)


def model_only(privatizer, batch_size, images):
    """Images/s of the privatizer alone on in-memory normalised batches (after one warm-up batch)."""
    import torch

    batch = torch.rand(batch_size, 3, 112, 112) * 2 - 1
    keys = list(range(1, batch_size + 1))
    privatizer.variants(batch, keys)
    done, started = 0, time.perf_counter()
    while done < images:
        privatizer.variants(batch, keys)
        done += batch_size
    return done / (time.perf_counter() - started)


class WorkerMemory:
    """Samples the RSS of this process's descendants (the decode/encode pool) every 0.1 s.

    ``RUSAGE_CHILDREN`` would report the RSS a child had at fork time, before it exec'd, so the
    pool is watched through /proc instead.
    """

    def __init__(self):
        self.peak_worker_mb = 0.0
        self.peak_total_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        me = os.getpid()
        while not self._stop.wait(0.1):
            sizes = [rss for pid, rss in _processes() if _descends_from(pid, me)]
            if sizes:
                self.peak_worker_mb = max(self.peak_worker_mb, max(sizes) / 1024)
                self.peak_total_mb = max(self.peak_total_mb, sum(sizes) / 1024)

    def stop(self):
        self._stop.set()
        self._thread.join()


def _status(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}


def _processes():
    for name in os.listdir("/proc"):
        if name.isdigit():
            rss = _status(name).get("VmRSS")
            if rss:
                yield int(name), int(rss.split()[0])


def _descends_from(pid, ancestor):
    while pid > 1:
        parent = int(_status(pid).get("PPid", "0").strip() or 0)
        if parent == ancestor:
            return True
        pid = parent
    return False


def run_child(spec):
    from facemae_plugin.convert import ConvertSettings, convert

    privatizer = make(spec)
    if spec.get("model_only"):
        return {"model_images_per_s": model_only(privatizer, spec["batch_size"], spec["model_images"])}
    memory = WorkerMemory()
    settings = ConvertSettings(batch_size=spec["batch_size"], workers=spec["workers"])
    result = convert(spec["shard"], spec["out"], privatizer, settings, overwrite=True, progress=False)
    memory.stop()
    return {
        "images_per_s": result["images_per_s"],
        "seconds": result["seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": memory.peak_worker_mb,
        "pool_peak_rss_mb": memory.peak_total_mb,
    }


def measure(spec):
    """Run one spec in a fresh interpreter; returns its JSON result."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {spec}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the table


def specs(args, checkpoints):
    all_cores = len(os.sched_getaffinity(0))
    rows = [("copy-only", "copy", {}, 1), ("copy-only", "copy", {}, all_cores)]
    rows += [(f"{m} {p}", m, {k: v}, all_cores) for m, p, k, v in (
        ("blur", "sigma=3", "sigma", 3.0), ("pixelate", "block=8", "block_size", 8),
        ("noise", "std=25", "std", 25.0), ("masked", "ratio=0.75", "mask_ratio", 0.75)) if m in args.baselines]
    for preset in args.models:
        for output in ("full", "paste"):
            params = {"checkpoint": str(checkpoints[preset]), "output": output}
            rows.append((f"facemae {preset} {output}", "facemae", params, all_cores))
    if args.models:
        first = args.models[0]
        rows.append((f"facemae {first} full", "facemae",
                     {"checkpoint": str(checkpoints[first]), "output": "full"}, 1))
    return rows


def _fmt(value, digits):
    return "" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="images in the shard (default 20000)")
    parser.add_argument("--work-dir", default=os.path.join(REPO_ROOT, "work_dirs", "convert_bench"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", default="tiny,small", help="FaceMAE presets to time (default tiny,small)")
    parser.add_argument("--device", default="cpu", help="where FaceMAE runs: cpu or cuda (default cpu)")
    parser.add_argument("--autocast", action="store_true", help="FaceMAE in bf16 (CPU) / fp16 (CUDA) autocast")
    parser.add_argument("--baselines", default="blur,pixelate,noise,masked",
                        help="comma list of baseline methods to time (default all; '' for none)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    args.models = [m for m in args.models.split(",") if m]
    args.baselines = [m for m in args.baselines.split(",") if m]

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    full = build_shard(work / f"shard-{args.images}", args.images)
    quarter = build_shard(work / f"shard-{args.images // 4}", args.images // 4)
    checkpoints = {m: build_checkpoint(work / f"facemae-{m}.pt", m) for m in args.models}
    out = work / "out"

    table, results = [], {}
    copy_rate = {}
    for name, method, params, workers in specs(args, checkpoints):
        spec = {"method": method, "params": params, "batch_size": args.batch_size, "workers": workers,
                "shard": str(full), "out": str(out), "device": args.device, "autocast": args.autocast}
        run = measure(spec)
        alone = efficiency = shared = None
        if method == "copy":
            copy_rate[workers] = run["images_per_s"]
        else:
            alone = measure({**spec, "model_only": True, "model_images": min(args.images, 1024)})
            alone = alone["model_images_per_s"]
            copy = copy_rate[workers]
            efficiency = run["images_per_s"] / min(alone, copy)  # vs the slowest stage
            # when model and codec share the same cores, their times add up: the best possible
            shared = run["images_per_s"] * (1.0 / alone + 1.0 / copy)
        label = f"{name} (w={workers})"
        results[label] = {**run, "privatizer_only_images_per_s": alone, "efficiency": efficiency,
                          "efficiency_shared_cores": shared}
        table.append((label, run["images_per_s"], alone, efficiency, shared, run["peak_rss_mb"],
                      run["worker_peak_rss_mb"]))
        print(f"  {label}: {run['images_per_s']:.1f} img/s", file=sys.stderr, flush=True)

    memory = {}
    for size, shard in (("quarter", quarter), ("full", full)):
        run = measure({"method": "copy", "params": {}, "batch_size": args.batch_size,
                       "workers": len(os.sched_getaffinity(0)), "shard": str(shard), "out": str(out)})
        memory[size] = {"images": args.images // 4 if size == "quarter" else args.images,
                        "peak_rss_mb": run["peak_rss_mb"], "worker_peak_rss_mb": run["worker_peak_rss_mb"],
                        "pool_peak_rss_mb": run["pool_peak_rss_mb"]}

    print(f"\n### facemae convert, {args.images} images, batch {args.batch_size}, "
          f"{len(os.sched_getaffinity(0))} cores, FaceMAE on {args.device}{' with autocast' if args.autocast else ''}\n")
    print("| run | converter img/s | privatizer-only img/s | efficiency (vs slowest) | efficiency "
          "(shared cores) | peak RSS MB | worker peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, rate, alone, efficiency, shared, rss, worker_rss in table:
        print(f"| {label} | {rate:.1f} | {_fmt(alone, 1)} | {_fmt(efficiency, 2)} | {_fmt(shared, 2)} | "
              f"{rss:.0f} | {worker_rss:.0f} |")
    print("\n| memory (copy-only) | images | peak RSS MB | worker peak RSS MB | pool total RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for size, m in memory.items():
        print(f"| {size} | {m['images']} | {m['peak_rss_mb']:.0f} | {m['worker_peak_rss_mb']:.0f} | "
              f"{m['pool_peak_rss_mb']:.0f} |")
    efficiencies = [r["efficiency"] for r in results.values() if r["efficiency"] is not None]
    summary = {
        "bench": "convert", "images": args.images, "batch_size": args.batch_size, "device": args.device,
        "autocast": args.autocast,
        "cores": len(os.sched_getaffinity(0)), "runs": results, "memory": memory,
        "min_efficiency": min(efficiencies) if efficiencies else None, "target_efficiency": TARGET_EFFICIENCY,
        "rss_growth_mb": memory["full"]["peak_rss_mb"] - memory["quarter"]["peak_rss_mb"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
