"""Does the synthetic benchmark leave room for FaceMAE's claim? Originals vs light baselines.

    python benchmarks/synth_headroom.py --detail 0 0.5 1 --epochs 3 10

The claim is "at most half the verification error of the best baseline". No release is expected to
beat the untouched originals, so the claim can only be met where the recogniser trained on the
originals itself errs less than half as often as one trained on a light baseline (pixelate 8 by
default). For each synthetic `detail` (how much identity lives in fine features, see
facemae_plugin/data/faces.py) and recogniser budget (epochs), this trains the protocol's recogniser on
split B as it is and on each baseline's release, verifies on the held-out identities, and reports
the originals' error ratio: under 0.5 means headroom. No teacher, FaceMAE or audit is needed.

Each (detail, epochs) cell is a protocol work directory WORK_DIR/d<detail>-e<epochs>; finished
steps are reused, so an interrupted run resumes. Prints a Markdown table and a JSON line.
"""
import argparse
import json
import os
import sys

from facemae_plugin.protocol.experiment import Experiment

BASELINES = {"pixelate 8": dict(name="pixelate 8", method="pixelate", block_size=8),
             "blur s3": dict(name="blur s3", method="blur", sigma=3.0)}
ORIGINAL = dict(name="original", method="original")
CLAIM_RATIO = 0.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detail", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                        help="synthetic detail levels, 0..1 (default 0 0.5 1)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[3],
                        help="recogniser epochs; 3 is the privacy-utility protocol's budget (default 3)")
    parser.add_argument("--baselines", nargs="+", default=["pixelate 8"], choices=sorted(BASELINES),
                        help="releases to compare the originals with (default: pixelate 8)")
    parser.add_argument("--work-dir", default=os.path.join("work_dirs", "headroom"))
    parser.add_argument("--no-mixed-precision", action="store_true",
                        help="train in fp32: faster on CPUs without native bf16 (no avx512_bf16)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def cell_protocol(detail, epochs, mixed_precision, base=None):
    """`base` (the demo's protocol when None) with this cell's detail, recogniser epochs and precision."""
    base = base or {}
    return {**base, "data": {**base.get("data", {}), "detail": detail},
            "recogniser": {**base.get("recogniser", {}), "num_epoch": epochs}, "mixed_precision": mixed_precision}


def accuracy(experiment, variant):
    """Held-out verification accuracy (image + flip) of the recogniser trained on `variant`'s release."""
    return experiment.verify(variant, 0)["accuracy_flip"]


def measure_cell(work_dir, detail, epochs, baselines, mixed_precision=True, progress=True, base=None):
    experiment = Experiment(os.path.join(work_dir, f"d{detail:g}-e{epochs}"),
                            cell_protocol(detail, epochs, mixed_precision, base), progress=progress)
    row = {"detail": detail, "epochs": epochs, "original": accuracy(experiment, ORIGINAL)}
    for name in baselines:
        row[name] = accuracy(experiment, BASELINES[name])
    best = max(row[name] for name in baselines)
    row["originals_error_ratio"] = (1 - row["original"]) / max(1 - best, 1e-9)
    return row


def markdown(rows, baselines):
    head = ["detail", "recogniser epochs", "original acc. %", *(f"{b} acc. %" for b in baselines),
            "originals' error ratio", f"headroom (ratio < {CLAIM_RATIO})"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in rows:
        cells = [f"{r['detail']:g}", str(r["epochs"]), f"{100 * r['original']:.1f}",
                 *(f"{100 * r[b]:.1f}" for b in baselines), f"{r['originals_error_ratio']:.2f}",
                 "yes" if r["originals_error_ratio"] < CLAIM_RATIO else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for epochs in args.epochs:
        for detail in args.detail:
            rows.append(measure_cell(args.work_dir, detail, epochs, args.baselines, not args.no_mixed_precision,
                                     not args.quiet))
            print(json.dumps({"cell": rows[-1]}), file=sys.stderr, flush=True)
    print(markdown(rows, args.baselines))
    print(json.dumps({"bench": "synth_headroom", "claim_ratio": CLAIM_RATIO, "rows": rows}))


if __name__ == "__main__":
    main()
