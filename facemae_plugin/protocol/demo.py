"""``facemae demo``: the whole FaceMAE pipeline on the embedded synthetic default.

synthesise -> teacher on split A -> FaceMAE tiny + IRM on split A -> release split B
(unseen identities) -> recogniser trained on the release -> verify on held-out identities
-> audit the release against the original split B. Every artefact lands in ``WORK_DIR``;
a re-run reuses finished steps (see ``experiment.Experiment``).
"""
import json

from ..core.files import write_json
from .experiment import Experiment
from ..evaluation.samples import save_release_samples, spread_keys
from .report import markdown_table
from .spec import ORIGINAL, load_python_config
from .verdicts import aggregate

# Named as in benchmarks/configs/privacy_utility_synth.py, so the benchmark reuses the demo's steps.
FACEMAE_FULL = {"name": "FaceMAE full 0.75", "method": "facemae", "output": "full", "mask_ratio": 0.75, "irm": True}
SAMPLE_FACES = 8


def run_demo(work_dir, protocol=None, progress=True, compare_original=False):
    """Run the pipeline; returns the report (also ``WORK_DIR/report.json``)."""
    experiment = Experiment(work_dir, protocol, progress)
    variants = [FACEMAE_FULL] + ([ORIGINAL] if compare_original else [])
    rows = [experiment.row(variant, seed=0) for variant in variants]
    released = experiment.release(FACEMAE_FULL, 0)["released"]
    masked = experiment.release({"name": "masked 0.75", "method": "masked", "mask_ratio": 0.75}, 0)["released"]
    samples = save_release_samples(
        experiment.path("samples.png"),
        [("original", experiment.splits["release"]), ("FaceMAE input\n(masked)", masked),
         ("FaceMAE\nreleased", released)],
        spread_keys(experiment.splits["release"], SAMPLE_FACES))
    report = {"work_dir": experiment.work_dir, "protocol": experiment.protocol, "rows": rows,
              "steps": step_seconds(experiment), "samples_png": samples,
              "roc_png": rows[0]["roc_png"], "audit": rows[0]["audit"]}
    write_json(experiment.path("report.json"), report, sort_keys=False, default=str)
    print(markdown_table(aggregate(rows)))
    print(f"step time: {sum(report['steps'].values()) / 60:.1f} min; samples {samples}; "
          f"ROC {report['roc_png']}; report {experiment.path('report.json')}")
    return report


def step_seconds(experiment):
    """Seconds each step this run used took when it ran (a reused step keeps its first timing)."""
    seconds = {}
    for name in sorted(experiment.used_steps):
        with open(experiment.step_marker(name)) as f:
            seconds[name] = json.load(f).get("seconds", 0.0)
    return seconds


def load_protocol_file(path):
    """The ``protocol`` dict of a config file (``None`` -> the embedded default)."""
    if path is None:
        return None
    (protocol,) = load_python_config(path, ["protocol"])
    return protocol
