"""``facemae demo``: the whole FaceMAE pipeline on the embedded synthetic default, beside two references.

synthesise -> teacher on split A -> FaceMAE tiny + IRM on split A -> release split B (unseen
identities) through FaceMAE, and through blur as a baseline -> the same recogniser recipe trained
on the originals, on blur's release and on FaceMAE's -> verify each on held-out identities -> audit
each release against the original split B -> the FaceMAE release published with its card
(``publish.release``). Every artefact lands in ``WORK_DIR``; a re-run reuses finished steps (see
``experiment.Experiment``).
"""
import json
import os
import time

from ..core.files import write_json
from ..evaluation.samples import save_release_samples, spread_keys
from .experiment import Experiment
from .report import markdown_table, plot_tradeoff
from .spec import ORIGINAL, load_python_config
from .store import time_by_kind, where_the_time_went
from .verdicts import aggregate

# Named as in benchmarks/configs/privacy_utility_synth.py, so the benchmark reuses the demo's steps.
FACEMAE_FULL = {"name": "FaceMAE full 0.75", "method": "facemae", "output": "full", "mask_ratio": 0.75, "irm": True}
BLUR = {"name": "blur s3", "method": "blur", "sigma": 3.0}
MASKED = {"name": "masked 0.75", "method": "masked", "mask_ratio": 0.75}
VARIANTS = (ORIGINAL, BLUR, FACEMAE_FULL)  # the untouched data, a baseline, FaceMAE: one recogniser budget
SAMPLE_FACES = 8
RELEASE_DIR = "release"  # the FaceMAE release as a user publishes it, card and all


def run_demo(work_dir, protocol=None, progress=True, command="facemae demo"):
    """Run the pipeline; returns the report (also ``WORK_DIR/report.json``)."""
    started = time.perf_counter()
    experiment = Experiment(work_dir, protocol, progress)
    rows = [experiment.row(variant, seed=0) for variant in VARIANTS]
    original = experiment.splits["release"]
    released = experiment.release(FACEMAE_FULL, 0)["released"]
    masked = experiment.release(MASKED, 0)["released"]
    blurred = experiment.release(BLUR, 0)["released"]
    samples = save_release_samples(
        experiment.path("samples.private.png"),  # original faces: the name says where it may go
        [("original", original), ("blur s3", blurred), ("FaceMAE input\n(masked)", masked),
         ("FaceMAE\nreleased", released)],
        spread_keys(original, SAMPLE_FACES))
    summary = aggregate(rows)
    tradeoff = plot_tradeoff(summary, experiment.path("tradeoff.png"), title="demo: utility vs leakage")
    card = publish_facemae(experiment, command)
    report = {"work_dir": experiment.work_dir, "protocol": experiment.protocol, "rows": rows,
              "steps": step_seconds(experiment), "seconds": round(time.perf_counter() - started, 1),
              "time_by_kind": time_by_kind(experiment),
              "samples_png": samples, "tradeoff_png": tradeoff,
              "roc_png": rows[-1]["roc_png"], "audit": rows[-1]["audit"],
              "card": experiment.path(RELEASE_DIR, "RELEASE.md"), "card_worst_case": card["worst_case"]}
    write_json(experiment.path("report.json"), report, sort_keys=False, default=str)
    print(markdown_table(summary))
    print("Higher accuracy and lower leakage are better; the originals leak every source by definition. "
          "blur s3 is one baseline at one strength (facemae benchmark compares them all).")
    print(f"ran {report['seconds'] / 60:.1f} min ({len(experiment.reused)} finished steps reused); samples {samples}; "
          f"trade-off {tradeoff}; card {report['card']}; report {experiment.path('report.json')}")
    print(where_the_time_went(experiment))
    return report


def publish_facemae(experiment, command):
    """The demo's FaceMAE release published as ``facemae release`` would: with a secret seed (kept in
    ``WORK_DIR/release.secret.json``), audited by every attacker (the teacher, and the adaptive attacker
    trained on split A), with its card, as the step ``publish``."""
    return experiment.run_step("publish", lambda: _publish(experiment, command))


def _publish(experiment, command):
    from ..convert.secret import publisher_seed
    from ..publish.release import Attacker, ReleaseOptions, release_dataset

    card_json = experiment.path(RELEASE_DIR, "RELEASE.json")
    if os.path.isfile(card_json):  # published by a run from before publishing was a step
        with open(card_json) as f:
            return json.load(f)
    p = experiment.protocol
    splits = experiment.splits
    # The protocol's releases use its own seeds; a publisher keeps theirs, so this one converts again
    # with a secret. The protocol's audits embedded the same originals with the same teacher: the cache
    # serves them.
    secret, _ = publisher_seed(experiment.path(RELEASE_DIR))
    options = ReleaseOptions(convert=experiment.convert_settings, val_bins=tuple(splits["val"].values()),
                             training_set=splits["train"], attacker_set=splits.get("attacker"),
                             device=str(experiment.device),
                             progress=experiment.progress, command=command)
    return release_dataset(
        splits["release"], experiment.path(RELEASE_DIR),
        experiment.privatizer(FACEMAE_FULL, 0).with_seed(secret, public=False),
        [Attacker(experiment.teacher()["model"], p.teacher.network)], options,
        embedding_cache=experiment.embedding_cache)


def step_seconds(experiment):
    """Seconds each step this run used took when it ran (a reused step keeps its first timing; a step
    that needed another first, a release its model, counts that one's time too)."""
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
