"""The one table of release methods: what each method's user sets, on the command line and in a
protocol variant, and whether its output depends on a seed.

``facemae convert --method``, its flags, ``make_privatizer``'s parameter check and the protocol's
variants all read this table, so a method or parameter is added in one place.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    params: dict  # privatizer parameter -> the `facemae convert` option (argparse dest) that sets it
    seeded: bool  # draws from (seed, record key): each seed gives another release
    summary: str


METHODS = {
    "facemae": Method({"mask_ratio": "mask_ratio", "output": "output"}, True,
                      "FaceMAE reconstruction of the masked face (needs --checkpoint)"),
    "blur": Method({"sigma": "sigma"}, False, "Gaussian blur"),
    "pixelate": Method({"block_size": "block_size"}, False, "block means"),
    "noise": Method({"std": "noise_std"}, True, "additive Gaussian noise"),
    "masked": Method({"patch_size": "patch_size", "mask_ratio": "mask_ratio"}, True,
                     "FaceMAE's mask, masked patches grey, no reconstruction"),
}
FACEMAE_RUNTIME = ("checkpoint", "device", "autocast")  # how the reconstructor runs, not what it releases


def allowed_params(method):
    """Every keyword ``make_privatizer(method, ...)`` accepts."""
    spec = METHODS[method]
    return (*spec.params, "k", *(("seed",) if spec.seeded else ()),
            *(FACEMAE_RUNTIME if method == "facemae" else ()))
