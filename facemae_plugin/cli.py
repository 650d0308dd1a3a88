"""``facemae <verb>``: the command line.

Each verb prints its details, then one summary line; with ``--json`` a JSON
object follows on the last line. Bad input ends with one ``error:`` line on
stderr and exit status 2 (``FACEMAE_DEBUG=1`` shows the traceback instead).
"""
import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading

from . import __version__
from .core.errors import FaceMAEError, UsageError, interval
from .release.methods import METHODS


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, low=None, high=None, low_open=False, high_open=False):
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


POSITIVE_INT = _number(int, 1)
COUNT = _number(int, 0)
QUALITY = _number(int, 0, 100)
MASK_RATIO = _number(float, 0.0, 1.0, high_open=True)


def _device(text):
    from .core.devices import pick_device

    try:
        pick_device(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _synth(args):
    from .data.synthetic import make_synthetic_dataset

    result = make_synthetic_dataset(
        args.out_dir, identities=args.identities, images_per_identity=args.images_per_identity,
        holdout_identities=args.holdout_identities, seed=args.seed, num_pairs=args.pairs,
        progress=not args.quiet, detail=args.detail, overwrite=args.overwrite,
    )
    summary = (f"synth: {result['images']} images of {result['identities']} identities and "
               f"{result['pairs']} held-out pairs written to {args.out_dir}")
    return summary, result


def _inspect(args):
    from .evaluation.inspection import format_inspection, inspect_path

    info = inspect_path(args.path, progress=not args.quiet)
    print(format_inspection(info))
    if info["kind"] == "bin":
        accuracy = info.get("raw_pixel_accuracy")
        summary = f"inspect: {info['pairs']} pairs" + (
            f", raw-pixel accuracy {accuracy * 100:.2f}%" if accuracy is not None else "")
    else:
        summary = f"inspect: layout {info['layout']}, {info['images']} images, {info['identities']} identities"
    return summary, info


def _folder2rec(args):
    from .formats.folders import folder_to_rec

    result = folder_to_rec(args.image_dir, args.out_dir, quality=args.quality, progress=not args.quiet,
                           overwrite=args.overwrite)
    return f"folder2rec: {result['images']} images of {result['identities']} identities -> {args.out_dir}", result


def _rec2folder(args):
    from .formats.folders import rec_to_folder

    result = rec_to_folder(args.rec_dir, args.out_dir, progress=not args.quiet, overwrite=args.overwrite)
    return f"rec2folder: {result['images']} images of {result['identities']} identities -> {args.out_dir}", result


def _pairs2bin(args):
    from .formats.folders import pairs_to_bin

    result = pairs_to_bin(args.pairs, args.out_bin, quality=args.quality, progress=not args.quiet,
                          overwrite=args.overwrite)
    return f"pairs2bin: {result['pairs']} pairs ({result['same']} same) -> {args.out_bin}", result


def _split(args):
    from .formats.split import split_by_identity

    result = split_by_identity(args.in_dir, args.out_a, args.out_b, fraction=args.fraction, seed=args.seed,
                               overwrite=args.overwrite, progress=not args.quiet)
    a, b = result["a"], result["b"]
    return (f"split: {a['identities']} identities ({a['images']} images) -> {args.out_a}, "
            f"{b['identities']} identities ({b['images']} images) -> {args.out_b}", result)


def _pretrain(args):
    from .config import load_config
    from .train.pretrain import pretrain

    result = pretrain(load_config(args.config), device=args.device, progress=not args.quiet,
                      resume=args.resume, compile=args.compile)
    last = result["epochs"][-1] if result["epochs"] else {}
    parts = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("epoch", "step", "losses", "parts"))
    return f"pretrain: {result['steps']} steps, {parts} -> {result['checkpoint']}", result


def _train(args):
    from .config import load_config
    from .train.recognise import train_recogniser

    result = train_recogniser(load_config(args.config), device=args.device, progress=not args.quiet,
                              compile=args.compile)
    val = result["epochs"][-1].get("val", {}) if result["epochs"] else {}
    shown = "  ".join(f"{name} {acc * 100:.2f}%" for name, acc in val.items())
    return f"train: {result['steps']} steps {shown} -> {result['model']}", result


