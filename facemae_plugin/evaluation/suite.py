"""An audit by every attacker at once, led by the worst case (``attackers``).

    OUT_DIR/leakage.json      per attacker: its figures and report; per threat: the worst case
    OUT_DIR/<attacker>/       that attacker's ``audit`` (audit.json and its plots)
"""
import os
from dataclasses import dataclass

from ..core.files import write_json
from .attackers import PIXELS, VERBATIM, PixelAttacker, VerbatimAttacker, attacker_stem, unique_names, worst_case
from .audit import AuditOptions, audit

LEAKAGE_JSON = "leakage.json"
# what a suite keeps of each attacker's audit.json (and a card shows)
LEAKAGE_KEYS = ("instance_rank1", "instance_rank5", "identity_rank1", "identity_rank5", "reid_rank1", "reid_rank5",
                "reid_queries", "tar_at_far", "far_target", "mean_source_cosine", "queries", "gallery")


@dataclass(frozen=True)
class SuiteAttacker:
    """One attacker of a suite: its name (its folder), what embeds the images and where it came from.

    ``model``: the recogniser's file (names it in its report, keys the embedding cache); None for
    the pixel attacker. ``gallery``: a shard searched in place of the originals, with the same keys
    and labels (the ``reapply`` attacker's privatized originals). ``kind``: ``attackers``' word for it.
    """

    name: str
    embedder: object
    kind: str
    model: str = None
    gallery: str = None


def pixel_attacker():
    return SuiteAttacker(PIXELS, PixelAttacker(), PIXELS)


MODEL_FREE = {PIXELS: PixelAttacker, VERBATIM: VerbatimAttacker}  # every audit runs these: they need no model


def model_free_attackers():
    """The attackers every audit runs, needing no model: the thumbnail and the verbatim matchers."""
    return [SuiteAttacker(name, embedder(), name) for name, embedder in MODEL_FREE.items()]


def load_suite(models, device="cpu", precision="fp32", compile=True):
    """The model-free attackers, then one recogniser per ``(model file, network)`` in ``models``, each
    named by its file (``attacker_stem``, numbered where names repeat) and loaded by ``embed.load_embedder``."""
    from .embed import load_embedder

    free = model_free_attackers()
    names = unique_names([a.name for a in free] + [attacker_stem(model) for model, _ in models])[len(free):]
    return free + [
        SuiteAttacker(name, load_embedder(model, network, device=device, precision=precision, compile=compile),
                      "recogniser", model=model) for name, (model, network) in zip(names, models)]


def audit_suite(original_dir, released_dir, attackers, out_dir, options=AuditOptions(), training_set=None,
                embedding_cache=None):
    """Audit ``released_dir`` with every ``SuiteAttacker``; returns (and writes) the ``leakage.json`` dict.

    ``options`` (``AuditOptions``) and ``embedding_cache`` go to every ``audit.audit``; ``training_set``
    (the look-alike audit) only to the recognisers, the attackers whose similarity has a
    face-recognition meaning.
    """
    reports = {}
    for attacker in attackers:
        given = training_set if attacker.kind == "recogniser" else None
        reports[attacker.name] = audit(attacker.gallery or original_dir, released_dir, attacker.embedder, options,
                                       out_dir=os.path.join(out_dir, attacker.name), model=attacker.model,
                                       attacker=attacker.name, training_set=given, embedding_cache=embedding_cache)
    summary = suite_summary(original_dir, released_dir, attackers, reports, os.path.join(out_dir, LEAKAGE_JSON))
    write_json(summary["report"], summary, sort_keys=False, default=str)
    return summary


def suite_summary(original_dir, released_dir, attackers, reports, path):
    """The suite's record: the worst case first, then each attacker's figures."""
    leakage = {a.name: {key: reports[a.name].get(key) for key in LEAKAGE_KEYS} for a in attackers}
    return {
        "worst_case": worst_case(leakage),
        "original": os.fspath(original_dir), "released": os.fspath(released_dir),
        "attackers": {a.name: {"kind": a.kind, "model": a.model, **leakage[a.name],
                               "report": reports[a.name]["report"]} for a in attackers},
        "report": path,
    }
