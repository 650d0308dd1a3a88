"""Training verbs: pretrain (FaceMAE), train (a recogniser), arcface-train (arcface_torch's own train_v2)."""
from .options import parents


def add_pretrain(verbs):
    p = verbs.add_parser("pretrain", parents=parents("common", "device", "compile-training"),
                         help="pretraining: train the FaceMAE reconstructor (pixel loss + IRM)",
                         description="Train FaceMAE from a recipe with a config.mae block (and config.irm "
                                     "for instance relation matching). Writes facemae.pt, resume.pt and a "
                                     "reconstruction grid PNG per epoch to config.output. Runs under "
                                     "torchrun for several processes.")
    p.add_argument("config", metavar="CONFIG", help="recipe file, e.g. recipes/synth_facemae_tiny.py")
    p.add_argument("--resume", action="store_true", help="continue from config.output/resume.pt")
    p.set_defaults(run=_pretrain)


def _pretrain(args):
    from ..config import load_config
    from ..train.pretrain import pretrain

    result = pretrain(load_config(args.config), device=args.device, progress=not args.quiet,
                      resume=args.resume, compile=args.compile)
    last = result["epochs"][-1] if result["epochs"] else {}
    parts = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("epoch", "step", "losses", "parts"))
    return f"pretrain: {result['steps']} steps, {parts} -> {result['checkpoint']}", result


def add_train(verbs):
    p = verbs.add_parser("train", parents=parents("common", "device", "compile-training"),
                         help="train a recogniser with arcface_torch's config keys",
                         description="Margin-softmax recognition training (arcface_torch's recipe) on "
                                     "config.rec; verifies on config.val_targets each epoch and writes "
                                     "model.pt with arcface_torch's state_dict keys. Runs under torchrun.")
    p.add_argument("config", metavar="CONFIG", help="recipe file, e.g. recipes/synth_teacher_mbf.py")
    p.set_defaults(run=_train)


def _train(args):
    from ..config import load_config
    from ..train.recognise import train_recogniser

    result = train_recogniser(load_config(args.config), device=args.device, progress=not args.quiet,
                              compile=args.compile)
    val = result["epochs"][-1].get("val", {}) if result["epochs"] else {}
    shown = "  ".join(f"{name} {acc * 100:.2f}%" for name, acc in val.items())
    return f"train: {result['steps']} steps {shown} -> {result['model']}", result


def add_arcface_train(verbs):
    p = verbs.add_parser("arcface-train", parents=parents("common", "device"),
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


def _arcface_train(args):
    import logging

    from ..arcface import arcface_train

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


VERBS = (add_pretrain, add_train, add_arcface_train,)
