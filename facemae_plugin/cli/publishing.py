"""Verbs that make and judge releases: convert, release, hub, benchmark, demo."""
import argparse
import contextlib
import os

from ..core.errors import UsageError
from ..privatizers.methods import METHODS
from .evaluation import attacker_text
from .options import AUDIT_SEARCHES, COUNT, POSITIVE_INT, add_precision, number, parents


def add_convert(verbs):
    p = verbs.add_parser("convert",
                         parents=parents("common", "secret-seed", "batch-size", "device", "overwrite", "method"),
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


def _convert(args):
    from ..convert import SHARDS_DIR, convert

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
    with _secret_seed(args, work_dirs=[os.path.join(os.path.abspath(args.out_dir), SHARDS_DIR)]):
        result = convert(args.in_dir, args.out_dir, _privatizer(args), _convert_settings(args),
                         num_shards=num_shards or 1, shard=shard, overwrite=args.overwrite, progress=not quiet,
                         distributed=distributed, keep_shards=args.keep_shards)
    done = "merged into" if result["merged"] else "shard(s) written under"
    rate = f", {result['images_per_s']:.1f} img/s" if result["images_per_s"] else ""
    return (f"convert: {result['images_in']} images (layout {result['layout']}, {result['method']}, "
            f"k={result['k']}) -> {result['images_out']} {done} {args.out_dir}; shards run "
            f"{result['shards_run']}, already done {result['shards_skipped']}{rate}"), result


def add_release(verbs):
    p = verbs.add_parser("release",
                         parents=parents("common", "secret-seed", "batch-size", "device", "overwrite", "method"),
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
                                     "the command) and each attacker's similarity histogram. No path of this machine, "
                                     "no original face (the audits and sample sheets go to OUT_DIR.private, "
                                     "readable by you alone) and "
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
    p.add_argument("--attacker-set", default=None, metavar="C_DIR",
                   help="faces of people neither in IN_DIR nor in the reconstructor's training set: the adaptive "
                        "attackers train on them instead of --training-set, so they learn the method on unseen "
                        "people, as the released ones are (the card says which set they trained on)")
    p.add_argument("--no-adaptive", dest="adaptive", action="store_false",
                   help="with --training-set, skip training the adaptive attacker (the card then says the worst "
                        "case assumes an attacker who has not trained on faces privatized by this method)")
    p.add_argument("--adaptive-from-attackers", action="store_true",
                   help="with --training-set, also fine-tune each --attacker model.pt the same way (adaptive-NAME): "
                        "an attacker who holds a face recogniser adapts it to the method rather than training one "
                        "from nothing, and may re-identify more people; one more training per attacker")
    p.add_argument("--adaptive-epochs", type=POSITIVE_INT, default=None, metavar="N",
                   help="how long the adaptive attackers train (default: the recogniser recipe's): longer finds "
                        "more people by re-identification and, past a few epochs, fewer sources by instance "
                        "(docs/privacy.md measures both)")
    p.add_argument("--target-leakage", type=number(float, 0.0, 1.0), default=None, metavar="X",
                   help="release at the weakest setting of the method (mask ratio for facemae and masked, sigma for "
                        "blur, block size for pixelate, std for noise) whose rank-1 instance leakage is at most X (a "
                        "fraction) under every attacker, found by bisection on up to 100 of IN_DIR's identities; "
                        "the whole release is then audited again and the card records every point")
    p.add_argument("--target-reid", type=number(float, 0.0, 1.0), default=None, metavar="Y",
                   help="with --target-leakage, also keep the worst-case rank-1 re-identification at most Y (a "
                        "fraction; its 95%% upper bound on the calibration identities, then the whole release)")
    p.add_argument("--search", choices=AUDIT_SEARCHES, default="auto", help="the audit's search (see facemae audit)")
    add_precision(p, "fp32", "the audit's figures, as facemae audit computes them")
    add_hub_options(p)
    p.set_defaults(run=_release)


def add_hub_options(p):
    hub = p.add_argument_group("Hugging Face Hub folder (needs pip install 'facemae-plugin[hub]')")
    hub.add_argument("--hub", action="store_true",
                     help="also make OUT_DIR a Hub dataset folder: data/train-*.parquet (image, label), README.md "
                          "(the Hub's dataset card: front matter, gated access, risks led by the worst case) and "
                          "croissant.json (Croissant 1.1 with its Responsible-AI fields); upload it with "
                          "`hf upload USER/NAME OUT_DIR --repo-type dataset`")
    add_hub_metadata_options(hub)


def add_hub_metadata_options(hub):
    hub.add_argument("--hub-metadata", default=None, metavar="FILE.yaml",
                     help="what only you know, as YAML: license, source_datasets, contact (required), "
                          "license_name and license_link (for license: other), pretty_name, citation")
    hub.add_argument("--hub-license", default=None, metavar="ID", help="a Hub licence id (cc-by-nc-4.0, other, ...)")
    hub.add_argument("--hub-source-dataset", action="append", default=None, metavar="NAME",
                     help="the dataset the photos came from; repeat for several")
    hub.add_argument("--hub-contact", default=None, metavar="WHO", help="who answers for this dataset")
    hub.add_argument("--hub-pretty-name", default=None, metavar="NAME", help="the dataset's display name")


def add_hub(verbs):
    p = verbs.add_parser("hub", parents=parents("common", "overwrite"),
                         help="a finished release -> a Hugging Face Hub dataset folder",
                         description="Copy a release made without --hub (its shard, cards and figures, nothing "
                                     "else of the folder) into OUT_DIR and add what release --hub adds: "
                                     "data/train-*.parquet, README.md (the Hub's dataset card) and croissant.json. "
                                     "The release is not touched.")
    p.add_argument("release_dir", metavar="RELEASE_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    add_hub_metadata_options(p.add_argument_group("what only you know (needs pip install 'facemae-plugin[hub]')"))
    p.set_defaults(run=_hub, hub=True)


def _hub(args):
    from ..publish.hub import hub_from_release

    card = hub_from_release(args.release_dir, args.out_dir, _hub_metadata(args), overwrite=args.overwrite,
                            progress=not args.quiet)
    return (f"hub: {card['released']['images']} images, {len(card['hub']['parquet'])} Parquet file(s), "
            f"README.md and croissant.json -> {args.out_dir}"), card["hub"]


def _hub_metadata(args):
    """The Hub card's metadata from --hub-metadata and the --hub-* flags, or None without --hub."""
    given = [args.hub_metadata, args.hub_license, args.hub_source_dataset, args.hub_contact, args.hub_pretty_name]
    if not args.hub:
        if any(value is not None for value in given):
            raise UsageError("--hub-metadata and --hub-* describe the Hub folder that --hub makes; add --hub")
        return None
    from ..convert.parquet import pyarrow_modules
    from ..publish.hub import HubMetadata

    pyarrow_modules()
    return HubMetadata.load(args.hub_metadata, license=args.hub_license,
                            source_datasets=tuple(args.hub_source_dataset or ()), contact=args.hub_contact,
                            pretty_name=args.hub_pretty_name)


def _release(args):
    import shlex

    from ..core.devices import pick_device
    from ..evaluation.attackers import worst_text
    from ..core.files import private_path
    from ..publish.adaptive import RECIPE as ADAPTIVE_RECIPE
    from ..publish.release import PARTIAL_SUFFIX, ReleaseOptions, release_dataset

    attackers = _attackers(args.attacker, args.attacker_network)
    if args.target_reid is not None and args.target_leakage is None:
        raise UsageError("--target-reid Y calibrates beside --target-leakage X; give both")
    options = ReleaseOptions(
        convert=_convert_settings(args), val_bins=tuple(args.val or ()), training_set=args.training_set,
        attacker_set=args.attacker_set, target_reid=args.target_reid,
        target_leakage=args.target_leakage, reapply=args.reapply, adaptive=args.adaptive,
        adaptive_from_attackers=args.adaptive_from_attackers,
        adaptive_epochs=args.adaptive_epochs or ADAPTIVE_RECIPE["num_epoch"], seed=args.seed or 0,
        device=str(pick_device(args.device)), precision=args.precision, search=args.search, compile=args.compile,
        overwrite=args.overwrite, progress=not args.quiet, command="facemae " + shlex.join(args.argv),
        hub=_hub_metadata(args))
    with _secret_seed(args, work_dirs=[os.path.abspath(args.out_dir) + PARTIAL_SUFFIX]):
        card = release_dataset(args.in_dir, args.out_dir, _privatizer(args), attackers, options,
                               privatizer_at=lambda value: _privatizer(_with_strength(args, value)))
    leaks = "; ".join(attacker_text(a["name"], a["leakage"]) for a in card["attackers"])
    return (f"release: {card['released']['images']} images ({card['method']['method']}) -> {args.out_dir}; worst "
            f"case: {worst_text(card['worst_case'])}; {leaks}; card {os.path.join(args.out_dir, 'RELEASE.md')}; "
            f"audits and sample sheets showing the originals in {private_path(args.out_dir)} (keep it private)"), card


def add_benchmark(verbs):
    p = verbs.add_parser("benchmark", parents=parents("common"),
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
                                     "results.json and tradeoff.png; the sample sheet, which shows original faces, "
                                     "goes to RESULTS.private/samples.png.")
    p.add_argument("config", metavar="CONFIG", help="benchmark file, e.g. benchmarks/configs/privacy_utility_synth.py")
    p.add_argument("--work-dir", default=os.path.join("work_dirs", "demo"),
                   help="steps live here; the default shares the finished steps of `facemae demo`")
    p.add_argument("--out", default=None, help="results folder (default WORK_DIR/results)")
    p.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only these variant names")
    p.add_argument("--finished-only", action="store_true",
                   help="report only rows whose steps are all finished; train nothing")
    p.set_defaults(run=_benchmark)


def _benchmark(args):
    import shlex

    from ..protocol.benchmark import run_benchmark

    result = run_benchmark(args.config, args.work_dir, args.out, only=args.only, finished_only=args.finished_only,
                           progress=not args.quiet, command="facemae " + shlex.join(args.argv))
    print(result["table"])
    print("\n".join(v["text"] for v in result["verdicts"].values()))
    compact = {"benchmark": "privacy_utility", "rows": len(result["rows"]), "out_dir": result["out_dir"],
               **{name: verdict["holds"] for name, verdict in result["verdicts"].items()},
               "summary": {e["variant"]: worst_summary(e, result["rows"]) for e in result["summary"]}}
    return (f"benchmark: {len(result['rows'])} row(s) -> {os.path.join(result['out_dir'], 'results.md')} "
            f"(tradeoff.png beside it; originals beside their releases in {result['samples_png']})"), compact


def worst_summary(entry, rows):
    """A variant's line of ``benchmark --json``: its accuracy and, per threat, the worst case and the
    attacker(s) that reached it over its seeds (never one attacker's figure alone)."""
    members = [row for row in rows if row["variant"] == entry["variant"]]
    out = {"accuracy": entry["accuracy"][0]}
    for threat in ("instance", "reid"):
        out[f"worst_{threat}_rank1"] = entry[f"worst_{threat}_rank1"][0]
        out[f"worst_{threat}_attacker"] = "/".join(sorted({str(r[f"worst_{threat}_attacker"]) for r in members}))
    return out


def add_demo(verbs):
    p = verbs.add_parser("demo", parents=parents("common"),
                         help="the whole pipeline on the embedded synthetic default (CPU: about half an hour "
                              "on 2 cores with native bf16)",
                         description="Synthesise disjoint identity splits, train a teacher and FaceMAE tiny + IRM "
                                     "on split A, release split B through FaceMAE and through blur, train the same "
                                     "recogniser on the originals and on each release, verify each on held-out "
                                     "identities, audit each release's leakage, and publish the FaceMAE release "
                                     "with its card (WORK_DIR/release/RELEASE.md). Everything lands in WORK_DIR "
                                     "(report.json, samples.private.png, tradeoff.png, ROC, audit plots); finished "
                                     "steps are reused when run again.")
    p.add_argument("work_dir", metavar="WORK_DIR", nargs="?", default=os.path.join("work_dirs", "demo"))
    p.add_argument("--protocol", default=None, metavar="CONFIG.py",
                   help="a file defining `protocol = dict(...)` overriding the embedded sizes and budgets "
                        "(see facemae_plugin/protocol/spec.py PROTOCOL_DEFAULTS)")
    p.set_defaults(run=_demo)


def _demo(args):
    import shlex

    from ..protocol.demo import load_protocol_file, run_demo

    result = run_demo(args.work_dir, load_protocol_file(args.protocol), progress=not args.quiet,
                      command="facemae " + shlex.join(args.argv))
    rows = "; ".join(f"{row['variant']} {row['accuracy'] * 100:.2f}% accuracy, worst-case rank-1 leakage "
                     f"{row['worst_instance_rank1'] * 100:.1f}% instance ({row['worst_instance_attacker']}), "
                     f"{row['worst_reid_rank1'] * 100:.1f}% re-identification ({row['worst_reid_attacker']})"
                     for row in result["rows"])
    return f"demo: {rows} -> {result['work_dir']}/report.json, card {result['card']}", result


@contextlib.contextmanager
def _secret_seed(args, work_dirs=()):
    """Within it, ``args.secret_seed`` is a seeded method's secret (``convert.secret.drawn_seed``) when
    ``--seed`` is not given, else None."""
    from ..convert.secret import drawn_seed

    if args.seed is not None or not METHODS[args.method].seeded:
        args.secret_seed = None
        yield
        return
    with drawn_seed(args.out_dir, work_dirs=work_dirs, overwrite=args.overwrite) as (args.secret_seed, _):
        yield


def _convert_settings(args):
    from ..convert.settings import ConvertSettings

    return ConvertSettings(quality=args.quality, batch_size=args.batch_size, workers=args.workers)


def _privatizer(args):
    """The privatizer ``--method`` and its options describe (only the options of its method are read)."""
    from ..privatizers.methods import make_privatizer, method_params

    privatizer = make_privatizer(args.method, k=args.k, **method_params(args.method, vars(args), args.seed))
    if getattr(args, "secret_seed", None) is not None:  # drawn by _secret_seed, never published
        privatizer = privatizer.with_seed(args.secret_seed, public=False)
    return privatizer


def _with_strength(args, value):
    """``args`` with the method's strength parameter (``privatizers.methods.Method.strength``) set to ``value``."""
    method = METHODS[args.method]
    changed = argparse.Namespace(**vars(args))
    setattr(changed, method.params[method.strength.param], value)
    return changed


def _attackers(models, networks):
    """``--attacker`` models with their ``--attacker-network``: one network per attacker, or one for all."""
    from ..publish.release import Attacker

    networks = networks or [None]
    if len(networks) not in (1, len(models)):
        raise UsageError(f"--attacker-network: give one network for all attackers or one per --attacker "
                         f"({len(models)}), got {len(networks)}")
    if len(networks) == 1:
        networks = networks * len(models)
    return [Attacker(model, network) for model, network in zip(models, networks)]


VERBS = (add_convert, add_release, add_hub, add_benchmark, add_demo,)