def _verify(args):
    from .formats.binfile import load_bin
    from .core.devices import pick_device
    from .evaluation.embed import load_embedder
    from .evaluation.bin_report import verify_loaded

    # Every .bin is read (restricted unpickler) before the model loads: bad sets fail fast.
    sets = [(path, *load_bin(path)) for path in args.bins]
    device = str(pick_device(args.device))
    embedder = load_embedder(args.model, args.network, device=device, precision=args.precision,
                            compile=args.compile)
    reports = []
    for path, images, issame in sets:
        report = verify_loaded(embedder, path, images, issame, args.batch_size, device,
                               roc_dir=args.roc_dir, progress=not args.quiet)
        reports.append({k: v for k, v in report.items() if k not in ("tpr", "fpr")})
        print(f"[{report['name']}] XNorm: {report['xnorm']:.6f}  Accuracy-Flip: "
              f"{report['accuracy_flip']:.5f}+-{report['accuracy_std']:.5f}  TAR@FAR={report['far_target']:g}: "
              f"{report['tar_at_far']:.5f}+-{report['tar_std']:.5f} (FAR {report['far']:.5f})")
    shown = "  ".join(f"{r['name']} {r['accuracy_flip'] * 100:.2f}%" for r in reports)
    return (f"verify: {shown} ({embedder.precision})",
            {"model": args.model, "device": device, "precision": embedder.precision, "runtime": embedder.runtime,
             "sets": reports})


def _export(args):
    from .export import export_reconstructor, export_recogniser

    if args.facemae:
        if args.model is not None:
            raise UsageError(f"give either MODEL.pt or --facemae, not both (got {args.model} and {args.facemae})")
        result = export_reconstructor(args.facemae, args.out, mask_ratio=args.mask_ratio, output=args.output,
                                      opset=args.opset, check=not args.no_check, overwrite=args.overwrite)
        return (f"export: FaceMAE {args.facemae} (mask ratio {args.mask_ratio}, output {args.output}) "
                f"-> {args.out}", result)
    if args.model is None or args.network is None:
        raise UsageError("export needs MODEL.pt OUT.onnx --network NAME (or --facemae facemae.pt OUT.onnx)")
    result = export_recogniser(args.model, args.out, network=args.network, opset=args.opset,
                               check=not args.no_check, overwrite=args.overwrite)
    checked = f", checked (min cosine {result['min_cosine']:.6f})" if "min_cosine" in result else ""
    return f"export: {args.network} {args.model} -> {args.out}{checked}", result


def _demo(args):
    import shlex

    from .protocol.demo import load_protocol_file, run_demo

    result = run_demo(args.work_dir, load_protocol_file(args.protocol), progress=not args.quiet,
                      command="facemae " + shlex.join(args.argv))
    rows = "; ".join(f"{row['variant']} {row['accuracy'] * 100:.2f}% accuracy, {row['instance_rank1'] * 100:.1f}% "
                     "rank-1 leakage" for row in result["rows"])
    return f"demo: {rows} -> {result['work_dir']}/report.json, card {result['card']}", result


def _convert(args):
    from .convert import convert, privatizer_from_args

    shard, num_shards, distributed = args.shard, args.num_shards, False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and shard is None:  # under torchrun: one shard per rank
        if num_shards not in (None, world_size):
            raise UsageError(f"under torchrun --num-shards must equal WORLD_SIZE={world_size} (one shard per "
                             f"rank), got {num_shards}")
        shard, num_shards, distributed = int(os.environ["RANK"]), world_size, True
    if shard is not None and num_shards is None:
        raise UsageError("--shard I needs --num-shards N")
    quiet = args.quiet or (distributed and shard != 0)
    with _secret_seed(args):
        result = convert(args.in_dir, args.out_dir, privatizer_from_args(args), quality=args.quality,
                         batch_size=args.batch_size, workers=args.workers, num_shards=num_shards or 1, shard=shard,
                         overwrite=args.overwrite, progress=not quiet, distributed=distributed,
                         keep_shards=args.keep_shards)
    done = "merged into" if result["merged"] else "shard(s) written under"
    rate = f", {result['images_per_s']:.1f} img/s" if result["images_per_s"] else ""
    return (f"convert: {result['images_in']} images (layout {result['layout']}, {result['method']}, "
            f"k={result['k']}) -> {result['images_out']} {done} {args.out_dir}; shards run "
            f"{result['shards_run']}, already done {result['shards_skipped']}{rate}"), result


@contextlib.contextmanager
def _secret_seed(args, work_dirs=()):
    """Within it, ``args.secret_seed`` is a seeded method's secret (``convert.secret.drawn_seed``) when
    ``--seed`` is not given, else None."""
    from .convert.secret import drawn_seed

    if args.seed is not None or not METHODS[args.method].seeded:
        args.secret_seed = None
        yield
        return
    with drawn_seed(args.out_dir, work_dirs=work_dirs) as (args.secret_seed, _):
        yield


def _merge(args):
    from .convert import merge

    result = merge(args.out_dir, overwrite=args.overwrite, keep_shards=args.keep_shards)
    return f"merge: {result['shards']} shard(s), {result['records']} records -> {args.out_dir}", result


