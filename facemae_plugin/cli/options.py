"""What several verbs share, and what the parser needs without importing torch: argument types,
shared options, and the choices the library owns, restated here (a test keeps them equal)."""
import argparse
import math

from ..core.errors import UsageError, interval
from ..privatizers.methods import METHODS


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite ``kind`` within [low, high] (ends excluded where *_open)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected a value in {interval(low, high, low_open, high_open)}, "
                                             f"got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = number(int, 1)


COUNT = number(int, 0)


QUALITY = number(int, 0, 100)


MASK_RATIO = number(float, 0.0, 1.0, high_open=True)


def _device(text):
    from ..core.devices import pick_device

    try:
        pick_device(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_precision(p, default, why):
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=f"how a .pt recogniser runs: fp32 (float32), fast (fp16 on CUDA, bf16 on a CPU: "
                        f"channels_last under autocast, and bf16 inference in the OpenVINO graph of long jobs) "
                        f"or auto (fast where fp16/native bf16 exists, else fp32). Default {default}: {why}")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="keep a .pt recogniser eager on long jobs (by default a set of more than a few hundred "
                        "images runs through a compiled graph of it: OpenVINO's on a CPU, torch.compile's on "
                        "CUDA; the same embeddings to float rounding, several times faster)")


# The recogniser precisions as evaluation.embed.PRECISIONS spells them (a test keeps them equal).
PRECISIONS = ("auto", "fp32", "fast")


# The audit's choices as evaluation.retrieval.SEARCHES and evaluation.embedding_store.EMBEDDING_DTYPES
# spell them (a test keeps them equal); named here so that building the parser imports no torch.
AUDIT_SEARCHES = ("auto", "exact", "approximate")


AUDIT_EMBEDDING_DTYPES = ("float32", "float16")


# Options several verbs take, defined once; a verb lists the ones it takes (argparse parents).
SHARED_OPTIONS = {
    "common": (("--json", dict(action="store_true", help="print a JSON object on the last line")),
               ("--quiet", dict(action="store_true", help="no progress bars"))),
    "device": (("--device", dict(type=_device, default=None,
                                 help="cpu, cuda, cuda:1 (default: cuda if available)")),),
    "network": (("--network", dict(default=None, help="backbone of a .pt model: r18, r34, r50, r100, mbf")),),
    "batch-size": (("--batch-size", dict(type=POSITIVE_INT, default=64,
                                         help="images per forward pass (default 64)")),),
    "seed": (("--seed", dict(type=int, default=0, help="seed of the verb's random draws: same inputs and seed, "
                                                     "same bytes (default 0)")),),
    # convert and release: the seed a seeded method (facemae, noise, masked) draws its masks or noise from
    "secret-seed": (("--seed", dict(type=int, default=None, help=(
        "publish this seed: anyone with the sources (and the checkpoint) can then regenerate the release byte "
        "for byte. Default: a seed drawn from the operating system, kept in OUT_DIR.secret.json beside the "
        "output (mode 0600, read again by a resumed run), never inside it"))),),
    "overwrite": (("--overwrite", dict(action="store_true", help="replace an existing output (never an input)")),),
    "compile-training": (("--no-compile", dict(dest="compile", action="store_false", help=(
        "keep the training step eager (by default a job long enough to repay the build, images times epochs, "
        "compiles with torch.compile: on a CPU, from a few thousand images, the PReLU kernels of the trained "
        "recogniser and of IRM's teacher; on CUDA, from hundreds of thousands, the whole forward, loss and "
        "backward; a failure to compile falls back to eager with one line)"))),),
    # How convert and release privatize the images: the method and its parameters.
    "method": (
        ("--checkpoint", dict(default=None, help="facemae.pt (needed by --method facemae)")),
        ("--method", dict(choices=tuple(METHODS), default="facemae", help="; ".join(
            f"{name}: {spec.summary}" for name, spec in METHODS.items()) + " (default facemae)")),
        ("--mask-ratio", dict(type=MASK_RATIO, default=0.75, help="facemae/masked (default 0.75)")),
        ("--output", dict(choices=("full", "paste"), default="full", help="facemae output mode")),
        ("--k", dict(type=POSITIVE_INT, default=1, help="reconstructions per image (default 1)")),
        ("--sigma", dict(type=number(float, 0.0, low_open=True), default=3.0,
                         help="blur sigma in pixels (default 3)")),
        ("--block-size", dict(type=POSITIVE_INT, default=8, help="pixelate block in pixels (default 8)")),
        ("--noise-std", dict(type=number(float, 0.0), default=25.0, help="noise std in grey levels (default 25)")),
        ("--patch-size", dict(type=POSITIVE_INT, default=None,
                              help="masked: patch size (default: the checkpoint's, else 8)")),
        ("--quality", dict(type=QUALITY, default=95, help="JPEG quality (default 95)")),
        ("--workers", dict(type=COUNT, default=None,
                           help="decode/encode processes (default: cores - 1; 0 = in this process)")),
        ("--autocast", dict(action="store_true", help="fp16 on CUDA / bf16 on CPU for the model")),
    ),
}


_PARENTS = {}


def parents(*names):
    """The argparse parent parsers holding the shared options ``names``, built once each."""
    for name in names:
        if name not in _PARENTS:
            parent = argparse.ArgumentParser(add_help=False)
            for flag, kwargs in SHARED_OPTIONS[name]:
                parent.add_argument(flag, **kwargs)
            _PARENTS[name] = parent
    return [_PARENTS[name] for name in names]
