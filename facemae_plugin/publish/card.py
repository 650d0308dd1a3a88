"""The dataset card of a release: ``RELEASE.json`` (the record) and ``RELEASE.md`` (the same, for people).

The card says what was released (the source shard by path, size and ``.idx`` hash; the method
and every parameter; the reconstructor and the data it was trained on), who tried to recognise
the released faces (each attacker by hash and network, with its verification accuracy where
``.bin`` sets were given) and how often they succeeded: every figure is the one in that
attacker's ``audit.json``. Paths inside the release are relative to it.
"""
import os

from .. import __version__
from ..core.files import atomic_file, json_text

CARD_JSON = "RELEASE.json"
CARD_MD = "RELEASE.md"
CARD_VERSION = 1
LEAKAGE_KEYS = ("instance_rank1", "instance_rank5", "identity_rank1", "identity_rank5", "tar_at_far", "far_target",
                "mean_source_cosine", "queries", "gallery")
LOOKALIKE_KEYS = ("training_identities", "threshold", "released_fraction", "original_fraction", "mcnemar_z",
                  "flagged", "top_identities")


def attacker_entry(name, model, sha256, network, precision, verification, audit_report, audit_dir):
    """One attacker on the card: its file, its accuracy on each ``.bin`` and its audit's figures."""
    lookalikes = audit_report.get("training_set")
    return {
        "name": name, "model": os.path.abspath(model), "sha256": sha256, "network": network, "precision": precision,
        "verification": {v["name"]: {"accuracy": v["accuracy_flip"], "accuracy_std": v["accuracy_std"],
                                     "pairs": v["pairs"], "path": v["path"]} for v in verification},
        "leakage": {key: audit_report[key] for key in LEAKAGE_KEYS},
        "search": audit_report["search"],
        "training_set": None if lookalikes is None else {key: lookalikes[key] for key in LOOKALIKE_KEYS},
        "audit": os.path.join(audit_dir, "audit.json"),
        "plots": {kind: os.path.join(audit_dir, os.path.basename(path))
                  for kind, path in audit_report["plots"].items()},
    }


def build_card(source, released, provenance, reconstructor, attackers, training_set, calibration, samples,
               command):
    """The card as a JSON-ready dict (see the module docstring for what each part holds)."""
    return {
        "card_version": CARD_VERSION, "facemae_plugin": __version__, "command": command,
        "source": source, "released": released,
        "method": provenance["privatizer"], "k": provenance["k"], "jpeg_quality": provenance["jpeg_quality"],
        "reconstructor": reconstructor, "training_set": training_set, "attackers": attackers,
        "calibration": calibration, "samples": samples,
    }


def write_card(folder, card):
    """``RELEASE.json`` then ``RELEASE.md`` in ``folder``, each written whole (temp file + rename)."""
    with atomic_file(os.path.join(folder, CARD_JSON)) as f:
        f.write(json_text(card, sort_keys=False).encode())
    with atomic_file(os.path.join(folder, CARD_MD)) as f:
        f.write(render_markdown(card).encode())
    return os.path.join(folder, CARD_MD)


# ----------------------------------------------------------------------------- markdown


