"""What a protocol is: its defaults, its variants (checked whole before anything runs), and names.

A protocol file sets ``protocol = dict(...)`` (overriding ``PROTOCOL_DEFAULTS``, unknown keys named)
and, for the benchmark, ``variants = [dict(name, method, ..., seeds)]``. A variant may set the
parameters of its method (``METHOD_PARAMS``, from ``privatizers.methods``); its steps are keyed by
``variant_inputs`` (everything but its display name).
"""
import copy
import json
import os
import re

from easydict import EasyDict as edict

from ..config import check_keys, exec_config_file
from ..core.errors import FaceMAEError
from ..privatizers.methods import METHODS

PROTOCOL_DEFAULTS = {
    "seed": 0,
    # The synthetic sizes, or the user's data (train + release, or source + fraction; see datasets).
    # attacker: people in no other split, whose faces the adaptive attackers learn the method on (as
    # unseen by the reconstructor as the released people are); 0 identities / None: split A instead.
    "data": {"train_identities": 100, "train_images_per_identity": 20, "release_identities": 100,
             "release_images_per_identity": 15, "holdout_identities": 50, "holdout_images_per_identity": 20,
             "attacker_identities": 100, "attacker_images_per_identity": 20,
             "num_pairs": 1000, "detail": 0.0,
             "train": None, "release": None, "source": None, "fraction": 0.5, "val": None, "attacker": None},
    # CosFace margins: converge faster than ArcFace's on a few hundred identities.
    # checkpoint: a recogniser trained on the train split already (model.pt); nothing is trained then.
    "teacher": {"network": "mbf", "num_epoch": 4, "warmup_epoch": 1, "batch_size": 64, "lr": 0.1,
                "margin_list": (1.0, 0.0, 0.4), "seed": 2048, "checkpoint": None},
    # Batch 32: twice the updates of 64 for the same CPU time, which a short run needs more than
    # gradient precision.
    # w_visible: weight of the pixel loss on visible patches (0 is MAE's masked-only loss).
    # checkpoint: a FaceMAE (with IRM) trained on the train split already (facemae.pt).
    "facemae": {"preset": "tiny", "patch_size": 8, "mask_ratio": 0.75, "output": "full", "irm_weight": 1.0,
                "w_visible": 1.0, "num_epoch": 10, "warmup_epoch": 1, "batch_size": 32, "lr": 1e-3,
                "checkpoint": None},
    # Every released variant trains this same recogniser with the same budget.
    "recogniser": {"network": "mbf", "num_epoch": 3, "warmup_epoch": 1, "batch_size": 64, "lr": 0.1,
                   "margin_list": (1.0, 0.0, 0.4), "seed": 2048},
    "release": {"quality": 95, "batch_size": 64},
    "device": None,  # None: CUDA when available, else CPU
    "mixed_precision": True,  # fp16 on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere
    "num_workers": 2,
}

# Privatizers whose output does not depend on a seed: one release serves every seed of their row.
DETERMINISTIC_METHODS = ("original", *(name for name, spec in METHODS.items() if not spec.seeded))
ORIGINAL = {"name": "original", "method": "original"}
# What a variant of each method may set: its privatizer's parameters (privatizers.methods), less those
# the protocol fixes (masked uses the FaceMAE recipe's patch size), plus the FaceMAE model to release with.
PROTOCOL_FIXED = {"masked": ("patch_size",)}
PROTOCOL_ONLY = {"facemae": ("irm", "pretrain")}
METHOD_PARAMS = {"original": (), **{
    name: (*(p for p in spec.params if p not in PROTOCOL_FIXED.get(name, ())), *PROTOCOL_ONLY.get(name, ()))
    for name, spec in METHODS.items()}}
# A variant of a method with a strength may ask for the weakest setting that meets a leakage
# target instead of naming one (``publish.calibrate``; the teacher is the attacker).
TARGET_KEY = "target_leakage"
VARIANT_KEYS = {"name", "method", TARGET_KEY, *(key for params in METHOD_PARAMS.values() for key in params)}


def slug(name):
    """A variant name as a file name: ``FaceMAE full 0.75`` -> ``facemae_full_0.75``."""
    return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_")


