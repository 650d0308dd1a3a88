"""``--target-leakage``: the weakest setting of a method whose worst-case rank-1 instance leakage is at most a target.

A point meets the target when the one-sided 95% upper confidence bound of its worst-case rate
(Clopper-Pearson, binomial over the calibration queries) is at most the target, not its measured
rate alone: one noisy measurement under the target is no bound on the release.

Each method has one strength parameter (``privatizers.methods.STRENGTHS``); leakage falls as it grows. Every point is
audited by every attacker of the release (the pixel attacker, the recognisers and, unless skipped,
``reapply``) and judged by the largest of their rank-1 instance figures: a setting that one
attacker defeats is not private, whatever the others say. Bisection runs on a calibration subset:
``CALIBRATION_IDENTITIES`` identities of the shard to release, drawn with ``seed`` and kept in the
release (they are held out from nothing else). A subset is a smaller gallery, so a released face
meets fewer look-alike distractors and finds its source more easily than in the whole release:
the leakage measured on it errs on the side of more leakage. 100 identities are about 1,500 images
at CASIA-WebFace's 15 per identity; a rank-1 fraction p over n images has standard error
sqrt(p (1 - p) / n), under a point there, and eight points of a few conversions each stay cheap
next to converting the whole set.
"""
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from ..convert.settings import ConvertSettings
from ..core.errors import FaceMAEError
from ..formats.shard import FaceShard
from ..data.split import choose_identities, group_keys_by_label, write_identities
from ..privatizers.methods import STRENGTHS
from .reapply import REAPPLY, reapply_attackers

CALIBRATION_IDENTITIES = 100
BISECTION_STEPS = 6
VALUE_DECIMALS = 4
CONFIDENCE = 0.95  # of the one-sided upper bound a calibration point must keep under the target


class CalibrationError(FaceMAEError):
    """No setting of the method reaches the target leakage, or the target cannot be asked for."""


@dataclass(frozen=True)
class CalibrationOptions:
    """How one calibration runs.

    ``target``: the worst-case rank-1 instance leakage to reach; ``settings``: how every point is
    converted (its batch size also embeds); ``seed`` draws the ``identities`` of the subset;
    ``steps``: halvings of the strength's range; ``reapply``: also attack every point by
    re-applying the method.
    """
    target: float
    settings: ConvertSettings
    seed: int = 0
    identities: int = CALIBRATION_IDENTITIES
    steps: int = BISECTION_STEPS
    device: str = "cpu"
    progress: bool = False
    reapply: bool = True
    target_reid: Optional[float] = None  # also bound the worst-case rank-1 re-identification


