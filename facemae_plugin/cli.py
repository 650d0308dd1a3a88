"""``facemae <verb>``: the command line.

Each verb prints its details, then one summary line; with ``--json`` a JSON
object follows on the last line. Bad input ends with one ``error:`` line on
stderr and exit status 2 (``FACEMAE_DEBUG=1`` shows the traceback instead).
"""
import argparse
import json
import os
import sys

from . import __version__


def _synth(args):
    from .synthdata import make_synthetic_dataset

    result = make_synthetic_dataset(
        args.out_dir, identities=args.identities, images_per_identity=args.images_per_identity,
        holdout_identities=args.holdout_identities, seed=args.seed, num_pairs=args.pairs,
        progress=not args.quiet,
    )
    summary = (f"synth: {result['images']} images of {result['identities']} identities and "
               f"{result['pairs']} held-out pairs written to {args.out_dir}")
    return summary, result


def _inspect(args):
    from .inspection import format_inspection, inspect_path

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
    from .folders import folder_to_rec

    result = folder_to_rec(args.image_dir, args.out_dir, quality=args.quality, progress=not args.quiet)
    return f"folder2rec: {result['images']} images of {result['identities']} identities -> {args.out_dir}", result


def _rec2folder(args):
    from .folders import rec_to_folder

    result = rec_to_folder(args.rec_dir, args.out_dir, progress=not args.quiet)
    return f"rec2folder: {result['images']} images of {result['identities']} identities -> {args.out_dir}", result


def _pairs2bin(args):
    from .folders import pairs_to_bin

    result = pairs_to_bin(args.pairs, args.out_bin, quality=args.quality, progress=not args.quiet)
    return f"pairs2bin: {result['pairs']} pairs ({result['same']} same) -> {args.out_bin}", result


def _pretrain(args):
    from .config import load_config
    from .train.pretrain import pretrain

    result = pretrain(load_config(args.config), device=args.device, progress=not args.quiet,
                      resume=args.resume)
    last = result["epochs"][-1] if result["epochs"] else {}
    parts = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("epoch", "step", "losses"))
    return f"pretrain: {result['steps']} steps, {parts} -> {result['checkpoint']}", result


def _train(args):
    from .config import load_config
    from .train.recognise import train_recogniser

    result = train_recogniser(load_config(args.config), device=args.device, progress=not args.quiet)
    val = result["epochs"][-1].get("val", {}) if result["epochs"] else {}
    shown = "  ".join(f"{name} {acc * 100:.2f}%" for name, acc in val.items())
    return f"train: {result['steps']} steps {shown} -> {result['model']}", result


def _demo(args):
    from .demo import run_demo

    result = run_demo(args.work_dir, progress=not args.quiet)
    return f"demo: finished in {args.work_dir}", result


def _add_common(parser):
    parser.add_argument("--json", action="store_true", help="print a JSON object on the last line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="facemae",
        description="FaceMAE privacy-preserving face datasets for InsightFace arcface_torch.",
    )
    parser.add_argument("--version", action="version", version=f"facemae-plugin {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("synth", help="write the synthetic default dataset (shard + held-out .bin)",
                         description="Draw face-like images of synthetic identities: OUT_DIR/train.rec, "
                                     "train.idx, property, and holdout.bin of identities not in the shard.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--identities", type=int, default=200, help="training identities (default 200)")
    p.add_argument("--images-per-identity", type=int, default=20, help="images per identity (default 20)")
    p.add_argument("--holdout-identities", type=int, default=50,
                   help="identities used only in holdout.bin (default 50)")
    p.add_argument("--pairs", type=int, default=1000, help="verification pairs, half same (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.set_defaults(run=_synth)

    p = verbs.add_parser("inspect", help="describe a shard directory or a .bin",
                         description="Layout, counts, identities, label range, image size and first keys of "
                                     "a shard; pairs and raw-pixel verification accuracy of a .bin.")
    p.add_argument("path", metavar="PATH", help="shard directory, .rec file or .bin file")
    p.set_defaults(run=_inspect)

    p = verbs.add_parser("folder2rec", help="IMAGE_DIR/<identity>/*.jpg -> layout-A shard",
                         description="Pack aligned 112x112 faces, one folder per identity (sorted names "
                                     "become labels 0..N-1), into OUT_DIR/train.rec/.idx/property.")
    p.add_argument("image_dir", metavar="IMAGE_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for non-JPEG inputs (default 95)")
    p.set_defaults(run=_folder2rec)

    p = verbs.add_parser("rec2folder", help="shard -> OUT_DIR/<label>/<key>.jpg",
                         description="Write every image of a shard, bytes unchanged, into label folders.")
    p.add_argument("rec_dir", metavar="REC_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.set_defaults(run=_rec2folder)

    p = verbs.add_parser("pairs2bin", help="pairs list -> verification .bin",
                         description="Lines 'path_a path_b 0|1' (paths relative to the list's folder) "
                                     "become an lfw.bin-style verification set.")
    p.add_argument("pairs", metavar="PAIRS.txt")
    p.add_argument("out_bin", metavar="OUT.bin")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for non-JPEG inputs (default 95)")
    p.set_defaults(run=_pairs2bin)

    p = verbs.add_parser("pretrain", help="stage 1: train the FaceMAE reconstructor (pixel loss + IRM)",
                         description="Train FaceMAE from a recipe with a config.mae block (and config.irm "
                                     "for instance relation matching). Writes facemae.pt, resume.pt and a "
                                     "reconstruction grid PNG per epoch to config.output. Runs under "
                                     "torchrun for several processes.")
    p.add_argument("config", metavar="CONFIG", help="recipe file, e.g. recipes/synth_facemae_tiny.py")
    p.add_argument("--resume", action="store_true", help="continue from config.output/resume.pt")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(run=_pretrain)

    p = verbs.add_parser("train", help="train a recogniser with arcface_torch's config keys",
                         description="Margin-softmax recognition training (arcface_torch's recipe) on "
                                     "config.rec; verifies on config.val_targets each epoch and writes "
                                     "model.pt with arcface_torch's state_dict keys. Runs under torchrun.")
    p.add_argument("config", metavar="CONFIG", help="recipe file, e.g. recipes/synth_teacher_mbf.py")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(run=_train)

    p = verbs.add_parser("demo", help="run the main job on the embedded synthetic default",
                         description="Synthesise the default dataset in WORK_DIR and inspect it; "
                                     "finished stages are reused when run again.")
    p.add_argument("work_dir", metavar="WORK_DIR", nargs="?", default=os.path.join("work_dirs", "demo"))
    p.set_defaults(run=_demo)

    for sub in verbs.choices.values():
        _add_common(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        summary, result = args.run(args)
    except (ValueError, OSError) as exc:
        if os.environ.get("FACEMAE_DEBUG"):
            raise
        print(f"facemae {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def run_as_script(verb):
    """Entry point of the thin scripts in ``converters/``: ``facemae VERB`` with the script's arguments."""
    sys.exit(main([verb, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