def _arcface_train(args):
    import logging

    from .arcface import arcface_train

    # The plugin's notes (compat MXNet, patches, hooks) on stderr while the verb runs; train_v2
    # configures the root logger itself, so these do not propagate there twice.
    plugin_log = logging.getLogger("facemae_plugin")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    plugin_log.addHandler(handler)
    plugin_log.setLevel(logging.INFO)
    plugin_log.propagate = False
    try:
        result = arcface_train(args.arcface_root, args.config, dry_run=args.dry_run, device=args.device)
    finally:
        plugin_log.removeHandler(handler)
        plugin_log.propagate = True
    stage = (result["facemae"] or {}).get("stage", "off")
    if not result["trained"]:
        hooks = "; ".join(result["hooks"]) or "none"
        return (f"arcface-train: checked {result['arcface_root']} ({result['arcface_commit']}), facemae {stage}, "
                f"hooks: {hooks} (dry run, nothing trained)", result)
    return f"arcface-train: arcface_torch trained (facemae {stage}) -> {result['output']}", result


def _audit(args):
    from .core.devices import pick_device
    from .evaluation.attackers import worst_text
    from .evaluation.audit import check_release
    from .evaluation.suite import audit_suite, load_suite

    check_release(args.original, args.released, args.training_set)  # mismatched shards fail before the model loads
    device = str(pick_device(args.device))
    attackers = load_suite([(args.model, args.network)] if args.model is not None else [], device, args.precision,
                           args.compile)
    out_dir = args.out or os.path.join(args.released, "audit")
    summary = audit_suite(args.original, args.released, attackers, out_dir, batch_size=args.batch_size,
                          device=device, max_impostors=args.max_impostors, seed=args.seed, progress=not args.quiet,
                          search=args.search, embedding_dtype=args.embedding_dtype,
                          recall_queries=args.recall_queries, training_set=args.training_set,
                          embedding_cache=args.embedding_cache)
    figures = "; ".join(_attacker_text(name, entry) for name, entry in summary["attackers"].items())
    lookalikes = ""
    if args.model is not None:
        with open(summary["attackers"][attackers[-1].name]["report"]) as f:
            lookalikes = _lookalike_text(json.load(f)["training_set"])
    first = next(iter(summary["attackers"].values()))
    return (f"audit: {first['queries']} released vs {first['gallery']} originals; worst case: "
            f"{worst_text(summary['worst_case'])}; {figures}{lookalikes} -> {summary['report']}"), summary


def _attacker_text(name, entry):
    reid = "n/a" if entry["reid_rank1"] is None else f"{entry['reid_rank1'] * 100:.2f}%"
    tar = "n/a" if entry["tar_at_far"] is None else f"{entry['tar_at_far']:.4f}"
    return (f"{name}: instance rank-1 {entry['instance_rank1'] * 100:.2f}% "
            f"rank-5 {entry['instance_rank5'] * 100:.2f}%, "
            f"re-identification rank-1 {reid}, TAR@FAR={entry['far_target']:g} {tar}")


def _lookalike_text(lookalikes):
    if lookalikes is None:
        return ""
    verdict = "FLAGGED" if lookalikes["flagged"] else "not flagged"
    return (f"; look-alikes of the {lookalikes['training_identities']} training identities: released "
            f"{lookalikes['released_fraction'] * 100:.2f}% vs originals {lookalikes['original_fraction'] * 100:.2f}% "
            f"(McNemar z {lookalikes['mcnemar_z']:.1f}, {verdict})")


def _benchmark(args):
    import shlex

    from .protocol.benchmark import run_benchmark

    result = run_benchmark(args.config, args.work_dir, args.out, only=args.only, finished_only=args.finished_only,
                           progress=not args.quiet, command="facemae " + shlex.join(args.argv))
    print(result["table"])
    print("\n".join(v["text"] for v in result["verdicts"].values()))
    compact = {"benchmark": "privacy_utility", "rows": len(result["rows"]), "out_dir": result["out_dir"],
               **{name: verdict["holds"] for name, verdict in result["verdicts"].items()},
               "summary": {e["variant"]: {k: e[k][0] for k in ("accuracy", "instance_rank1")}
                           for e in result["summary"]}}
    return (f"benchmark: {len(result['rows'])} row(s) -> {os.path.join(result['out_dir'], 'results.md')} "
            f"(tradeoff.png, samples.png beside it)"), compact


def _release(args):
    import shlex

    from .convert import privatizer_from_args
    from .core.devices import pick_device
    from .evaluation.attackers import worst_text
    from .publish.release import PARTIAL_SUFFIX, release_dataset

    attackers = _attackers(args.attacker, args.attacker_network)
    device = str(pick_device(args.device))
    with _secret_seed(args, work_dirs=[os.path.abspath(args.out_dir) + PARTIAL_SUFFIX]):
        card = release_dataset(
            args.in_dir, args.out_dir, privatizer_from_args(args), attackers, val_bins=args.val or (),
            training_set=args.training_set, quality=args.quality, batch_size=args.batch_size, workers=args.workers,
            device=device, overwrite=args.overwrite, progress=not args.quiet,
            command="facemae " + shlex.join(args.argv), precision=args.precision, search=args.search,
            compile=args.compile, seed=args.seed or 0, target_leakage=args.target_leakage,
            privatizer_at=lambda value: privatizer_from_args(_with_strength(args, value)), reapply=args.reapply,
            adaptive=args.adaptive)
    leaks = "; ".join(_attacker_text(a["name"], a["leakage"]) for a in card["attackers"])
    return (f"release: {card['released']['images']} images ({card['method']['method']}) -> {args.out_dir}; worst "
            f"case: {worst_text(card['worst_case'])}; {leaks}; card {os.path.join(args.out_dir, 'RELEASE.md')}"), card


