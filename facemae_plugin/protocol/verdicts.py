"""What a protocol run shows: rows aggregated over seeds, and the verdicts on the paper's claim.

``tradeoff_verdict`` compares FaceMAE with each baseline's strongest row; ``matched_leakage_verdict``
interpolates each baseline family's error to FaceMAE's leakage and asks whether FaceMAE errs at
most half as often. Tables and figures of these live in ``report``.
"""
import numpy as np

from ..evaluation.attackers import worst_case
from ..privatizers.methods import BASELINE_METHODS, STRENGTHS

COLUMNS = (  # (key, header, format): percentages of the row dicts ``Experiment.row`` returns
    ("accuracy", "verification acc. %", "{:.2f}"),
    ("error", "error %", "{:.2f}"),
    ("worst_instance_rank1", "worst-case rank-1 instance leak %", "{:.1f}"),
    ("worst_reid_rank1", "worst-case rank-1 re-identification %", "{:.1f}"),
    ("tar_at_far", "TAR@FAR=1e-3 %", "{:.1f}"),
    ("pixels_instance_rank1", "rank-1 instance leak, pixel attacker %", "{:.1f}"),
    ("verbatim_instance_rank1", "rank-1 instance leak, verbatim attacker %", "{:.1f}"),
    ("instance_rank1", "rank-1 instance leak, teacher %", "{:.1f}"),
    ("reid_rank1", "rank-1 re-identification, teacher %", "{:.1f}"),
    ("source_tar_at_far", "source TAR@FAR=1e-3, teacher %", "{:.1f}"),
    ("informed_instance_rank1", "rank-1 instance leak, informed attacker %", "{:.1f}"),
    ("adaptive_instance_rank1", "rank-1 instance leak, adaptive attacker %", "{:.1f}"),
)

VAL_PREFIX = "acc_"  # a row's accuracy on one verification set: acc_<set name>
LOOKALIKE_COLUMN = ("lookalike_excess", "look-alikes of split A, excess over originals %", "{:.1f}")

# (leakage key, attacker): the worst case over the attackers a row ran leads; the pixel attacker needs no
# model; the teacher never saw the released identities; the informed attacker is the recogniser trained on
# the original release split, who knows them.
ATTACKERS = (("worst_instance_rank1", "worst case"), ("pixels_instance_rank1", "pixels"),
             ("verbatim_instance_rank1", "verbatim"), ("instance_rank1", "teacher"),
             ("informed_instance_rank1", "informed"), ("adaptive_instance_rank1", "adaptive"))
# a row's attackers: (name, its instance and re-identification keys), for the worst case over them
ROW_ATTACKERS = (("pixels", "pixels_instance_rank1", "pixels_reid_rank1"),
                 ("verbatim", "verbatim_instance_rank1", "verbatim_reid_rank1"),
                 ("teacher", "instance_rank1", "reid_rank1"),
                 ("informed", "informed_instance_rank1", "informed_reid_rank1"),
                 ("adaptive", "adaptive_instance_rank1", "adaptive_reid_rank1"))


def worst_columns(row):
    """The worst case of one row over the attackers it ran: ``worst_*`` values and the attackers' names."""
    figures = {name: {"instance_rank1": row.get(instance), "reid_rank1": row.get(reid)}
               for name, instance, reid in ROW_ATTACKERS}
    worst = worst_case(figures)
    return {"worst_instance_rank1": worst["instance"]["value"],
            "worst_instance_attacker": worst["instance"]["attacker"],
            "worst_reid_rank1": worst["reidentification"]["value"],
            "worst_reid_attacker": worst["reidentification"]["attacker"]}


def with_target_check(row):
    """``row`` with ``target_met``: whether a calibrated variant's whole release kept its worst-case
    instance leakage, over every attacker the row ran, at or under its ``target_leakage`` (None
    without a target). Calibration sees a subset and fewer attackers; this is the release's check."""
    target = row.get("target_leakage")
    met = None if target is None or row["worst_instance_rank1"] is None else row["worst_instance_rank1"] <= target
    return {**row, "target_met": met}


def target_lines(rows):
    """One line per calibrated row of ``results.md``: its setting and whether the whole release met the target."""
    lines = []
    for row in rows:
        if row.get("target_leakage") is None:
            continue
        param = STRENGTHS[row["method"]].param
        setting = f"{param}={row['setting'][param]:g}"
        verdict = "meets" if row["target_met"] else "MISSES"
        lines.append(f"- {row['variant']} (seed {row['seed']}): calibrated to {setting}; the whole release's worst "
                     f"case is {row['worst_instance_rank1'] * 100:.2f}% instance ({row['worst_instance_attacker']}), "
                     f"which {verdict} the target {row['target_leakage'] * 100:.2f}%")
    return lines


