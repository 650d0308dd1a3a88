"""The dataset card of a release: ``RELEASE.json`` (the record) and ``RELEASE.md`` (the same, for people).

The card leads with the worst case: per threat (instance, re-identification), the largest
leakage over the attackers that ran, naming the attacker. Then what was released (the source
shard by name, size and ``.idx`` hash; the method and every parameter, a secret seed as
``"secret"``; the reconstructor and the data it was trained on), who tried to find the sources
(the pixel attacker, each recogniser by hash and network with its verification accuracy where
``.bin`` sets were given, ``reapply``) and how often each succeeded: every figure is the one in
that attacker's ``audit.json`` (kept in the publisher's private folder, ``private``, since it ranks
records). Paths are relative to the release, or a file's bare name (``public_paths``): nothing says
where anything lies on the publisher's machine.
"""
import os
import shlex

from .. import __version__
from ..core.files import atomic_file, json_text
from ..evaluation.attackers import THREATS
from ..evaluation.suite import LEAKAGE_KEYS
from .private import CARD_JSON, CARD_MD

CARD_VERSION = 4
LOOKALIKE_KEYS = ("training_identities", "threshold", "released_fraction", "original_fraction", "mcnemar_z",
                  "flagged", "top_identities")
THREAT_WORDS = {"instance": "instance (its own source photo is the top match)",
                "reidentification": "re-identification (the source held out: another photo of the person is the "
                                    "top match)"}


def attacker_entry(name, recogniser, figures, audit_report, verification, plots, started_from=None):
    """One attacker on the card: what it is, its accuracy on each ``.bin`` and its audit's figures.

    ``recogniser``: ``(Attacker, embedder, sha256)`` of a recogniser, None for the other attackers;
    ``figures``: its entry in the suite's ``leakage.json``; ``plots``: its published aggregate plots
    (``{kind: path in the release}``); ``started_from``: the recogniser attacker an adaptive one was
    fine-tuned from (None: random weights, or not adaptive).
    """
    attacker, embedder, sha256 = recogniser or (None, None, None)
    lookalikes = audit_report.get("training_set")
    return {
        "name": name, "kind": figures["kind"], "model": attacker.model if attacker else None, "sha256": sha256,
        "network": attacker.network if attacker else None, "started_from": started_from,
        "precision": embedder.precision if embedder is not None else audit_report.get("precision"),
        "verification": {v["name"]: {"accuracy": v["accuracy_flip"], "accuracy_std": v["accuracy_std"],
                                     "pairs": v["pairs"], "path": v["path"]} for v in verification},
        "leakage": {key: figures[key] for key in LEAKAGE_KEYS},
        "search": audit_report["search"],
        "training_set": None if lookalikes is None else {key: lookalikes[key] for key in LOOKALIKE_KEYS},
        "plots": dict(plots),
    }


def build_card(source, released, provenance, reconstructor, worst_case, attackers, training_set, calibration,
               command, seed_public=True, reapply=True, adaptive="no training set"):
    """The card as a JSON-ready dict (see the module docstring for what each part holds)."""
    return {
        "card_version": CARD_VERSION, "facemae_plugin": __version__, "command": public_command(command),
        "worst_case": worst_case,
        "source": source, "released": released,
        "method": provenance["privatizer"], "k": provenance["k"], "jpeg_quality": provenance["jpeg_quality"],
        "seed": "published" if seed_public else "secret",
        "reconstructor": reconstructor, "training_set": training_set, "attackers": attackers,
        "reapply": "run" if reapply else "skipped",
        "adaptive": adaptive,
        "calibration": calibration,
    }


def public_paths(value, *folders):
    """``value`` (JSON-ready) with every absolute path made public: relative to the first of ``folders``
    holding it (the release, before and after its rename), else the file's bare name."""
    if isinstance(value, dict):
        return {key: public_paths(item, *folders) for key, item in value.items()}
    if isinstance(value, list):
        return [public_paths(item, *folders) for item in value]
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    for folder in folders:
        if value == folder or value.startswith(folder.rstrip(os.sep) + os.sep):
            return os.path.relpath(value, folder)
    return os.path.basename(value.rstrip(os.sep)) or value


def public_command(command):
    """The command line with every absolute path reduced to its bare name (``--opt=/a/b`` too)."""
    if command is None:
        return None

    def public(token):
        option, eq, path = token.partition("=")
        if eq and option.startswith("-"):
            return f"{option}={public_paths(path)}"
        return public_paths(token)

    return shlex.join(public(token) for token in shlex.split(command))