def _with_strength(args, value):
    """``args`` with the method's strength parameter (``release.methods.Method.strength``) set to ``value``."""
    method = METHODS[args.method]
    changed = argparse.Namespace(**vars(args))
    setattr(changed, method.params[method.strength.param], value)
    return changed


def _attackers(models, networks):
    """``--attacker`` models with their ``--attacker-network``: one network per attacker, or one for all."""
    from .publish.release import Attacker

    networks = networks or [None]
    if len(networks) not in (1, len(models)):
        raise UsageError(f"--attacker-network: give one network for all attackers or one per --attacker "
                         f"({len(models)}), got {len(networks)}")
    if len(networks) == 1:
        networks = networks * len(models)
    return [Attacker(model, network) for model, network in zip(models, networks)]


def _add_precision(p, default, why):
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
        "keep the training step eager (by default a job long enough to repay building the graph, images times "
        "epochs, compiles its forward, loss and backward with torch.compile: tens of thousands of images on a "
        "CPU, fewer on CUDA; a failure to compile falls back to eager with one line)"))),),
    # How convert and release privatize the images: the method and its parameters.
    "method": (
        ("--checkpoint", dict(default=None, help="facemae.pt (needed by --method facemae)")),
        ("--method", dict(choices=tuple(METHODS), default="facemae", help="; ".join(
            f"{name}: {spec.summary}" for name, spec in METHODS.items()) + " (default facemae)")),
        ("--mask-ratio", dict(type=MASK_RATIO, default=0.75, help="facemae/masked (default 0.75)")),
        ("--output", dict(choices=("full", "paste"), default="full", help="facemae output mode")),
        ("--k", dict(type=POSITIVE_INT, default=1, help="reconstructions per image (default 1)")),
        ("--sigma", dict(type=_number(float, 0.0, low_open=True), default=3.0,
                         help="blur sigma in pixels (default 3)")),
        ("--block-size", dict(type=POSITIVE_INT, default=8, help="pixelate block in pixels (default 8)")),
        ("--noise-std", dict(type=_number(float, 0.0), default=25.0, help="noise std in grey levels (default 25)")),
        ("--patch-size", dict(type=POSITIVE_INT, default=None,
                              help="masked: patch size (default: the checkpoint's, else 8)")),
        ("--quality", dict(type=QUALITY, default=95, help="JPEG quality (default 95)")),
        ("--workers", dict(type=COUNT, default=None,
                           help="decode/encode processes (default: cores - 1; 0 = in this process)")),
        ("--autocast", dict(action="store_true", help="fp16 on CUDA / bf16 on CPU for the model")),
    ),
}
_PARENTS = {}


def _parents(*names):
    """The argparse parent parsers holding the shared options ``names``, built once each."""
    for name in names:
        if name not in _PARENTS:
            parent = argparse.ArgumentParser(add_help=False)
            for flag, kwargs in SHARED_OPTIONS[name]:
                parent.add_argument(flag, **kwargs)
            _PARENTS[name] = parent
    return [_PARENTS[name] for name in names]


def _add_synth(verbs):
    p = verbs.add_parser("synth", parents=_parents("common", "seed", "overwrite"),
                         help="write the synthetic default dataset (shard + held-out .bin)",
                         description="Draw face-like images of synthetic identities: OUT_DIR/train.rec, "
                                     "train.idx, property, and holdout.bin of identities not in the shard.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--identities", type=POSITIVE_INT, default=200, help="training identities (default 200)")
    p.add_argument("--images-per-identity", type=POSITIVE_INT, default=20, help="images per identity (default 20)")
    p.add_argument("--holdout-identities", type=POSITIVE_INT, default=50,
                   help="identities used only in holdout.bin (default 50)")
    p.add_argument("--pairs", type=POSITIVE_INT, default=1000, help="verification pairs, half same (default 1000)")
    p.add_argument("--detail", type=float, default=0.0,
                   help="0..1: how much identity lives in fine features (freckles, skin texture) rather "
                        "than in head shape and colours; fine features are what blur and pixelation "
                        "remove (default 0)")
    p.set_defaults(run=_synth)


