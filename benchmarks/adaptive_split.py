"""What the adaptive attacker finds when it learns the method on people the reconstructor saw (split A)
or did not (split C), and how that changes with its training length.

    python benchmarks/adaptive_split.py --work-dir work_dirs/adaptive_split [--epochs 1 3 6]

On the demo's protocol (or --protocol CONFIG.py, whose data must draw a split C): trains the teacher
and FaceMAE on A (steps reused from an earlier run in the same work dir), then the adaptive attacker
beside FaceMAE full 0.75 on C for each of --epochs (the recipe's own length among them) and on A for
the recipe's length, and audits each against the FaceMAE release of split B. Every figure is rank-1
over split B's 1,500 sources; the teacher and the model-free attackers are printed beside them.
Prints a Markdown table and, last, one JSON line: {"bench": "adaptive_split", ...}.
"""
import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from facemae_plugin.evaluation.audit import AuditOptions, audit  # noqa: E402
from facemae_plugin.evaluation.embed import load_embedder  # noqa: E402
from facemae_plugin.protocol.demo import FACEMAE_FULL  # noqa: E402
from facemae_plugin.protocol.experiment import Experiment  # noqa: E402
from facemae_plugin.protocol.spec import load_python_config  # noqa: E402

FIGURES = ("instance_rank1", "reid_rank1", "identity_rank1")


def audit_adaptive(experiment, trained, name):
    """The release of FaceMAE full 0.75 audited by one adaptive attacker's model."""
    released = experiment.release(FACEMAE_FULL, 0)["released"]
    network = experiment.protocol.recogniser.network
    embedder = load_embedder(trained["model"], network, device=experiment.device)
    report = audit(experiment.splits["release"], released, embedder,
                   AuditOptions(device=experiment.device, plots=False, progress=False),
                   out_dir=experiment.path("audits", f"bench-{name}"), model=trained["model"], attacker=name,
                   embedding_cache=experiment.embedding_cache)
    return {key: report[key] for key in FIGURES}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--protocol", default=None, help="a protocol config (default: the demo's)")
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help="training lengths of the attacker on C (default: 1, the recipe's, twice the recipe's)")
    args = parser.parse_args()
    protocol = load_python_config(args.protocol, ["protocol"])[0] if args.protocol else None
    experiment = Experiment(args.work_dir, protocol, progress=True)
    if experiment.adaptive_split != "attacker":
        sys.exit("the protocol draws no split C (data.attacker_identities is 0): nothing to compare")
    recipe = int(experiment.protocol.recogniser.num_epoch)
    epochs = sorted(set(args.epochs or (1, recipe, 2 * recipe)))
    rows = [{"attacker": name, **{k: experiment.audit(FACEMAE_FULL, 0, attacker=name)[k] for k in FIGURES}}
            for name in ("pixels", "verbatim", "teacher")]
    seen = experiment.adaptive(FACEMAE_FULL, 0, split="train")
    rows.append({"attacker": f"adaptive on A (seen by FaceMAE), {recipe} epochs", "split": "train",
                 "epochs": recipe, **audit_adaptive(experiment, seen, "adaptive-seen")})
    for e in epochs:
        trained = experiment.adaptive(FACEMAE_FULL, 0, num_epoch=None if e == recipe else e)
        rows.append({"attacker": f"adaptive on C (unseen), {e} epochs", "split": "attacker", "epochs": e,
                     **audit_adaptive(experiment, trained, f"adaptive-unseen-e{e}")})
    print(f"FaceMAE full 0.75 release of split B ({experiment.work_dir}), {os.cpu_count()} CPUs\n")
    print("| attacker | instance rank-1 % | re-identification rank-1 % | identity rank-1 % |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['attacker']} | " + " | ".join(f"{r[k] * 100:.2f}" for k in FIGURES) + " |")
    print(json.dumps({"bench": "adaptive_split", "work_dir": str(experiment.work_dir), "rows": rows}))


if __name__ == "__main__":
    main()
