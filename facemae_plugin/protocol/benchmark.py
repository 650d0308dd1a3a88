"""``facemae benchmark CONFIG``: the privacy-utility table, one recogniser recipe trained on every released variant.

For each variant (original, FaceMAE full/paste/no-IRM, masked-only, blur, pixelate, noise) and
seed: release split B, train the protocol's recogniser on it, verify it on every verification set
and audit the release's leakage with the pixel attacker, the teacher, the informed attacker and the
variant's adaptive attacker (trained on split A beside its release by the same method). Rows run
seed-major (every variant's first seed before any repeat), results are rewritten after every row,
and finished steps are reused, so an interrupted run resumes where it stopped. Writes results.md,
results.json and tradeoff.png to the results folder, and the sample sheet (originals beside their
releases) to ``RESULTS.private`` beside it.

Two verdicts on FaceMAE's claim (at most half the error), each for both threats at their worst case
over the attackers (pixels, teacher, informed, adaptive): against the most accurate baseline that leaks at
least as much, and against each baseline method at FaceMAE's own leakage, interpolated between its
strengths (blur s3 / s6 ...; the originals are strength 0).
"""
import os

from ..core.files import make_private_dir, private_path, write_json
from ..evaluation.samples import save_release_samples, spread_keys
from .experiment import Experiment
from .report import markdown_table, matched_ratio_table, plot_tradeoff
from .spec import ProtocolError, check_variant, load_python_config
from .store import time_by_kind, where_the_time_went
from .verdicts import aggregate, matched_leakage_verdict, target_lines, tradeoff_verdict

SAMPLE_FACES = 8
# What each attacker a benchmark can run is, for results.md; pixels and the teacher always run.
ATTACKER_TEXT = {
    "pixels": "the pixel attacker (28x28 grey pixels, no model)",
    "verbatim": "the verbatim attacker (full-resolution 4x4 cells of grey pixels shared with a photo, no model)",
    "teacher": "the teacher recogniser (trained on split A, never saw split B; also IRM's teacher)",
    "informed": "the informed attacker (the same recogniser recipe trained on the original split B, seed 0)",
    "adaptive": "the adaptive attacker (the same recipe trained on split A beside its release by the row's "
                "method, with a seed of its own)",
}
ALWAYS_RUN = ("pixels", "teacher")
FREE = ("verbatim",)  # runs whether named or not: it needs no model and no training
VERDICTS = {  # results.json key: (judge, leakage column); a method is judged by its worst case
    "verdict": (tradeoff_verdict, "worst_instance_rank1"),
    "verdict_reid": (tradeoff_verdict, "worst_reid_rank1"),
    "verdict_matched": (matched_leakage_verdict, "worst_instance_rank1"),
    "verdict_matched_reid": (matched_leakage_verdict, "worst_reid_rank1"),
}


def planned_rows(variants, only=None):
    """``[(variant, seed)]`` seed-major: each variant's i-th seed before any variant's (i+1)-th."""
    rows, depth = [], max(len(v["seeds"]) for v in variants)
    for i in range(depth):
        rows += [(v, v["seeds"][i]) for v in variants if i < len(v["seeds"]) and (not only or v["name"] in only)]
    return rows


def load_benchmark_config(path):
    """``(protocol, variants, attackers)`` of a benchmark file; every variant checked, its ``seeds`` a
    list. ``attackers`` (default: all of ``ATTACKER_TEXT``) may leave out the informed or adaptive
    attacker, each one more training (per variant, for the adaptive one); the results then say so."""
    protocol, variants, attackers = load_python_config(path, ["protocol", "variants", "attackers"])
    if not variants:
        raise ProtocolError(f"{path}: defines no `variants`")
    for variant in variants:
        seeds = variant.get("seeds", [0])
        check_variant({k: v for k, v in variant.items() if k != "seeds"})
        variant["seeds"] = list(seeds)
    return protocol, variants, check_attackers(path, attackers)


def check_attackers(path, attackers):
    """The attackers a benchmark file names, in ``ATTACKER_TEXT``'s order (None: all of them)."""
    if attackers is None:
        return tuple(ATTACKER_TEXT)
    if isinstance(attackers, str) or not all(isinstance(a, str) for a in attackers):
        raise ProtocolError(f"{path}: attackers must be a list of names, got {attackers!r:.60}")
    unknown = sorted(set(attackers) - set(ATTACKER_TEXT))
    if unknown:
        raise ProtocolError(f"{path}: unknown attacker(s) {', '.join(unknown)}; expected some of "
                            f"{', '.join(ATTACKER_TEXT)}")
    missing = [a for a in ALWAYS_RUN if a not in attackers]
    if missing:
        raise ProtocolError(f"{path}: attackers must include {' and '.join(missing)} (every benchmark runs "
                            f"{' and '.join(ALWAYS_RUN)})")
    return tuple(a for a in ATTACKER_TEXT if a in attackers or a in FREE)


