"""Verbs that measure: verify (a recogniser on .bin sets), audit (how much a release leaks), export (ONNX)."""
import json

from ..core.errors import UsageError
from .options import AUDIT_EMBEDDING_DTYPES, AUDIT_SEARCHES, MASK_RATIO, POSITIVE_INT, add_precision, parents


def add_verify(verbs):
    p = verbs.add_parser("verify", parents=parents("common", "network", "batch-size", "device"),
                         help="10-fold verification accuracy of a recogniser on .bin sets",
                         description="arcface_torch's verification test on each .bin: accuracy-flip mean "
                                     "and std, XNorm, TAR@FAR=1e-3 and optionally a ROC curve PNG.")
    p.add_argument("bins", metavar="BIN", nargs="+", help="verification sets (lfw.bin, cfp_fp.bin, ...)")
    p.add_argument("--model", required=True, help="model.pt (arcface_torch state_dict) or model.onnx")
    p.add_argument("--roc-dir", default=None, help="write <name>_roc.png per set into this folder")
    add_precision(p, "auto", "verification accuracy moves by at most a few pairs")
    p.set_defaults(run=_verify)


def _verify(args):
    from ..formats.binfile import load_bin
    from ..core.devices import pick_device
    from ..evaluation.embed import load_embedder
    from ..evaluation.bin_report import verify_loaded

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


def add_audit(verbs):
    p = verbs.add_parser("audit", parents=parents("common", "network", "batch-size", "device", "seed"),
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
    p.add_argument("--out", default=None,
                   help="report folder; it shows original faces (leak examples), so keep it private (default: "
                        "<released>.private/audit, a folder only you can open, beside the release)")
    p.add_argument("--max-impostors", type=POSITIVE_INT, default=1_000_000,
                   help="impostor pairs scored; more are sampled with --seed (default 1000000)")
    p.add_argument("--search", choices=AUDIT_SEARCHES, default="auto",
                   help="exact search, or approximate (a faiss inverted file re-ranked exactly, recall measured "
                        "and reported); auto searches exactly up to 2.5e10 (released, original) pairs (default auto)")
    p.add_argument("--recall-queries", type=POSITIVE_INT, default=1000,
                   help="released images whose approximate top-1 is checked by exact search (default 1000)")
    add_precision(p, "fp32", "bf16 rounding can merge a weak recogniser's embeddings of near-duplicate faces, "
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


def _audit(args):
    from ..core.devices import pick_device
    from ..evaluation.attackers import worst_text
    from ..evaluation.audit import AuditOptions, check_release, default_audit_dir
    from ..evaluation.suite import audit_suite, load_suite

    check_release(args.original, args.released, args.training_set)  # mismatched shards fail before the model loads
    device = str(pick_device(args.device))
    attackers = load_suite([(args.model, args.network)] if args.model is not None else [], device, args.precision,
                           args.compile)
    out_dir = args.out or default_audit_dir(args.released)
    options = AuditOptions(batch_size=args.batch_size, device=device, search=args.search,
                           recall_queries=args.recall_queries, embedding_dtype=args.embedding_dtype, seed=args.seed,
                           max_impostors=args.max_impostors, progress=not args.quiet)
    summary = audit_suite(args.original, args.released, attackers, out_dir, options, training_set=args.training_set,
                          embedding_cache=args.embedding_cache)
    figures = "; ".join(attacker_text(name, entry) for name, entry in summary["attackers"].items())
    lookalikes = ""
    if args.model is not None:
        with open(summary["attackers"][attackers[-1].name]["report"]) as f:
            lookalikes = _lookalike_text(json.load(f)["training_set"])
    first = next(iter(summary["attackers"].values()))
    return (f"audit: {first['queries']} released vs {first['gallery']} originals; worst case: "
            f"{worst_text(summary['worst_case'])}; {figures}{lookalikes} -> {summary['report']}"), summary


def add_export(verbs):
    p = verbs.add_parser("export", parents=parents("common", "network", "overwrite"),
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


def _export(args):
    from ..export import export_reconstructor, export_recogniser

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


def attacker_text(name, entry):
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


VERBS = (add_verify, add_audit, add_export,)
