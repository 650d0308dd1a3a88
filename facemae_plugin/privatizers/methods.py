"""The one registry of release methods: each declares everything the rest of the package asks of it.

A ``Method`` names its privatizer class, what its user sets (on the command line and in a
protocol variant), whether its output depends on a seed, the strength ``--target-leakage``
calibrates, whether the benchmark compares FaceMAE with it, and its colour in the trade-off plots.
``facemae convert --method`` and its flags, ``make_privatizer``, calibration, the protocol's
variants, verdicts and plots all read this table, so a method is added here and in the module
holding its privatizer class, nowhere else. It imports no torch: the command line builds its
parser from it, and ``make_privatizer`` imports the class only when one is made.
"""
import importlib
from dataclasses import dataclass
from typing import Optional

from ..core.errors import UsageError


@dataclass(frozen=True)
class Strength:
    """A method's strength parameter and the range bisection searches (weakest first): leakage falls
    as it grows."""

    param: str
    weakest: float
    strongest: float
    integer: bool = False


@dataclass(frozen=True)
class Method:
    params: dict  # privatizer parameter -> the `facemae convert` option (argparse dest) that sets it
    seeded: bool  # draws from (seed, record key): each seed gives another release
    summary: str
    factory: str  # "module:attribute" in this package (privatizers/): the privatizer, built from its params
    strength: Optional[Strength]  # what --target-leakage calibrates
    baseline: bool  # a method FaceMAE is compared with in the benchmark's verdicts
    colour: str  # in the trade-off plots
    runtime: tuple = ()  # how it runs, not what it releases (not part of its provenance)
    needs: tuple = ()  # (param, why) it cannot be made without
    from_model: tuple = ()  # params that default to the FaceMAE model's own (its recipe, its checkpoint)


METHODS = {
    "facemae": Method({"mask_ratio": "mask_ratio", "output": "output"}, True,
                      "FaceMAE reconstruction of the masked face (needs --checkpoint)",
                      "facemae:ReconstructionStage.from_checkpoint", Strength("mask_ratio", 0.0, 0.95),
                      baseline=False, colour="tab:red", runtime=("checkpoint", "device", "autocast"),
                      needs=(("checkpoint", "a checkpoint (--checkpoint facemae.pt)"),),
                      from_model=("mask_ratio", "output")),
    "blur": Method({"sigma": "sigma"}, False, "Gaussian blur", "baselines:GaussianBlur",
                   Strength("sigma", 0.25, 16.0), baseline=True, colour="tab:blue"),
    "pixelate": Method({"block_size": "block_size"}, False, "block means", "baselines:Pixelate",
                       Strength("block_size", 1, 32, integer=True), baseline=True, colour="tab:orange"),
    "noise": Method({"std": "noise_std"}, True, "additive Gaussian noise", "baselines:GaussianNoise",
                    Strength("std", 0.0, 128.0), baseline=True, colour="tab:green"),
    "masked": Method({"patch_size": "patch_size", "mask_ratio": "mask_ratio"}, True,
                     "FaceMAE's mask, masked patches grey, no reconstruction", "baselines:MaskedOnly.matching",
                     Strength("mask_ratio", 0.0, 0.95), baseline=True, colour="tab:purple",
                     runtime=("checkpoint",), from_model=("patch_size",)),
}
STRENGTHS = {name: method.strength for name, method in METHODS.items() if method.strength is not None}
BASELINE_METHODS = tuple(name for name, method in METHODS.items() if method.baseline)


def allowed_params(method):
    """Every keyword ``make_privatizer(method, ...)`` accepts."""
    spec = METHODS[method]
    return (*spec.params, "k", *(("seed",) if spec.seeded else ()), *spec.runtime)


def method_params(method, options, seed=None):
    """``make_privatizer``'s keywords for ``method`` read from ``options``, a mapping from the names of
    ``facemae convert``'s options (argparse dests) to values: the method's parameters and runtime
    settings, and ``seed`` (0 when None) if the method is seeded."""
    spec = METHODS[method]
    params = {param: options.get(dest) for param, dest in spec.params.items()}
    params.update({name: options.get(name) for name in spec.runtime})
    if spec.seeded:
        params["seed"] = 0 if seed is None else seed
    return params


def make_privatizer(method, **params):
    """The privatizer of ``method`` with ``params`` (``allowed_params``); an unknown method or
    parameter, or a missing one it needs, raises UsageError naming it."""
    if method not in METHODS:
        raise UsageError(f"unknown privatization method {method!r}; expected one of {', '.join(METHODS)}")
    unknown = sorted(set(params) - set(allowed_params(method)))
    if unknown:
        raise UsageError(f"method {method} takes no parameter(s) {unknown}; expected some of "
                         f"{sorted(allowed_params(method))}")
    spec = METHODS[method]
    for param, what in spec.needs:
        if not params.get(param):
            raise UsageError(f"method {method} needs {what}")
    return _factory(spec.factory)(**params)


def _factory(reference):
    module_name, _, attribute = reference.partition(":")
    target = importlib.import_module(f"{__package__}.{module_name}")
    for name in attribute.split("."):
        target = getattr(target, name)
    return target