def _add_inspect(verbs):
    p = verbs.add_parser("inspect", parents=_parents("common"),
                         help="describe a shard directory or a .bin",
                         description="Layout, counts, identities, label range, image size and first keys of "
                                     "a shard; pairs and raw-pixel verification accuracy of a .bin.")
    p.add_argument("path", metavar="PATH", help="shard directory, .rec file or .bin file")
    p.set_defaults(run=_inspect)


def _add_folder2rec(verbs):
    p = verbs.add_parser("folder2rec", parents=_parents("common", "overwrite"),
                         help="IMAGE_DIR/<identity>/*.jpg -> layout-A shard",
                         description="Pack aligned 112x112 faces, one folder per identity (sorted names "
                                     "become labels 0..N-1), into OUT_DIR/train.rec/.idx/property.")
    p.add_argument("image_dir", metavar="IMAGE_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--quality", type=QUALITY, default=95, help="JPEG quality for non-JPEG inputs (default 95)")
    p.set_defaults(run=_folder2rec)


def _add_rec2folder(verbs):
    p = verbs.add_parser("rec2folder", parents=_parents("common", "overwrite"),
                         help="shard -> OUT_DIR/<label>/<key>.jpg",
                         description="Write every image of a shard, bytes unchanged, into label folders.")
    p.add_argument("rec_dir", metavar="REC_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.set_defaults(run=_rec2folder)


def _add_pairs2bin(verbs):
    p = verbs.add_parser("pairs2bin", parents=_parents("common", "overwrite"),
                         help="pairs list -> verification .bin",
                         description="Lines 'path_a path_b 0|1' (paths relative to the list's folder) "
                                     "become an lfw.bin-style verification set.")
    p.add_argument("pairs", metavar="PAIRS.txt")
    p.add_argument("out_bin", metavar="OUT.bin")
    p.add_argument("--quality", type=QUALITY, default=95, help="JPEG quality for non-JPEG inputs (default 95)")
    p.set_defaults(run=_pairs2bin)


def _add_split(verbs):
    p = verbs.add_parser("split", parents=_parents("common", "seed", "overwrite"),
                         help="shard -> two shards of disjoint identities",
                         description="Split IN_DIR by identity: a seeded random FRACTION of the identities goes "
                                     "to OUT_A (e.g. FaceMAE and teacher training), the rest to OUT_B (the set "
                                     "to release, identities FaceMAE never saw). Labels are renumbered 0..n-1 "
                                     "in original order; image bytes are copied unchanged.")
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_a", metavar="OUT_A")
    p.add_argument("out_b", metavar="OUT_B")
    p.add_argument("--fraction", type=_number(float, 0.0, 1.0, True, True), default=0.5,
                   help="share of identities in OUT_A (default 0.5)")
    p.set_defaults(run=_split)


def _add_pretrain(verbs):
    p = verbs.add_parser("pretrain", parents=_parents("common", "device", "compile-training"),
                         help="pretraining: train the FaceMAE reconstructor (pixel loss + IRM)",
                         description="Train FaceMAE from a recipe with a config.mae block (and config.irm "
                                     "for instance relation matching). Writes facemae.pt, resume.pt and a "
                                     "reconstruction grid PNG per epoch to config.output. Runs under "
                                     "torchrun for several processes.")
    p.add_argument("config", metavar="CONFIG", help="recipe file, e.g. recipes/synth_facemae_tiny.py")
    p.add_argument("--resume", action="store_true", help="continue from config.output/resume.pt")
    p.set_defaults(run=_pretrain)


def _add_train(verbs):
    p = verbs.add_parser("train", parents=_parents("common", "device", "compile-training"),
                         help="train a recogniser with arcface_torch's config keys",
                         description="Margin-softmax recognition training (arcface_torch's recipe) on "
                                     "config.rec; verifies on config.val_targets each epoch and writes "
                                     "model.pt with arcface_torch's state_dict keys. Runs under torchrun.")
    p.add_argument("config", metavar="CONFIG", help="recipe file, e.g. recipes/synth_teacher_mbf.py")
    p.set_defaults(run=_train)


def _add_verify(verbs):
    p = verbs.add_parser("verify", parents=_parents("common", "network", "batch-size", "device"),
                         help="10-fold verification accuracy of a recogniser on .bin sets",
                         description="arcface_torch's verification test on each .bin: accuracy-flip mean "
                                     "and std, XNorm, TAR@FAR=1e-3 and optionally a ROC curve PNG.")
    p.add_argument("bins", metavar="BIN", nargs="+", help="verification sets (lfw.bin, cfp_fp.bin, ...)")
    p.add_argument("--model", required=True, help="model.pt (arcface_torch state_dict) or model.onnx")
    p.add_argument("--roc-dir", default=None, help="write <name>_roc.png per set into this folder")
    _add_precision(p, "auto", "verification accuracy moves by at most a few pairs")
    p.set_defaults(run=_verify)


def _add_export(verbs):
    p = verbs.add_parser("export", parents=_parents("common", "network", "overwrite"),
                         help="recogniser or FaceMAE reconstructor -> checked ONNX",
                         description="MODEL.pt OUT.onnx --network NAME: InsightFace-ready recogniser "
                                     "(input 'data' [N,3,112,112], normalisation outside the graph). "
                                     "--facemae facemae.pt OUT.onnx: reconstructor taking images and "
                                     "ids_shuffle. Each file is checked before it is renamed into place.")
    p.add_argument("model", metavar="MODEL.pt", nargs="?", default=None, help="recogniser state_dict")
    p.add_argument("out", metavar="OUT.onnx")
    p.add_argument("--facemae", metavar="FACEMAE.pt", default=None, help="export this reconstructor instead")
    p.add_argument("--mask-ratio", type=MASK_RATIO, default=0.75, help="fixed in the graph (default 0.75)")
    p.add_argument("--output", choices=("full", "paste"), default="full",
                   help="reconstructor output mode (default full)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the insightface / torch agreement check")
    p.set_defaults(run=_export)


def _add_audit(verbs):
    p = verbs.add_parser("audit", parents=_parents("common", "network", "batch-size", "device", "seed"),
                         help="privacy leakage of a released shard, measured by face retrieval",
                         description="Every released image (same keys and labels as the original shard) queries "
                                     "all originals, once per attacker: the model-free pixel attacker (grey "
                                     "28x28 pixels, always run) and the --model recogniser (image + flip). "
                                     "Reports per attacker rank-1/5 instance hits (own source record), "
                                     "re-identification hits (the source held out: another photo of the person "
                                     "is found), TAR@FAR=1e-3 of (released, source) pairs against impostors, "
                                     "and, first, the worst case over the attackers for each threat. Writes "
                                     "leakage.json to --out and each attacker's audit.json, "
                                     "similarity_histogram.png and leak_examples.png to --out/ATTACKER.")
    p.add_argument("--original", required=True, metavar="IN_DIR", help="the original shard")
    p.add_argument("--released", required=True, metavar="OUT_DIR", help="its release (convert output)")
    p.add_argument("--model", default=None,
                   help="a recogniser attacker: model.pt (arcface_torch state_dict) or model.onnx (default: the "
                        "pixel attacker alone)")
    p.add_argument("--out", default=None, help="report folder (default: <released>/audit)")
    p.add_argument("--max-impostors", type=POSITIVE_INT, default=1_000_000,
                   help="impostor pairs scored; more are sampled with --seed (default 1000000)")
    p.add_argument("--search", choices=AUDIT_SEARCHES, default="auto",
                   help="exact search, or approximate (a faiss inverted file re-ranked exactly, recall measured "
                        "and reported); auto searches exactly up to 2.5e10 (released, original) pairs (default auto)")
    p.add_argument("--recall-queries", type=POSITIVE_INT, default=1000,
                   help="released images whose approximate top-1 is checked by exact search (default 1000)")
    _add_precision(p, "fp32", "bf16 rounding can merge a weak recogniser's embeddings of near-duplicate faces, "
                              "which is what the audit counts")
    p.add_argument("--embedding-dtype", choices=AUDIT_EMBEDDING_DTYPES, default="float32",
                   help="precision of the embeddings kept on disk while the audit runs; float16 halves them "
                        "(default float32, the exact figures)")
    p.add_argument("--training-set", default=None, metavar="A_DIR",
                   help="the shard the release's reconstructor was trained on: also report how many released "
                        "images resemble one of its identities (cosine to the identity's centre above the FAR=1e-3 "
                        "threshold measured on A), against the same fraction for the originals, flagged when the "
                        "release holds more than chance allows (McNemar z > 3)")
    p.add_argument("--embedding-cache", default=None, metavar="DIR",
                   help="keep the original's (and the training set's) embeddings in DIR, so that the next audit "
                        "of another release with the same --model file embeds only the release")
    p.set_defaults(run=_audit)


def _add_demo(verbs):
    p = verbs.add_parser("demo", parents=_parents("common"),
                         help="the whole pipeline on the embedded synthetic default (CPU: about an hour on 2 cores)",
                         description="Synthesise disjoint identity splits, train a teacher and FaceMAE tiny + IRM "
                                     "on split A, release split B through FaceMAE and through blur, train the same "
                                     "recogniser on the originals and on each release, verify each on held-out "
                                     "identities, audit each release's leakage, and publish the FaceMAE release "
                                     "with its card (WORK_DIR/release/RELEASE.md). Everything lands in WORK_DIR "
                                     "(report.json, samples.png, tradeoff.png, ROC, audit plots); finished steps "
                                     "are reused when run again.")
    p.add_argument("work_dir", metavar="WORK_DIR", nargs="?", default=os.path.join("work_dirs", "demo"))
    p.add_argument("--protocol", default=None, metavar="CONFIG.py",
                   help="a file defining `protocol = dict(...)` overriding the embedded sizes and budgets "
                        "(see facemae_plugin/protocol/spec.py PROTOCOL_DEFAULTS)")
    p.add_argument("--compare-original", action="store_true",
                   help="accepted for older scripts: the originals are always compared now")
    p.set_defaults(run=_demo)


def _add_convert(verbs):
    p = verbs.add_parser("convert",
                         parents=_parents("common", "secret-seed", "batch-size", "device", "overwrite", "method"),
                         help="shard -> privatized shard (FaceMAE or a baseline)",
                         description="Replace every image of IN_DIR by its FaceMAE reconstruction (or a "
                                     "baseline: blur, pixelate, noise, masked); keys, labels, header, identity "
                                     "records and property are kept. Streaming, batched, sharded, resumable: "
                                     "a rerun redoes only unfinished shards. Under torchrun each rank writes "
                                     "one shard and rank 0 merges.")
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--num-shards", type=POSITIVE_INT, default=None, help="split the images into N shards (default 1)")
    p.add_argument("--shard", type=COUNT, default=None, help="run only shard I (then: facemae merge OUT_DIR)")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT_DIR/shards after merging")
    p.set_defaults(run=_convert)


def _add_benchmark(verbs):
    p = verbs.add_parser("benchmark", parents=_parents("common"),
                         help="the privacy-utility table: every release method, one recogniser recipe, two attackers",
                         description="Run a benchmark file (`variants = [dict(name, method, ..., seeds)]` and "
                                     "optionally `protocol = dict(...)`): for each variant and seed release split B, "
                                     "train the protocol's recogniser on it, verify it on every verification set "
                                     "and audit the release's leakage with the teacher (trained on split A) and the "
                                     "informed attacker (trained on the original split B). protocol.data is the "
                                     "synthetic default, or your shards: dict(train=DIR, release=DIR, "
                                     "val=[lfw.bin, ...]) or dict(source=DIR, fraction=0.5, val=[...]); "
                                     "teacher=dict(checkpoint=model.pt) and facemae=dict(checkpoint=facemae.pt) "
                                     "use models trained already. Finished steps are reused; writes results.md, "
                                     "results.json, tradeoff.png and samples.png.")
    p.add_argument("config", metavar="CONFIG", help="benchmark file, e.g. benchmarks/configs/privacy_utility_synth.py")
    p.add_argument("--work-dir", default=os.path.join("work_dirs", "demo"),
                   help="steps live here; the default shares the finished steps of `facemae demo`")
    p.add_argument("--out", default=None, help="results folder (default WORK_DIR/results)")
    p.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only these variant names")
    p.add_argument("--finished-only", action="store_true",
                   help="report only rows whose steps are all finished; train nothing")
    p.set_defaults(run=_benchmark)


def _add_release(verbs):
    p = verbs.add_parser("release",
                         parents=_parents("common", "secret-seed", "batch-size", "device", "overwrite", "method"),
                         help="convert, audit and publish: a released shard with its dataset card",
                         description="Convert IN_DIR with the chosen method, audit the release against IN_DIR "
                                     "with every attacker: the model-free pixel attacker, each --attacker "
                                     "recogniser, reapply (the method re-applied to the originals with the "
                                     "parameters the card publishes) and, given --training-set, the adaptive "
                                     "attacker (a recogniser trained on that set beside its release by the same "
                                     "method); per attacker rank-1/5 instance and "
                                     "re-identification hits, TAR@FAR=1e-3 of source pairs; verify each "
                                     "recogniser on the --val sets, and write OUT_DIR/RELEASE.md with its JSON twin "
                                     "RELEASE.json, led by the worst case over the attackers (then source, method "
                                     "and parameters, reconstructor and the data it was trained on, attackers, "
                                     "the command), samples.png and the audits' plots. No path of this machine and "
                                     "no secret seed goes in. The work happens in OUT_DIR.partial and becomes "
                                     "OUT_DIR only when the card is written; rerun the same command to resume.")
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--attacker", action="append", default=[], metavar="MODEL",
                   help="a recogniser that tries to re-identify the released faces: model.pt (arcface_torch "
                        "state_dict) or model.onnx; repeat for several (the pixel attacker always runs)")
    p.add_argument("--no-reapply", dest="reapply", action="store_false",
                   help="skip the reapply attacker (the card then says the worst case assumes an attacker who "
                        "does not know the method's parameters)")
    p.add_argument("--attacker-network", action="append", default=None, metavar="NETWORK",
                   help="backbone of a .pt attacker (r18, r34, r50, r100, mbf): once for all, or once per --attacker")
    p.add_argument("--val", nargs="+", default=None, metavar="BIN",
                   help="verification sets (lfw.bin, cfp_fp.bin, ...): each attacker's accuracy goes on the card")
    p.add_argument("--training-set", default=None, metavar="A_DIR",
                   help="other people's faces (for facemae: the shard the reconstructor was trained on, as its "
                        "checkpoint records): train the adaptive attacker on them beside their release by the same "
                        "method (the recogniser recipe mbf, 3 epochs: minutes per thousand faces on a CPU), and "
                        "measure look-alikes of their identities among the released images")
    p.add_argument("--no-adaptive", dest="adaptive", action="store_false",
                   help="with --training-set, skip training the adaptive attacker (the card then says the worst "
                        "case assumes an attacker who has not trained on faces privatized by this method)")
    p.add_argument("--target-leakage", type=_number(float, 0.0, 1.0), default=None, metavar="X",
                   help="release at the weakest setting of the method (mask ratio for facemae and masked, sigma for "
                        "blur, block size for pixelate, std for noise) whose rank-1 instance leakage is at most X (a "
                        "fraction) under every attacker, found by bisection on up to 100 of IN_DIR's identities; "
                        "the whole release is then audited again and the card records every point")
    p.add_argument("--search", choices=AUDIT_SEARCHES, default="auto", help="the audit's search (see facemae audit)")
    _add_precision(p, "fp32", "the audit's figures, as facemae audit computes them")
    p.set_defaults(run=_release)