def table_columns(rows):
    """``COLUMNS``, with one accuracy column per verification set where there are several, and the
    look-alike excess where a row measured it; ``rows`` are rows or their aggregated entries."""
    def measured(value):
        return (value[0] if isinstance(value, (tuple, list)) else value) is not None

    sets = list(dict.fromkeys(key for row in rows for key in row if key.startswith(VAL_PREFIX)))
    columns = list(COLUMNS)
    if len(sets) > 1:
        columns[1:1] = [(key, f"{key[len(VAL_PREFIX):]} acc. %", "{:.2f}") for key in sets]
    if any(measured(row.get(LOOKALIKE_COLUMN[0], None)) for row in rows):
        columns.append(LOOKALIKE_COLUMN)
    return tuple(columns)


def aggregate(rows):
    """Rows grouped by variant (first-seen order): ``{variant, seeds, <key>: (mean, std)}``."""
    groups = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    columns = table_columns(rows)
    summary = []
    for variant, members in groups.items():
        entry = {"variant": variant, "method": members[0]["method"], "seeds": [m["seed"] for m in members]}
        for key, _, _ in columns:
            values = np.array([m[key] for m in members if m.get(key) is not None], dtype=np.float64)
            entry[key] = (float(values.mean()), float(values.std())) if len(values) else (None, None)
        summary.append(entry)
    return summary


def tradeoff_verdict(summary, leak_key, facemae="FaceMAE full 0.75", paste="FaceMAE paste 0.75",
                     baselines=BASELINE_METHODS, original="original"):
    """FaceMAE's claim checked on the table (means over seeds).

    Holds when ``facemae`` has at most half the verification error of the most accurate baseline
    that leaks at least as much (so FaceMAE is compared at equal or lower leakage), and leaks less
    than ``paste``. Leakage is the ``leak_key`` column (a worst case, ``worst_instance_rank1``, unless a
    caller asks what one attacker alone sees: no attacker is assumed). Returns ``{"holds", "text",
    ...}``; ``holds`` is None when rows are missing.
    With an ``original`` row, ``original_ratio`` is the originals' own error against the same
    baseline: above 0.5 no release can pass, since none is expected to beat untouched data.
    """
    def leak(entry):
        return entry[leak_key][0]

    by_name = {entry["variant"]: entry for entry in summary}
    ours = by_name.get(facemae)
    rivals = [e for e in summary if e["method"] in baselines and leak(e) is not None]
    if ours is None or leak(ours) is None or not rivals:
        return {"holds": None, "text": f"verdict ({leak_key}): needs the {facemae!r} row and a baseline row"}
    error = ours["error"][0]
    comparable = [e for e in rivals if leak(e) >= leak(ours)]
    best = min(comparable or rivals, key=lambda e: e["error"][0])
    ratio = error / best["error"][0] if best["error"][0] > 0 else float("inf")
    text = (f"verdict ({leak_key}): {facemae} error {100 * error:.2f}% at leakage {100 * leak(ours):.1f}%; "
            f"best baseline {'leaking at least as much' if comparable else '(none leaks as much; all shown)'}: "
            f"{best['variant']} error {100 * best['error'][0]:.2f}% at leakage {100 * leak(best):.1f}% -> error "
            f"ratio {ratio:.2f} (claim: <= 0.50).")
    paste_entry = by_name.get(paste)
    less_than_paste = None
    if paste_entry is not None and leak(paste_entry) is not None:
        less_than_paste = leak(ours) < leak(paste_entry)
        relation = "higher" if less_than_paste else "not higher"
        text += f" {paste}: leakage {100 * leak(paste_entry):.1f}% ({relation} than full)."
    holds = ratio <= 0.5 and bool(comparable) and less_than_paste is not False
    text += " Claim holds." if holds else " Claim does not hold here."
    original_ratio = _original_ratio(by_name.get(original), best["error"][0])
    if original_ratio is not None:
        text += (f" Headroom: the originals' own error ratio is {original_ratio:.2f}"
                 + (", so no release can reach 0.50 on this benchmark." if original_ratio > 0.5 else "."))
    return {"holds": holds, "text": text, "error_ratio": ratio, "best_baseline": best["variant"],
            "leaks_less_than_paste": less_than_paste, "original_ratio": original_ratio}