class ProtocolError(FaceMAEError):
    """A protocol or variant that cannot run; the message names the key."""


def merge_protocol(given, defaults=PROTOCOL_DEFAULTS, where="protocol"):
    """``defaults`` updated by ``given``, recursively; an unknown key is an error naming it."""
    merged = copy.deepcopy(defaults)
    if given is not None and not isinstance(given, dict):
        raise ProtocolError(f"{where} must be a dict, got {type(given).__name__} {given!r:.60}")
    check_keys(given or {}, defaults, where, error=ProtocolError)
    for key, value in (given or {}).items():
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ProtocolError(f"{where}.{key} must be a dict, got {type(value).__name__}")
            merged[key] = merge_protocol(value, defaults[key], f"{where}.{key}")
        else:
            merged[key] = value
    return edict(merged)


def load_python_config(path, names):
    """Import a config file and return its module-level ``names`` (missing ones as None)."""
    if not os.path.isfile(path):
        raise ProtocolError(f"{path}: config file not found")
    module = exec_config_file(path, "facemae_protocol_config")
    return [getattr(module, name, None) for name in names]


def check_variant(variant):
    """The whole variant, checked before any step runs: its method, its keys and their values."""
    if not isinstance(variant, dict) or "name" not in variant or "method" not in variant:
        raise ProtocolError(f"variant {variant!r}: expected a dict with name and method")
    name, method = variant["name"], variant["method"]
    if method not in METHOD_PARAMS:
        raise ProtocolError(f"variant {name}: unknown method {method!r}; expected one of {', '.join(METHOD_PARAMS)}")
    extra = sorted(set(variant) - {"name", "method", *METHOD_PARAMS[method],
                                   *((TARGET_KEY,) if method != "original" else ())})
    if extra:
        raise ProtocolError(f"variant {name}: method {method} takes no {', '.join(extra)}; expected some of "
                            f"{', '.join(METHOD_PARAMS[method]) or 'nothing'}")
    if TARGET_KEY in variant:
        _check_target(variant)
    if method == "facemae":
        _check_facemae_variant(variant)
    elif method != "original":
        from ..privatizers.methods import make_privatizer

        try:  # a baseline is cheap to build: its constructor checks every value
            make_privatizer(method, **{key: variant[key] for key in METHOD_PARAMS[method] if key in variant})
        except FaceMAEError as exc:
            raise ProtocolError(f"variant {name}: {exc}") from None
    return variant


def _check_target(variant):
    from ..privatizers.methods import STRENGTHS

    target, param = variant[TARGET_KEY], STRENGTHS[variant["method"]].param
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target <= 1.0:
        raise ProtocolError(f"variant {variant['name']}: {TARGET_KEY} {target!r}, expected a fraction in [0, 1]")
    if param in variant:
        raise ProtocolError(f"variant {variant['name']}: {TARGET_KEY} chooses {param}; give one of them, not both")


def _check_facemae_variant(variant):
    name = variant["name"]
    if variant.get("irm", True) not in (True, False):
        raise ProtocolError(f"variant {name}: irm must be True or False")
    trained = merge_protocol(variant.get("pretrain"), PROTOCOL_DEFAULTS["facemae"], f"variant {name}.pretrain")
    output = variant.get("output", trained.output)
    if output not in ("full", "paste"):
        raise ProtocolError(f"variant {name}: output {output!r}, expected full or paste")
    ratio = variant.get("mask_ratio", trained.mask_ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ProtocolError(f"variant {name}: mask_ratio {ratio!r}, expected a number in [0, 1)")


def variant_inputs(variant, seed=None):
    """What decides a variant's steps (everything but its display name), to key them by."""
    inputs = {key: value for key, value in variant.items() if key != "name"}
    return json.loads(json.dumps(inputs if seed is None else {**inputs, "seed": seed}))


def facemae_step_name(irm=True, overrides=None):
    """``facemae``, ``facemae_no_irm`` or ``facemae-<key><value>...`` for a model trained with overrides."""
    name = "facemae" if irm else "facemae_no_irm"
    for key, value in sorted((overrides or {}).items()):
        name += f"-{key}{value}"
    return name


# --------------------------------------------------------------------------- steps
