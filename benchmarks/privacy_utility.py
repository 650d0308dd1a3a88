"""The privacy-utility table: one recogniser recipe trained on every released variant of split B.

    python benchmarks/privacy_utility.py benchmarks/configs/privacy_utility_synth.py

For each variant (original, FaceMAE full/paste/no-IRM, masked-only, blur, pixelate, noise) and
seed: release split B, train the protocol's recogniser on it, verify on held-out identities and
audit the release's leakage with the teacher. Rows run seed-major (every variant's first seed
before any repeat), results are rewritten after every row, and finished steps are reused, so an
interrupted run resumes where it stopped. Writes results.md, results.json, tradeoff.png and
samples.png to --out (default WORK_DIR/results) and prints a JSON line.

Two verdicts on FaceMAE's claim (at most half the error), each for both attackers: against the most
accurate baseline that leaks at least as much, and against each baseline method at FaceMAE's own
leakage, interpolated between its strengths (blur s3 / s6 ...; the originals are strength 0).
"""
import argparse
import json
import os
import shlex
import sys

from facemae_plugin.protocol.experiment import Experiment
from facemae_plugin.protocol.spec import check_variant, load_python_config
from facemae_plugin.core.files import write_json
from facemae_plugin.evaluation.samples import save_release_samples, spread_keys
from facemae_plugin.protocol.report import markdown_table, matched_ratio_table, plot_tradeoff
from facemae_plugin.protocol.verdicts import aggregate, matched_leakage_verdict, tradeoff_verdict

SAMPLE_FACES = 8
VERDICTS = {  # results.json key: (judge, leakage column)
    "verdict": (tradeoff_verdict, "instance_rank1"),
    "verdict_informed": (tradeoff_verdict, "informed_instance_rank1"),
    "verdict_matched": (matched_leakage_verdict, "instance_rank1"),
    "verdict_matched_informed": (matched_leakage_verdict, "informed_instance_rank1"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a file defining `variants = [dict(name, method, ..., seeds)]` and "
                                       "optionally `protocol = dict(...)`")
    parser.add_argument("--work-dir", default=os.path.join("work_dirs", "demo"),
                        help="steps live here; the default shares the finished steps of `facemae demo`")
    parser.add_argument("--out", default=None, help="results directory (default WORK_DIR/results)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variant names")
    parser.add_argument("--finished-only", action="store_true",
                        help="report only rows whose steps are all finished; train nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def planned_rows(variants, only=None):
    """``[(variant, seed)]`` seed-major: each variant's i-th seed before any variant's (i+1)-th."""
    rows, depth = [], max(len(v["seeds"]) for v in variants)
    for i in range(depth):
        rows += [(v, v["seeds"][i]) for v in variants if i < len(v["seeds"]) and (not only or v["name"] in only)]
    return rows


def load_benchmark_config(path):
    protocol, variants = load_python_config(path, ["protocol", "variants"])
    if not variants:
        raise SystemExit(f"{path}: defines no `variants`")
    for variant in variants:
        seeds = variant.get("seeds", [0])
        check_variant({k: v for k, v in variant.items() if k != "seeds"})
        variant["seeds"] = list(seeds)
    return protocol, variants


def write_results(experiment, rows, out_dir, command):
    summary = aggregate(rows)
    verdicts = {name: judge(summary, leak_key=key) for name, (judge, key) in VERDICTS.items()}
    table = markdown_table(summary)
    plot = plot_tradeoff(summary, os.path.join(out_dir, "tradeoff.png"))
    verdict_text = "\n\n".join(v["text"] for v in verdicts.values())
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(f"# Privacy vs utility\n\n`{command}`\n\n{table}\n\n{verdict_text}\n\n"
                "Every FaceMAE row's error over each baseline's error at the same leakage (claim: <= 0.50):\n\n"
                f"{matched_ratio_table(summary)}\n\n"
                "Accuracy: 10-fold verification on held-out identities (image + flip). Leakage: released image "
                "retrieves its own source (instance) or a same-identity original (identity) at rank 1, "
                "attacker = the teacher recogniser (trained on split A, never saw split B; also IRM's teacher). "
                "Informed attacker: the same recogniser recipe trained on the original split B (seed 0).\n")
    write_json(os.path.join(out_dir, "results.json"),
               {"command": command, "protocol": experiment.protocol, "rows": rows, "summary": summary,
                **verdicts, "plot": plot}, sort_keys=False, default=str)
    return summary, verdicts, table


def main(argv=None):
    args = parse_args(argv)
    protocol, variants = load_benchmark_config(args.config)
    experiment = Experiment(args.work_dir, protocol, progress=not args.quiet)
    out_dir = args.out or experiment.path("results")
    os.makedirs(out_dir, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:]))
    rows = []
    # Rows take the variant without its seed list.
    plan = [({k: v for k, v in variant.items() if k != "seeds"}, seed)
            for variant, seed in planned_rows(variants, args.only)]
    if args.finished_only:
        plan = [(v, seed) for v, seed in plan if experiment.row_finished(v, seed, informed_attacker=True)]
    if not plan:
        raise SystemExit("no rows to run" + (" are finished yet" if args.finished_only else ""))
    for n, (variant, seed) in enumerate(plan, 1):
        print(f"=== row {n}/{len(plan)}: {variant['name']} seed {seed}", flush=True)
        rows.append(experiment.row(variant, seed, informed_attacker=True))
        summary, verdicts, table = write_results(experiment, rows, out_dir, command)
    print(table)
    print("\n".join(v["text"] for v in verdicts.values()))
    first_rows = {}  # each variant's first planned seed, in plan order
    for variant, seed in plan:
        first_rows.setdefault(variant["name"], (variant, seed))
    sources = [("original", experiment.path("data", "release"))] + [
        (v["name"], experiment.release(v, seed)["released"])
        for v, seed in first_rows.values() if v["method"] != "original"]
    save_release_samples(os.path.join(out_dir, "samples.png"), sources,
                         spread_keys(experiment.path("data", "release"), SAMPLE_FACES))
    print(json.dumps({"benchmark": "privacy_utility", "rows": len(rows),
                      **{name: verdict["holds"] for name, verdict in verdicts.items()},
                      "summary": {e["variant"]: {k: e[k][0] for k in ("accuracy", "instance_rank1")}
                                  for e in summary}}))


if __name__ == "__main__":
    main()