def write_card(folder, card):
    """``RELEASE.json`` then ``RELEASE.md`` in ``folder``, each written whole (temp file + rename)."""
    with atomic_file(os.path.join(folder, CARD_JSON)) as f:
        f.write(json_text(card, sort_keys=False).encode())
    with atomic_file(os.path.join(folder, CARD_MD)) as f:
        f.write(render_markdown(card).encode())
    return os.path.join(folder, CARD_MD)


# ----------------------------------------------------------------------------- markdown


def percent(value):
    """A fraction as a percentage with two decimals, or n/a."""
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _number(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_markdown(card):
    """The card for people: how much it leaks at worst, what was released, by what, each attacker's figures."""
    source = card["source"]
    lines = [f"# Release card: {card['released']['name']}", ""]
    lines += worst_case_lines(card)
    lines += [
        "", f"Made by facemae-plugin {card['facemae_plugin']}: `{card['command']}`", "",
        "## What was released", "",
        f"- Source: `{source['path']}`: {source['images']} images of {source['identities']} identities "
        f"(layout {source['layout']}, `.idx` sha256 `{source['idx_sha256']}`)",
        f"- Release: {card['released']['images']} images (k={card['k']}, JPEG quality {card['jpeg_quality']}), "
        f"`.idx` sha256 `{card['released']['idx_sha256']}`",
        f"- Method: {method_text(card, bold=True)}",
        f"- {_seed_line(card)}",
    ]
    lines += _reconstructor_lines(card["reconstructor"])
    lines += _calibration_lines(card["calibration"])
    lines += ["", "## How much it leaks, by attacker", ""]
    lines += leakage_table_lines(card)
    lines += _lookalike_lines(card)
    lines += _attacker_lines(card)
    lines += ["", "## Look", "",
              "How similar each attacker finds a released face to its own source, against other people's faces "
              "(a release shows no original face, so none is drawn here):", ""]
    lines += [f"![{a['name']}: similarity of released images to their sources]({a['plots']['histogram']})"
              for a in card["attackers"] if "histogram" in a["plots"]]
    return "\n".join(lines) + "\n"


def method_text(card, bold=False):
    """``blur (sigma=6.0, k=1)``: the method and its published parameters that are set (a secret seed as
    ``secret``)."""
    method = card["method"]
    params = ", ".join(f"{key}={value}" for key, value in method.items() if value is not None and key not in
                       ("method", "model", "checkpoint", "checkpoint_sha256", "mask_key_scheme"))
    name = f"**{method['method']}**" if bold else method["method"]
    return f"{name} ({params})"


def leakage_table_lines(card):
    """What each attacker found, one table row per attacker (the worst case is stated above it)."""
    lines = ["Each released image searched every original image. Instance: its own source is the top match; "
             "re-identification: with the source held out, another image of its person is; identity: any image "
             "of its person is (the source included).", "",
             "| attacker | kind | instance rank-1 | rank-5 | re-identification rank-1 | rank-5 | identity rank-1 | "
             "TAR@FAR | mean source cosine | search |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for a in card["attackers"]:
        leak, search = a["leakage"], a["search"]
        searched = "exact" if search["method"] == "exact" else f"approximate (recall@1 {search['recall_at_1']:.3f})"
        lines.append(f"| {a['name']} | {_kind(a)} | {percent(leak['instance_rank1'])} | "
                     f"{percent(leak['instance_rank5'])} | {percent(leak['reid_rank1'])} | "
                     f"{percent(leak['reid_rank5'])} | {percent(leak['identity_rank1'])} | "
                     f"{_number(leak['tar_at_far'])} | {_number(leak['mean_source_cosine'])} | {searched} |")
    return lines


def worst_case_lines(card):
    lines = ["## Worst case", "",
             "The largest leakage over the attackers that ran; a release is as private as its worst case.", ""]
    for threat in THREATS:
        entry = card["worst_case"][threat]
        by = f"by the **{entry['attacker']}** attacker" if entry["attacker"] else "not measured"
        lines.append(f"- {THREAT_WORDS[threat]}: **{percent(entry['value'])}** rank-1, {by}")
    return lines


def _seed_line(card):
    if card["method"].get("seed") is None:
        return ("Seed: none; the method is deterministic, so anyone holding the source photos regenerates this "
                "release byte for byte (the reapply attacker)")
    if card["seed"] == "secret":
        return ("Seed: secret, drawn from the operating system and kept by the publisher beside the release "
                "(never in it)")
    return ("Seed: published; anyone holding the source photos" + (" and the checkpoint" if card["reconstructor"]
                                                                   else "") + " regenerates this release byte for byte")


def _kind(attacker):
    if attacker["kind"] == "recogniser":
        return f"recogniser ({attacker['network'] or 'onnx'})"
    return attacker["kind"]


def _adaptive_data_words(data):
    if data is None:
        return "other people's faces"
    if data["set"] == "attacker set":
        return f"`{data['name']}`, people neither released nor seen by any model of the release"
    if data["seen_by_reconstructor"]:
        return (f"the reconstructor's own training faces `{data['name']}` (its reconstructions of faces it "
                "learnt from are not those of the unseen released people: this attacker may understate; "
                "pass --attacker-set)")
    return f"the training set `{data['name']}`"


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
    points = "; ".join(f"{p['param']}={p['value']:g}: {percent(p['instance_rank1'])}, upper bound "
                       f"{percent(p['instance_upper'])} ({p['attacker']})" for p in calibration["points"])
    reid = calibration.get("target_reid")
    bound = "" if reid is None else f" and re-identification <= {percent(reid)}"
    return [f"- Calibrated to worst-case rank-1 instance leakage <= {percent(calibration['target'])}{bound} at "
            f"{calibration['confidence']:.0%} confidence (one-sided Clopper-Pearson upper bound) over the "
            f"attackers {', '.join(calibration['attackers'])} on {calibration['images']} images of "
            f"{calibration['identities']} calibration identities: chose {calibration['param']}="
            f"{calibration['value']:g} (points: {points}); the whole release then leaks at worst "
            f"{percent(calibration['released_instance_rank1'])}"]


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
        lines.append(f"| {a['name']} | {percent(t['released_fraction'])} | {percent(t['original_fraction'])} | "
                     f"{t['mcnemar_z']:.1f} | {'yes' if t['flagged'] else 'no'} | {hits} |")
    return lines


def _attacker_lines(card):
    lines = ["", "## Attackers", ""]
    for a in card["attackers"]:
        if a["kind"] == "recogniser":
            accuracy = ", ".join(f"{name} {v['accuracy'] * 100:.2f}%" for name, v in a["verification"].items())
            lines.append(f"- {a['name']}: a face recogniser, `{a['model']}` (sha256 `{a['sha256']}`, "
                         f"{a['network'] or 'onnx'}, {a['precision']}); verification: {accuracy or 'no .bin given'}")
        elif a["kind"] == "pixels":
            lines.append(f"- {a['name']}: no model; nearest neighbour in 28x28 grey pixels, mean-centred")
        elif a["kind"] == "verbatim":
            lines.append(f"- {a['name']}: no model; counts the 4x4 cells of full-resolution grey pixels a released "
                         "face shares with each photo (what a method keeps verbatim, such as visible patches)")
        elif a["kind"] == "adaptive":
            start = (f"the {a['started_from']} recogniser fine-tuned" if a["started_from"] else
                     "a face recogniser trained from random weights")
            epochs = (card.get("adaptive_data") or {}).get("epochs")
            length = f" for {epochs} epoch{'s' if epochs != 1 else ''}" if epochs else ""
            lines.append(f"- {a['name']}: {start}{length} on {_adaptive_data_words(card.get('adaptive_data'))} "
                         "beside its release by this method (a seed of its own), so it has learnt to see through it")
        else:
            seed = "the published seed" if card["seed"] == "published" else "a seed of its own"
            searcher = a["name"].split("-", 1)[1] if "-" in a["name"] else "the pixel attacker"
            lines.append(f"- {a['name']}: knows the method and every parameter on this card, privatizes the "
                         f"originals the same way ({seed}) and searches with {searcher}")
    if card.get("adaptive") in ("skipped", "no training set"):
        why = ("skipped at the publisher's request" if card["adaptive"] == "skipped"
               else "not run: no --attacker-set or --training-set was given to train it on")
        lines.append(f"- adaptive: {why}; the worst case above assumes an attacker who has not trained a "
                     f"recogniser on faces privatized by this method")
    if card["reapply"] == "skipped":
        lines.append("- reapply: skipped at the publisher's request; the worst case above assumes an attacker "
                     "who does not know the method's parameters")
    return lines