def _original_ratio(original, best_error):
    """The untouched data's error over the best comparable baseline's error; None without both."""
    if original is None or original["error"][0] is None or not best_error:
        return None
    return original["error"][0] / best_error


def matched_leakage_verdict(summary, leak_key, facemae="FaceMAE full 0.75", baselines=BASELINE_METHODS,
                            original="original"):
    """FaceMAE's error against each baseline family's error at FaceMAE's own leakage.

    A family is one method at several strengths (``blur s3``, ``blur s6``, ...); the untouched
    originals are every family's strength 0. Its error at FaceMAE's leakage ``L`` is interpolated
    linearly between the family's nearest rows leaking at most and at least ``L``, so a family is
    judged at the strength that hides sources as well as FaceMAE does, not at a weak strength that
    leaks everything. A family whose every row leaks more than ``L`` is unmatched: it needs a
    stronger row. Fails when a matched family errs less than twice as often as FaceMAE; holds when
    every family is matched and none does; otherwise (unmatched families, missing rows) ``holds`` is None.
    """
    by_name = {entry["variant"]: entry for entry in summary}
    ours = by_name.get(facemae)
    if ours is None or ours[leak_key][0] is None:
        return {"holds": None, "text": f"matched-leakage verdict ({leak_key}): needs the {facemae!r} row",
                "families": {}}
    level, error = ours[leak_key][0], ours["error"][0]
    families = {method: _error_at_leakage(points, level) for method in baselines
                for points in [family_points(summary, method, leak_key)] if points}
    if not families:
        return {"holds": None, "text": f"matched-leakage verdict ({leak_key}): needs baseline rows",
                "families": {}}
    parts, ratios = [], []
    for method, match in families.items():
        if match is None:
            parts.append(f"{method}: every row leaks more (needs a stronger row)")
            continue
        match["ratio"] = error / match["error"] if match["error"] > 0 else float("inf")
        ratios.append(match["ratio"])
        parts.append(f"{method} {100 * match['error']:.2f}% ({match['between']}) -> ratio {match['ratio']:.2f}")
    unmatched = [m for m, match in families.items() if match is None]
    # One matched family at more than half FaceMAE's error settles it; otherwise unmatched ones decide.
    holds = False if ratios and max(ratios) > 0.5 else None if unmatched or not ratios else True
    text = (f"matched-leakage verdict ({leak_key}): {facemae} error {100 * error:.2f}% at leakage "
            f"{100 * level:.1f}%; baseline error interpolated to that leakage: " + "; ".join(parts)
            + " (claim: every ratio <= 0.50). "
            + ("Claim holds." if holds else "Claim does not hold here." if holds is False
               else "Undecided until every family is matched."))
    matched_errors = [match["error"] for match in families.values() if match is not None]
    original_ratio = _original_ratio(by_name.get(original), min(matched_errors)) if matched_errors else None
    if original_ratio is not None:
        text += (f" Headroom: the originals' own error is {original_ratio:.2f} of the best matched baseline's"
                 + (", so no release can reach 0.50 here." if original_ratio > 0.5 else "."))
    return {"holds": holds, "text": text, "leakage": level, "error": error, "families": families,
            "original_ratio": original_ratio}


def family_points(summary, method, leak_key):
    """``[(leakage, error, name)]`` of one method's rows plus the originals (its strength 0); [] without rows."""
    members = [e for e in summary if e["method"] == method and e[leak_key][0] is not None]
    if not members:
        return []
    members += [e for e in summary if e["method"] == "original" and e[leak_key][0] is not None]
    return [(e[leak_key][0], e["error"][0], e["variant"]) for e in members]


def _error_at_leakage(points, level):
    """The family's error at ``level`` between its bracketing rows, or None when none leaks as little."""
    below = [p for p in points if p[0] <= level]
    above = [p for p in points if p[0] >= level]
    if not below:
        return None
    # Nearest rows on each side; among equal leakage the most accurate, the family's best at that point.
    low = min(below, key=lambda p: (level - p[0], p[1]))
    if not above:  # every row leaks less: FaceMAE leaks more than even the originals' level
        return {"error": low[1], "between": f"at {low[2]}"}
    high = min(above, key=lambda p: (p[0] - level, p[1]))
    if high[0] == low[0]:
        return {"error": min(low[1], high[1]), "between": f"at {(low if low[1] <= high[1] else high)[2]}"}
    weight = (level - low[0]) / (high[0] - low[0])
    return {"error": low[1] + weight * (high[1] - low[1]), "between": f"between {low[2]} and {high[2]}"}
