"""Verbs on datasets and their formats: synth, inspect, folder2rec, rec2folder, rec2parquet, parquet2rec,
pairs2bin, split, merge."""
from .options import POSITIVE_INT, QUALITY, number, parents


def add_synth(verbs):
    p = verbs.add_parser("synth", parents=parents("common", "seed", "overwrite"),
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


def _synth(args):
    from ..data.synthetic import make_synthetic_dataset

    result = make_synthetic_dataset(
        args.out_dir, identities=args.identities, images_per_identity=args.images_per_identity,
        holdout_identities=args.holdout_identities, seed=args.seed, num_pairs=args.pairs,
        progress=not args.quiet, detail=args.detail, overwrite=args.overwrite,
    )
    summary = (f"synth: {result['images']} images of {result['identities']} identities and "
               f"{result['pairs']} held-out pairs written to {args.out_dir}")
    return summary, result


def add_inspect(verbs):
    p = verbs.add_parser("inspect", parents=parents("common"),
                         help="describe a shard directory or a .bin",
                         description="Layout, counts, identities, label range, image size and first keys of "
                                     "a shard; pairs and raw-pixel verification accuracy of a .bin.")
    p.add_argument("path", metavar="PATH", help="shard directory, .rec file or .bin file")
    p.set_defaults(run=_inspect)


def _inspect(args):
    from ..evaluation.inspection import format_inspection, inspect_path

    info = inspect_path(args.path, progress=not args.quiet)
    print(format_inspection(info))
    if info["kind"] == "bin":
        accuracy = info.get("raw_pixel_accuracy")
        summary = f"inspect: {info['pairs']} pairs" + (
            f", raw-pixel accuracy {accuracy * 100:.2f}%" if accuracy is not None else "")
    else:
        summary = f"inspect: layout {info['layout']}, {info['images']} images, {info['identities']} identities"
    return summary, info


def add_folder2rec(verbs):
    p = verbs.add_parser("folder2rec", parents=parents("common", "overwrite"),
                         help="IMAGE_DIR/<identity>/*.jpg -> layout-A shard",
                         description="Pack aligned 112x112 faces, one folder per identity (sorted names "
                                     "become labels 0..N-1), into OUT_DIR/train.rec/.idx/property.")
    p.add_argument("image_dir", metavar="IMAGE_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--quality", type=QUALITY, default=95, help="JPEG quality for non-JPEG inputs (default 95)")
    p.set_defaults(run=_folder2rec)


def _folder2rec(args):
    from ..data.folders import folder_to_rec

    result = folder_to_rec(args.image_dir, args.out_dir, quality=args.quality, progress=not args.quiet,
                           overwrite=args.overwrite)
    return f"folder2rec: {result['images']} images of {result['identities']} identities -> {args.out_dir}", result


def add_rec2folder(verbs):
    p = verbs.add_parser("rec2folder", parents=parents("common", "overwrite"),
                         help="shard -> OUT_DIR/<label>/<key>.jpg",
                         description="Write every image of a shard, bytes unchanged, into label folders.")
    p.add_argument("rec_dir", metavar="REC_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.set_defaults(run=_rec2folder)


def _rec2folder(args):
    from ..data.folders import rec_to_folder

    result = rec_to_folder(args.rec_dir, args.out_dir, progress=not args.quiet, overwrite=args.overwrite)
    return f"rec2folder: {result['images']} images of {result['identities']} identities -> {args.out_dir}", result


def add_rec2parquet(verbs):
    p = verbs.add_parser("rec2parquet", parents=parents("common", "overwrite"),
                         help="shard -> Parquet files the Hub and datasets load",
                         description="Write every image record of a shard, bytes unchanged, into "
                                     "OUT_DIR/train-IIIII-of-NNNNN.parquet (columns image {bytes, path}, label, "
                                     "key, recordio_header; layout A's header and identity records go to "
                                     "recordio-layout.parquet). datasets.load_dataset('parquet', "
                                     "data_files='OUT_DIR/train-*.parquet') loads it; parquet2rec gives the "
                                     "shard back byte for byte. A killed run resumes: finished files are kept.")
    p.add_argument("rec_dir", metavar="REC_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--rows-per-file", type=POSITIVE_INT, default=50_000,
                   help="images per Parquet file (default 50000)")
    p.set_defaults(run=_rec2parquet)


def _rec2parquet(args):
    from ..convert.parquet import rec_to_parquet

    result = rec_to_parquet(args.rec_dir, args.out_dir, rows_per_file=args.rows_per_file,
                            overwrite=args.overwrite, progress=not args.quiet)
    return f"rec2parquet: {result['images']} images -> {len(result['files'])} file(s) in {args.out_dir}", result


def add_parquet2rec(verbs):
    p = verbs.add_parser("parquet2rec", parents=parents("common", "overwrite"),
                         help="Parquet face set -> shard arcface_torch trains on",
                         description="Files written by rec2parquet become their shard again, byte for byte. "
                                     "Any other Parquet set (a Hub face dataset: an image column holding "
                                     "bytes or datasets' {bytes, path}, an integer label column) becomes a "
                                     "layout-B shard, keys 0.. in row order. A killed run resumes from the "
                                     "files already done (OUT_DIR/parts).")
    p.add_argument("parquet", metavar="PARQUET", nargs="+",
                   help="Parquet files, folders of them, or quoted glob patterns (in order)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--image-column", default="image", help="the column of image bytes (default image)")
    p.add_argument("--label-column", default="label", help="the column of integer identities (default label)")
    p.set_defaults(run=_parquet2rec)


def _parquet2rec(args):
    from ..convert.parquet import parquet_to_rec

    result = parquet_to_rec(args.parquet, args.out_dir, image_column=args.image_column,
                            label_column=args.label_column, overwrite=args.overwrite, progress=not args.quiet)
    return (f"parquet2rec: {result['images']} images of {result['identities']} identities (layout "
            f"{result['layout']}) -> {args.out_dir}", result)


def add_pairs2bin(verbs):
    p = verbs.add_parser("pairs2bin", parents=parents("common", "overwrite"),
                         help="pairs list -> verification .bin",
                         description="Lines 'path_a path_b 0|1' (paths relative to the list's folder) "
                                     "become an lfw.bin-style verification set.")
    p.add_argument("pairs", metavar="PAIRS.txt")
    p.add_argument("out_bin", metavar="OUT.bin")
    p.add_argument("--quality", type=QUALITY, default=95, help="JPEG quality for non-JPEG inputs (default 95)")
    p.set_defaults(run=_pairs2bin)


def _pairs2bin(args):
    from ..data.folders import pairs_to_bin

    result = pairs_to_bin(args.pairs, args.out_bin, quality=args.quality, progress=not args.quiet,
                          overwrite=args.overwrite)
    return f"pairs2bin: {result['pairs']} pairs ({result['same']} same) -> {args.out_bin}", result


def add_split(verbs):
    p = verbs.add_parser("split", parents=parents("common", "seed", "overwrite"),
                         help="shard -> two shards of disjoint identities",
                         description="Split IN_DIR by identity: a seeded random FRACTION of the identities goes "
                                     "to OUT_A (e.g. FaceMAE and teacher training), the rest to OUT_B (the set "
                                     "to release, identities FaceMAE never saw). Labels are renumbered 0..n-1 "
                                     "in original order; image bytes are copied unchanged.")
    p.add_argument("in_dir", metavar="IN_DIR")
    p.add_argument("out_a", metavar="OUT_A")
    p.add_argument("out_b", metavar="OUT_B")
    p.add_argument("--fraction", type=number(float, 0.0, 1.0, True, True), default=0.5,
                   help="share of identities in OUT_A (default 0.5)")
    p.set_defaults(run=_split)


def _split(args):
    from ..data.split import split_by_identity

    result = split_by_identity(args.in_dir, args.out_a, args.out_b, fraction=args.fraction, seed=args.seed,
                               overwrite=args.overwrite, progress=not args.quiet)
    a, b = result["a"], result["b"]
    return (f"split: {a['identities']} identities ({a['images']} images) -> {args.out_a}, "
            f"{b['identities']} identities ({b['images']} images) -> {args.out_b}", result)


def add_merge(verbs):
    p = verbs.add_parser("merge", parents=parents("common", "overwrite"),
                         help="join converted shards into OUT_DIR/train.rec/.idx",
                         description="Copy the framed records of OUT_DIR/shards/shard-IofN.rec into "
                                     "OUT_DIR/train.rec (offsets rewritten, no re-encoding), add the header "
                                     "and identity records, property and facemae_provenance.json.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT_DIR/shards after merging")
    p.set_defaults(run=_merge)


def _merge(args):
    from ..convert import merge

    result = merge(args.out_dir, overwrite=args.overwrite, keep_shards=args.keep_shards)
    return f"merge: {result['shards']} shard(s), {result['records']} records -> {args.out_dir}", result


VERBS = (add_synth, add_inspect, add_folder2rec, add_rec2folder, add_rec2parquet, add_parquet2rec, add_pairs2bin,
         add_split, add_merge,)
