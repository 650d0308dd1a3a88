"""``facemae demo``: the main job on the embedded synthetic default, stage by stage.

Each stage writes its outputs under ``WORK_DIR`` and a ``<stage>.done.json``
marker last; a re-run skips stages whose marker exists.
"""
import json
import os

from .inspection import format_inspection, inspect_path
from .synthdata import HOLDOUT_BIN, make_synthetic_dataset

DEMO_DATASET = dict(identities=200, images_per_identity=20, holdout_identities=50, num_pairs=1000, seed=0)


def run_stage(work_dir, name, build):
    """Run ``build()`` unless ``<name>.done.json`` exists; return its (saved) result."""
    marker = os.path.join(work_dir, f"{name}.done.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            print(f"[{name}] reusing finished stage ({marker})")
            return json.load(f)
    print(f"[{name}] running")
    result = build()
    with open(marker + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(marker + ".tmp", marker)
    return result


def run_demo(work_dir, progress=True):
    os.makedirs(work_dir, exist_ok=True)
    data_dir = os.path.join(work_dir, "synth")
    run_stage(work_dir, "synth", lambda: make_synthetic_dataset(data_dir, progress=progress, **DEMO_DATASET))
    report = {}
    for name, path in (("shard", data_dir), ("holdout", os.path.join(data_dir, HOLDOUT_BIN))):
        info = inspect_path(path, progress=progress)
        print(format_inspection(info))
        report[name] = info
    with open(os.path.join(work_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
