"""Where a protocol's data comes from: the synthetic default, two shard folders, or one folder split by identity.

``protocol.data`` takes one of three forms:

    synthetic (default)   the ``*_identities`` / ``*_images_per_identity`` sizes, rendered from the seed
    train + release       ``dict(train=DIR, release=DIR, val=[lfw.bin, ...])``: shards in either layout
    source + fraction     ``dict(source=DIR, fraction=0.5, val=[...])``: split by identity as
                          ``facemae split`` does (``fraction`` of the identities train, seeded by the
                          protocol's seed), the rest is released

Beside either form of the user's data, ``attacker=DIR`` names split C: people in neither split, whose
faces the adaptive attackers learn the method on (synthetic data draws its own C of
``attacker_identities``).

Train (A) trains the teacher and FaceMAE; release (B) is what every variant releases. Their
identities must differ: two shards need not share a label numbering (``facemae split`` renumbers
both parts), so identities are compared by their images: a release identity with any image
byte-identical to one of the training set's is an overlap.
"""
import hashlib
import os

import numpy as np

from ..formats.shard import FaceShard, lineage_problem
from .spec import ProtocolError

USER_KEYS = ("train", "release", "source")


def data_mode(data):
    """``synthetic``, ``dirs`` or ``source`` for a merged data block; mixed or partial forms are refused."""
    given = [key for key in USER_KEYS if data.get(key) is not None]
    if not given:
        if data.get("attacker"):
            raise ProtocolError("protocol.data.attacker: a shard of split C goes with train and release (or source); "
                                "synthetic data draws its own C of attacker_identities")
        return "synthetic"
    if given == ["source"]:
        if not 0.0 < float(data.fraction) < 1.0:
            raise ProtocolError(f"protocol.data.fraction must be in (0, 1), got {data.fraction}")
        mode = "source"
    elif sorted(given) == ["release", "train"]:
        mode = "dirs"
    else:
        raise ProtocolError(f"protocol.data: give train and release, or source (with fraction), not "
                            f"{' and '.join(given)}")
    if not data.get("val"):
        raise ProtocolError("protocol.data.val: name the verification sets (.bin) the recognisers are tested on")
    return mode


def val_sets(data, synthetic_bin=None):
    """``{name: path}`` of the verification sets: the synthetic held-out set first, then ``data.val``."""
    paths = ([synthetic_bin] if synthetic_bin else []) + [os.path.abspath(os.fspath(p)) for p in data.get("val") or ()]
    sets = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in sets:
            raise ProtocolError(f"protocol.data.val: two sets are named {name} ({sets[name]} and {path}); "
                                "give each verification set its own file name")
        if not os.path.isfile(path):
            raise ProtocolError(f"protocol.data.val: {path} not found")
        sets[name] = path
    return sets


def shard_fingerprint(path, name):
    """``FaceShard.fingerprint()`` of a protocol's shard, its problems named by the protocol key."""
    try:
        with FaceShard(path) as shard:
            return shard.fingerprint()
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"protocol.data.{name}: {exc}") from None


def shard_summary(path, name):
    """The fingerprint of a protocol's shard and the classes a recogniser trained on it needs."""
    fingerprint = shard_fingerprint(path, name)
    classes = fingerprint["identities"]
    if classes is None:  # layout B without a property file: the labels say
        with FaceShard(path) as shard:
            classes = int(shard.labels().max()) + 1 if len(shard) else 0
    return {"path": os.path.abspath(os.fspath(path)), "classes": int(classes), "fingerprint": fingerprint}


def image_digests(shard, progress=False, desc="hash"):
    """``[N]`` uint64: the first 8 bytes of each image payload's blake2b, in ``image_keys`` order."""
    from tqdm import tqdm

    digests = np.empty(len(shard), np.uint64)
    for i, key in enumerate(tqdm(shard.image_keys, desc=desc, unit="img", disable=not progress, leave=False)):
        digests[i] = int.from_bytes(hashlib.blake2b(shard.read(key)[1], digest_size=8).digest(), "little")
    return digests


def identity_overlap(train_dir, release_dir, progress=False):
    """``(identities of release sharing an image with train, images shared)``, by image bytes."""
    with FaceShard(train_dir) as train, FaceShard(release_dir) as release:
        known = np.unique(image_digests(train, progress, "train images"))
        digests = image_digests(release, progress, "release images")
        shared = np.isin(digests, known)  # [N_release]
        labels = release.labels()[shared]
    return int(len(np.unique(labels))), int(shared.sum())


def check_disjoint(first, second, progress=False, names=("train", "release")):
    """Refuse two splits (``shard_summary``s; ``names``: their keys in ``protocol.data``) that share a shard
    or any identity (``identity_overlap``)."""
    first_name, second_name = names
    if first["fingerprint"]["idx_sha256"] == second["fingerprint"]["idx_sha256"]:
        raise ProtocolError(f"protocol.data: {first_name} {first['path']} and {second_name} {second['path']} are "
                            f"the same shard; the {second_name} split must hold other people")
    identities, images = identity_overlap(first["path"], second["path"], progress)
    if identities:
        raise ProtocolError(f"protocol.data: {identities} identities of the {second_name} {second['path']} also "
                            f"appear in {first_name} {first['path']} ({images} identical images); the splits must "
                            "hold different people")


def check_trained_on(model, recorded, train, release, what):
    """A given model's recorded training data must be the train split, never the release split."""
    problem = lineage_problem({"path": release["path"], **release["fingerprint"]}, recorded,
                              {"path": train["path"], **train["fingerprint"]})
    if problem is not None:
        raise ProtocolError(f"protocol.{what}.checkpoint: {model} was {problem}")


def recorded_data(model):
    """The data a recogniser ``model.pt`` was trained on, from the ``summary.json`` beside it (or None)."""
    import json

    path = os.path.join(os.path.dirname(os.path.abspath(model)), "summary.json")
    try:
        with open(path) as f:
            return json.load(f).get("data")
    except (OSError, ValueError, AttributeError):
        return None