def _add_merge(verbs):
    p = verbs.add_parser("merge", parents=_parents("common", "overwrite"),
                         help="join converted shards into OUT_DIR/train.rec/.idx",
                         description="Copy the framed records of OUT_DIR/shards/shard-IofN.rec into "
                                     "OUT_DIR/train.rec (offsets rewritten, no re-encoding), add the header "
                                     "and identity records, property and facemae_provenance.json.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT_DIR/shards after merging")
    p.set_defaults(run=_merge)


def _add_arcface_train(verbs):
    p = verbs.add_parser("arcface-train", parents=_parents("common", "device"),
                         help="run your arcface_torch checkout's train_v2 with FaceMAE",
                         description="Import the arcface_torch checkout at --arcface-root (MXNet optional), "
                                     "check the names the plugin hooks, load CONFIG with its own get_config "
                                     "and run train_v2.main. A config.facemae block reconstructs each batch "
                                     "(stage='batch') or checks a converted shard (stage='offline'); a "
                                     "config.irm block adds IRM to the loss. Started as it is, one process "
                                     "trains on --device (a GPU if there is one, else the CPU; gloo on a free "
                                     "local port, no NCCL). Under torchrun (torchrun --no-python facemae "
                                     "arcface-train ...), every rank trains on its GPU with NCCL, as train_v2 "
                                     "does.")
    p.add_argument("config", metavar="CONFIG", help="arcface_torch config file, anywhere (e.g. recipes/arcface_*.py)")
    p.add_argument("--arcface-root", required=True, metavar="PATH",
                   help="the recognition/arcface_torch folder of your insightface checkout")
    p.add_argument("--dry-run", action="store_true",
                   help="check checkout, config, checkpoint and shard, report the hooks; no training (CPU ok)")
    p.set_defaults(run=_arcface_train)