def attackers_text(attackers):
    """The sentence of results.md naming the attackers run, and those not run."""
    run = ", ".join(ATTACKER_TEXT[a] for a in attackers)
    skipped = [a for a in ATTACKER_TEXT if a not in attackers]
    return (f"Worst case: the largest over the attackers run: {run}."
            + (f" Not run (the config's `attackers`): {', '.join(skipped)}; the worst case may be "
               f"higher." if skipped else "")
            + " Not run here: reapply (each row's seed is the protocol's own, so re-applying the method with it "
              "gives the release's very bytes; `facemae release` runs it against a secret seed).")


def write_results(experiment, rows, out_dir, command, attackers=tuple(ATTACKER_TEXT)):
    """results.md, results.json and tradeoff.png for the rows so far; returns (summary, verdicts, table)."""
    summary = aggregate(rows)
    verdicts = {name: judge(summary, leak_key=key) for name, (judge, key) in VERDICTS.items()}
    table = markdown_table(summary)
    plot = plot_tradeoff(summary, os.path.join(out_dir, "tradeoff.png"))
    verdict_text = "\n\n".join(v["text"] for v in verdicts.values())
    targets = target_lines(rows)
    if targets:
        verdict_text += ("\n\nCalibrated variants (each setting chosen on split B against the teacher and the "
                         "model-free attackers, then the whole release audited by every attacker run):\n\n"
                         + "\n".join(targets))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(f"# Privacy vs utility\n\n`{command}`\n\n{table}\n\n{verdict_text}\n\n"
                "Every FaceMAE row's error over each baseline's error at the same leakage (claim: <= 0.50):\n\n"
                f"{matched_ratio_table(summary)}\n\n"
                "Accuracy: 10-fold verification (image + flip), the mean over the verification sets where there "
                "are several. Leakage: a released image retrieves its own source (instance) or, its source held "
                f"out, another original of its person (re-identification) at rank 1. {attackers_text(attackers)} "
                "Look-alikes of split A: released images whose nearest split-A identity is above the teacher's "
                "FAR=1e-3 threshold, less the same fraction of the original images.\n")
    write_json(os.path.join(out_dir, "results.json"),
               {"command": command, "protocol": experiment.protocol, "attackers": list(attackers), "rows": rows,
                "summary": summary,
                **verdicts, "plot": plot}, sort_keys=False, default=str)
    return summary, verdicts, table


def run_benchmark(config, work_dir, out_dir=None, only=None, finished_only=False, progress=True, command=""):
    """Every planned row of ``config`` in ``work_dir``; returns the results (also in ``out_dir``)."""
    protocol, variants, attackers = load_benchmark_config(config)
    extra = {"informed_attacker": "informed" in attackers, "adaptive_attacker": "adaptive" in attackers}
    experiment = Experiment(work_dir, protocol, progress=progress)
    out_dir = out_dir or experiment.path("results")
    # Rows take the variant without its seed list.
    plan = [({k: v for k, v in variant.items() if k != "seeds"}, seed)
            for variant, seed in planned_rows(variants, only)]
    if finished_only:
        plan = [(v, seed) for v, seed in plan
                if experiment.row_finished(v, seed, **extra)]
    if not plan:
        raise ProtocolError(f"{config}: no rows to run" + (" are finished yet" if finished_only else "")
                            + (f" (--only {' '.join(only)})" if only else ""))
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for n, (variant, seed) in enumerate(plan, 1):
        print(f"=== row {n}/{len(plan)}: {variant['name']} seed {seed}", flush=True)
        rows.append(experiment.row(variant, seed, **extra))
        summary, verdicts, table = write_results(experiment, rows, out_dir, command, attackers)
    first_rows = {}  # each variant's first planned seed, in plan order
    for variant, seed in plan:
        first_rows.setdefault(variant["name"], (variant, seed))
    original = experiment.splits["release"]
    sources = [("original", original)] + [(v["name"], experiment.release(v, seed)["released"])
                                          for v, seed in first_rows.values() if v["method"] != "original"]
    # the sheet shows original faces: beside the results a user may share, in a folder only they open
    samples = save_release_samples(os.path.join(make_private_dir(private_path(out_dir)), "samples.png"), sources,
                                   spread_keys(original, SAMPLE_FACES))
    print(where_the_time_went(experiment))
    return {"rows": rows, "summary": summary, "verdicts": verdicts, "table": table, "out_dir": out_dir,
            "samples_png": samples, "time_by_kind": time_by_kind(experiment)}
