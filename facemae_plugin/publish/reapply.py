"""The ``reapply`` attacker: the method is public (Kerckhoffs), so the attacker privatizes the
candidate originals the same way, with every parameter the card publishes, and searches the
release among them with the pixel attacker (``reapply``) and with each recogniser of the suite
(``reapply-<name>``): a recogniser may match two privatizations of a face where pixels do not.

A deterministic method (blur, pixelate) or a published seed gives the attacker the release's
very bytes: every source is found. A secret seed leaves the attacker a seed of its own, so what
is measured is how much one privatization of a face resembles another of the same face.
"""
from ..core.keyseed import seed_for_key
from ..evaluation.attackers import PixelAttacker
from ..evaluation.suite import SuiteAttacker

REAPPLY = "reapply"
_ATTACKER_SALT = 0x5EA991E  # the attacker's seed: unrelated to the secret, fixed by it (same audit, same figures)
_SEED_MASK = (1 << 63) - 1


def attacker_privatizer(privatizer):
    """What the attacker can run: ``privatizer`` itself when nothing of it is secret, else ``with_own_seed``."""
    return privatizer if privatizer.seed_public else with_own_seed(privatizer)


def with_own_seed(privatizer):
    """The method with the attacker's own seed: unrelated to the publisher's, fixed by it."""
    return privatizer.with_seed(seed_for_key(privatizer.seed, _ATTACKER_SALT) & _SEED_MASK)


def reapply_attackers(in_dir, folder, privatizer, settings, released=None, searchers=()):
    """The ``reapply`` attackers of a release of ``in_dir`` made by ``privatizer``: one searching with
    the pixel attacker, then one per recogniser among ``searchers`` (``SuiteAttacker``s), named
    ``reapply-<its name>``.

    Their gallery is ``in_dir`` converted once into ``folder`` by ``attacker_privatizer`` (with
    ``settings``, a ``ConvertSettings``); where that
    is ``privatizer`` itself and the release is given (``released``), the release is its own
    gallery: a conversion is deterministic, so converting again would give the same bytes.
    """
    from ..convert import convert

    attacker = attacker_privatizer(privatizer)
    if attacker is privatizer and released is not None:
        gallery = released
    else:
        convert(in_dir, folder, attacker, settings, overwrite=True, progress=False)
        gallery = folder
    return [SuiteAttacker(REAPPLY, PixelAttacker(), REAPPLY, gallery=gallery)] + [
        SuiteAttacker(f"{REAPPLY}-{s.name}", s.embedder, REAPPLY, model=s.model, gallery=gallery)
        for s in searchers if s.kind == "recogniser"]