VERBS = (  # each adds one verb: its options and the function that runs it
    _add_synth, _add_inspect, _add_folder2rec, _add_rec2folder, _add_pairs2bin, _add_split, _add_pretrain,
    _add_train, _add_verify, _add_export, _add_audit, _add_demo, _add_convert, _add_merge,
    _add_release, _add_benchmark, _add_arcface_train)


def build_parser():
    parser = _Parser(
        prog="facemae",
        description="FaceMAE privacy-preserving face datasets for InsightFace arcface_torch.",
    )
    parser.add_argument("--version", action="version", version=f"facemae-plugin {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add_verb in VERBS:
        add_verb(verbs)
    return parser


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as given, for the records a verb writes
    # SIGTERM (kill, docker stop, a scheduler's time limit) ends the command like Ctrl-C: cleanup
    # runs, worker pools are shut down and temp files removed, instead of leaving orphans behind.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args):
    try:
        summary, result = args.run(args)
    except (FaceMAEError, OSError) as exc:  # bad input; anything else is a bug and keeps its traceback
        if os.environ.get("FACEMAE_DEBUG"):
            raise
        print(f"facemae {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    # One write: under torchrun every rank shares stdout, and a single short write to a pipe is
    # never interleaved with another process's.
    text = summary + "\n" + (json.dumps(result, default=str) + "\n" if args.json else "")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _one_line(exc):
    """The error's message on one line; for an error raised in a DataLoader worker, the worker's own."""
    text = str(exc)
    if "Original Traceback" in text:  # torch re-raises worker errors with the worker's traceback inside
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def run_as_script(verb):
    """Entry point of the thin scripts in ``converters/``: ``facemae VERB`` with the script's arguments."""
    sys.exit(main([verb, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
