"""``--target-leakage``: the weakest setting of a method whose worst-case rank-1 instance leakage is at most a target.

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
import os
import shutil
import tempfile
from dataclasses import dataclass

from ..convert.settings import ConvertSettings
from ..core.errors import FaceMAEError
from ..formats.shard import FaceShard
from ..data.split import choose_identities, group_keys_by_label, write_identities
from ..privatizers.methods import STRENGTHS
from .reapply import REAPPLY, reapply_attackers

CALIBRATION_IDENTITIES = 100
BISECTION_STEPS = 6
VALUE_DECIMALS = 4


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
    if not 0.0 <= options.target <= 1.0:
        raise CalibrationError(f"--target-leakage must be a fraction in [0, 1], got {options.target}")
    strength = STRENGTHS[method]
    os.makedirs(work_parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".calibration-", dir=work_parent)
    try:
        subset, size = _write_subset(in_dir, os.path.join(scratch, "subset"), options.identities, options.seed)
        measure = _Measure(subset, scratch, privatizer_at, attackers, options)
        value = _bisect(strength, measure, options.target, options.steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    reapply = options.reapply
    names = [a.name for a in attackers] + ([REAPPLY] if reapply else []) + \
        [f"{REAPPLY}-{a.name}" for a in attackers if reapply and a.kind == "recogniser"]
    return {"method": method, "param": strength.param, "value": value, "target": options.target,
            "threat": "instance", "attackers": names, "identities": size["identities"], "images": size["images"],
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
    """Worst-case rank-1 instance leakage of the subset released at one setting (each measured once)."""

    def __init__(self, subset, scratch, privatizer_at, attackers, options):
        self.subset, self.scratch, self.privatizer_at = subset, scratch, privatizer_at
        self.attackers, self.options = attackers, options
        self.points = []

    def __call__(self, param, value):
        """``(worst rank-1 instance leakage, the attacker that reached it)`` at ``param=value``."""
        from ..convert import convert
        from ..evaluation.audit import AuditOptions
        from ..evaluation.suite import audit_suite

        for point in self.points:
            if point["value"] == value:
                return point["instance_rank1"], point["attacker"]
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
        point = {"param": param, "value": value, "instance_rank1": worst["value"], "attacker": worst["attacker"],
                 "by_attacker": {name: entry["instance_rank1"] for name, entry in summary["attackers"].items()}}
        self.points.append(point)
        if self.options.progress:
            print(f"[calibrate] {param}={value:g}: worst-case rank-1 instance leakage "
                  f"{worst['value'] * 100:.2f}% ({worst['attacker']})", flush=True)
        return point["instance_rank1"], point["attacker"]


def _bisect(strength, measure, target, steps):
    """The weakest measured setting at or under ``target``, bracketed to ``steps`` halvings of the range."""
    weak, strong = strength.weakest, strength.strongest
    strongest_leak, attacker = measure(strength.param, strong)
    if strongest_leak > target:
        raise CalibrationError(
            f"--target-leakage {target:g}: even the strongest setting {strength.param}={strong:g} leaks "
            f"{strongest_leak * 100:.2f}% rank-1 instance under the {attacker} attacker on the calibration "
            "identities; no release written")
    if measure(strength.param, weak)[0] <= target:
        return weak
    for _ in range(steps):  # invariant: leak(weak) > target >= leak(strong)
        if strength.integer and strong - weak <= 1:
            break
        # rounded so that the card and the privatizer see the same short number
        middle = (weak + strong) // 2 if strength.integer else round((weak + strong) / 2, VALUE_DECIMALS)
        if measure(strength.param, middle)[0] <= target:
            strong = middle
        else:
            weak = middle
    return strong