def calibrate(in_dir, work_parent, method, privatizer_at, attackers, options):
    """Bisect ``method``'s strength until the worst-case rank-1 instance leakage is at most ``options.target``.

    ``privatizer_at(value)`` builds the method's privatizer at one setting; ``attackers``: the
    release's ``evaluation.suite.SuiteAttacker`` list; ``options``: a ``CalibrationOptions``. The
    subset and every point live in a hidden folder inside ``work_parent``, removed at the end.
    Returns the record: the chosen ``value``, every measured point (each attacker's figure and the
    worst) and the subset's size. ``CalibrationError`` when even the strongest setting leaks more
    than the target, naming the attacker that defeats it.
    """
    if method not in STRENGTHS:
        raise CalibrationError(f"--target-leakage: method {method} has no strength to calibrate; expected one of "
                               f"{', '.join(STRENGTHS)}")
    for flag, target in (("--target-leakage", options.target), ("--target-reid", options.target_reid)):
        if target is not None and not 0.0 <= target <= 1.0:
            raise CalibrationError(f"{flag} must be a fraction in [0, 1], got {target}")
    strength = STRENGTHS[method]
    os.makedirs(work_parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".calibration-", dir=work_parent)
    try:
        subset, size = _write_subset(in_dir, os.path.join(scratch, "subset"), options.identities, options.seed)
        measure = _Measure(subset, scratch, privatizer_at, attackers, options)
        value = _bisect(strength, measure, options.steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    reapply = options.reapply
    names = [a.name for a in attackers] + ([REAPPLY] if reapply else []) + \
        [f"{REAPPLY}-{a.name}" for a in attackers if reapply and a.kind == "recogniser"]
    return {"method": method, "param": strength.param, "value": value, "target": options.target,
            "target_reid": options.target_reid, "threat": "instance" if options.target_reid is None else "both",
            "confidence": CONFIDENCE, "attackers": names, "identities": size["identities"], "images": size["images"],
            "seed": options.seed, "steps": options.steps, "points": sorted(measure.points, key=lambda p: p["value"])}


def _write_subset(in_dir, out_dir, identities, seed):
    """The calibration identities of ``in_dir`` as a shard; all of them when there are no more."""
    with FaceShard(in_dir) as shard:
        groups = group_keys_by_label(shard)
        labels = sorted(groups)
        if len(labels) > identities:
            labels = choose_identities(labels, identities / len(labels), seed)
        write_identities(shard, groups, labels, out_dir)
        return out_dir, {"identities": len(labels), "images": int(sum(len(groups[label]) for label in labels))}


class _Measure:
    """Worst-case rank-1 instance (and re-identification) leakage of the subset released at one setting
    (each measured once) and their upper confidence bounds (``upper_bound``), which are what meet the
    targets or not."""

    def __init__(self, subset, scratch, privatizer_at, attackers, options):
        self.subset, self.scratch, self.privatizer_at = subset, scratch, privatizer_at
        self.attackers, self.options = attackers, options
        self.points = []

    def __call__(self, param, value):
        """``(whether param=value meets the targets, what it leaks: the threat that misses one, else instance)``."""
        from ..convert import convert
        from ..evaluation.audit import AuditOptions
        from ..evaluation.suite import audit_suite

        for point in self.points:
            if point["value"] == value:
                return self.judge(point)
        out = os.path.join(self.scratch, f"point-{len(self.points)}")
        privatizer = self.privatizer_at(value)
        settings = self.options.settings
        convert(self.subset, out, privatizer, settings, progress=False)
        attackers = list(self.attackers)
        if self.options.reapply:
            attackers += reapply_attackers(self.subset, out + "-reapplied", privatizer, settings,
                                           released=out, searchers=self.attackers)
        options = AuditOptions(batch_size=settings.batch_size, device=self.options.device, plots=False)
        summary = audit_suite(self.subset, out, attackers, os.path.join(out, "audit"), options,
                              embedding_cache=os.path.join(self.scratch, "embeddings"))
        for folder in (out, out + "-reapplied"):
            shutil.rmtree(folder, ignore_errors=True)
        worst = summary["worst_case"]["instance"]
        upper, queries = _worst_bound(summary, "instance", "queries")
        point = {"param": param, "value": value, "instance_rank1": worst["value"], "instance_upper": upper,
                 "queries": queries, "attacker": worst["attacker"],
                 "by_attacker": {name: entry["instance_rank1"] for name, entry in summary["attackers"].items()}}
        reid = summary["worst_case"]["reidentification"]
        if reid["value"] is not None:
            point.update({"reid_rank1": reid["value"], "reid_attacker": reid["attacker"],
                          "reid_upper": _worst_bound(summary, "reidentification", "reid_queries")[0]})
        self.points.append(point)
        if self.options.progress:
            print(f"[calibrate] {param}={value:g}: worst-case rank-1 instance leakage "
                  f"{worst['value'] * 100:.2f}% ({worst['attacker']}), {CONFIDENCE:.0%} upper bound "
                  f"{upper * 100:.2f}%", flush=True)
        return self.judge(point)

    def judge(self, point):
        """``(meets, words)``: both bounds under their targets, and what the point leaks (the threat that
        misses, or instance)."""
        target_reid = self.options.target_reid
        if target_reid is not None and point.get("reid_upper", 1.0) > target_reid:
            return False, _leak_words(point.get("reid_upper", 1.0), "re-identification", point.get("reid_attacker"))
        words = _leak_words(point["instance_upper"], "instance", point["attacker"])
        return point["instance_upper"] <= self.options.target, words


def _worst_bound(summary, threat, count_key):
    """``(upper bound, queries)`` of the worst case of ``threat`` in an ``audit_suite`` summary: its rate
    over the ``count_key`` queries of the attacker that reached it."""
    worst = summary["worst_case"][threat]
    queries = summary["attackers"][worst["attacker"]][count_key]
    return upper_bound(round(worst["value"] * queries), queries), queries


def _leak_words(upper, threat, attacker):
    return (f"leaks up to {upper * 100:.2f}% rank-1 {threat} ({CONFIDENCE:.0%} upper bound) under the {attacker} "
            "attacker")


def upper_bound(hits, n, confidence=CONFIDENCE):
    """One-sided Clopper-Pearson upper bound of a rate seen as ``hits`` of ``n``: the largest rate under
    which seeing at most ``hits`` still has probability ``1 - confidence``."""
    if n <= 0 or hits >= n:
        return 1.0
    low, high = hits / n, 1.0
    for _ in range(60):  # bisection: the binomial tail falls as the rate grows
        middle = (low + high) / 2
        if _binomial_cdf(hits, n, middle) > 1.0 - confidence:
            low = middle
        else:
            high = middle
    return high


def _binomial_cdf(k, n, p):
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n of a few thousand stays exact enough)."""
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return math.exp(top) * math.fsum(math.exp(v - top) for v in logs)


def _bisect(strength, measure, steps):
    """The weakest measured setting that meets the targets (``_Measure``), bracketed to ``steps`` halvings
    of the range."""
    weak, strong = strength.weakest, strength.strongest
    meets, words = measure(strength.param, strong)
    if not meets:
        options = measure.options
        asked = f"--target-leakage {options.target:g}" + (
            f" --target-reid {options.target_reid:g}" if options.target_reid is not None else "")
        raise CalibrationError(f"{asked}: even the strongest setting {strength.param}={strong:g} {words} on the "
                               "calibration identities; no release written")
    if measure(strength.param, weak)[0]:
        return weak
    for _ in range(steps):  # invariant: weak misses the targets, strong meets them
        if strength.integer and strong - weak <= 1:
            break
        # rounded so that the card and the privatizer see the same short number
        middle = (weak + strong) // 2 if strength.integer else round((weak + strong) / 2, VALUE_DECIMALS)
        if measure(strength.param, middle)[0]:
            strong = middle
        else:
            weak = middle
    return strong