def _percent(value):
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _number(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_markdown(card):
    """The card for people: what was released, by what, and how much it leaks."""
    source, method = card["source"], card["method"]
    params = ", ".join(f"{key}={value}" for key, value in method.items()
                       if key not in ("method", "model", "checkpoint", "checkpoint_sha256", "mask_key_scheme"))
    lines = [
        f"# Release card: {os.path.basename(card['released']['path'].rstrip(os.sep))}", "",
        f"Made by facemae-plugin {card['facemae_plugin']}: `{card['command']}`", "",
        "## What was released", "",
        f"- Source: `{source['path']}`: {source['images']} images of {source['identities']} identities "
        f"(layout {source['layout']}, `.idx` sha256 `{source['idx_sha256']}`)",
        f"- Release: {card['released']['images']} images (k={card['k']}, JPEG quality {card['jpeg_quality']}), "
        f"`.idx` sha256 `{card['released']['idx_sha256']}`",
        f"- Method: **{method['method']}** ({params})",
    ]
    lines += _reconstructor_lines(card["reconstructor"])
    lines += _calibration_lines(card["calibration"])
    lines += ["", "## How much it leaks", "",
              "Each released image searched every original image with the attacker's recogniser (image + flip). "
              "Instance: the image's own source is the top match; identity: any image of its person is.", "",
              "| attacker | network | instance rank-1 | rank-5 | identity rank-1 | rank-5 | TAR@FAR | mean source "
              "cosine | search |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for a in card["attackers"]:
        leak, search = a["leakage"], a["search"]
        searched = "exact" if search["method"] == "exact" else f"approximate (recall@1 {search['recall_at_1']:.3f})"
        lines.append(f"| {a['name']} | {a['network'] or 'onnx'} | {_percent(leak['instance_rank1'])} | "
                     f"{_percent(leak['instance_rank5'])} | {_percent(leak['identity_rank1'])} | "
                     f"{_percent(leak['identity_rank5'])} | {_number(leak['tar_at_far'])} | "
                     f"{_number(leak['mean_source_cosine'])} | {searched} |")
    lines += _lookalike_lines(card)
    lines += _attacker_lines(card["attackers"])
    lines += ["", "## Look", "", f"![the same records, original and released]({card['samples']})", ""]
    lines += [f"![{a['name']}: similarity of released images to their sources]({a['plots']['histogram']})"
              for a in card["attackers"] if "histogram" in a["plots"]]
    return "\n".join(lines) + "\n"


def _reconstructor_lines(reconstructor):
    if reconstructor is None:
        return []
    trained_on = reconstructor["trained_on"]
    data = ("not recorded (trained before checkpoints named their data)" if trained_on is None else
            f"{trained_on['images']} images of {trained_on['identities']} identities, `.idx` sha256 "
            f"`{trained_on['idx_sha256']}`")
    return [f"- Reconstructor: `{reconstructor['checkpoint']}` (sha256 `{reconstructor['sha256']}`), trained on {data}"]


def _calibration_lines(calibration):
    if calibration is None:
        return []
    points = "; ".join(f"{p['param']}={p['value']:g}: {_percent(p['instance_rank1'])}" for p in calibration["points"])
    return [f"- Calibrated to rank-1 instance leakage <= {_percent(calibration['target'])} under "
            f"{calibration['attacker']} on {calibration['images']} images of {calibration['identities']} "
            f"calibration identities: chose {calibration['param']}={calibration['value']:g} (points: {points}); "
            f"the whole release then leaks {_percent(calibration['released_instance_rank1'])}"]


def _lookalike_lines(card):
    rows = [a for a in card["attackers"] if a["training_set"] is not None]
    if not rows:
        return ["", "Look-alikes of a reconstructor's training identities: not measured (pass --training-set A_DIR)."]
    lines = ["", f"Look-alikes of the {rows[0]['training_set']['training_identities']} identities of the training "
             f"set `{card['training_set']['path']}`: images whose nearest identity centre is above the attacker's "
             "FAR=1e-3 threshold, released against the originals (the base rate).", "",
             "| attacker | released above | originals above | McNemar z | flagged | identities hit most |",
             "|---|---:|---:|---:|---|---|"]
    for a in rows:
        t = a["training_set"]
        hits = ", ".join(f"{h['label']} ({h['released']})" for h in t["top_identities"][:5]) or "none"
        lines.append(f"| {a['name']} | {_percent(t['released_fraction'])} | {_percent(t['original_fraction'])} | "
                     f"{t['mcnemar_z']:.1f} | {'yes' if t['flagged'] else 'no'} | {hits} |")
    return lines


def _attacker_lines(attackers):
    lines = ["", "## Attackers", ""]
    for a in attackers:
        accuracy = ", ".join(f"{name} {v['accuracy'] * 100:.2f}%" for name, v in a["verification"].items())
        lines.append(f"- {a['name']}: `{a['model']}` (sha256 `{a['sha256']}`, {a['network'] or 'onnx'}, "
                     f"{a['precision']}); verification: {accuracy or 'no .bin given'}; report `{a['audit']}`")
    return lines
