"""What the protocol hands to each step: training configs and privatizers, built from its blocks.

The experiment decides which model and which split; these functions turn that, and the
protocol's recipe blocks, into the same config dicts and privatizers a user's recipe would give.
"""
from ..config import merge_config
from ..core.devices import mixed_precision
from .spec import merge_protocol


def recognition_config(protocol, recipe, rec, num_classes, output, seed, val_targets=()):
    """An arcface-style recogniser config: ``recipe`` (teacher or recogniser block) on shard ``rec``."""
    return merge_config({
        "network": recipe.network, "embedding_size": 512, "margin_list": tuple(recipe.margin_list),
        "rec": rec, "num_classes": num_classes, "val_targets": list(val_targets),
        "batch_size": recipe.batch_size, "lr": recipe.lr, "num_epoch": recipe.num_epoch,
        "warmup_epoch": recipe.warmup_epoch, "num_workers": protocol.num_workers, "fp16": protocol.mixed_precision,
        "seed": seed, "output": output})


def pretrain_config(protocol, block, rec, output, irm_weight, teacher):
    """A FaceMAE pretraining config: ``block`` (the protocol's ``facemae`` block, with any overrides)."""
    return merge_config({
        "rec": rec, "batch_size": block.batch_size, "optimizer": "adamw", "lr": block.lr,
        "weight_decay": 0.05, "num_epoch": block.num_epoch, "warmup_epoch": block.warmup_epoch,
        "num_workers": protocol.num_workers, "fp16": protocol.mixed_precision, "seed": protocol.seed,
        "output": output,
        "mae": {"preset": block.preset, "patch_size": block.patch_size, "mask_ratio": block.mask_ratio,
                "output": block.output, "w_visible": block.w_visible},
        "irm": {"weight": irm_weight, "teacher": teacher, "network": protocol.teacher.network}})


def facemae_block(protocol, variant):
    """The ``facemae`` block that trained a variant's model: the protocol's, with its ``pretrain`` overrides."""
    return merge_protocol(variant.get("pretrain"), protocol.facemae, "pretrain")


def variant_privatizer(protocol, variant, seed, checkpoint=None):
    """The privatizer of a checked variant; ``checkpoint`` is the FaceMAE model of a ``facemae`` one."""
    from ..privatizers.methods import METHODS, make_privatizer

    spec = METHODS[variant["method"]]
    params = {key: variant[key] for key in spec.params if key in variant}
    # A model trained with its own overrides releases at its own ratio and output unless told otherwise.
    block = facemae_block(protocol, variant)
    params.update({key: getattr(block, key) for key in spec.from_model if key not in params})
    if spec.seeded:
        params["seed"] = seed
    runtime = {"checkpoint": checkpoint, "device": protocol.device,
               "autocast": mixed_precision(protocol.device, protocol.mixed_precision)}
    params.update({key: runtime[key] for key in spec.runtime})
    return make_privatizer(variant["method"], **params)


def summarise_training(summary):
    """The JSON-worthy part of a training summary: outputs, speed and per-epoch losses/accuracy."""
    keep = ("model", "checkpoint", "steps", "images_per_s", "device")
    epochs = [{k: v for k, v in e.items() if k not in ("losses", "parts")} for e in summary["epochs"]]
    return {**{k: summary[k] for k in keep if k in summary}, "epochs": epochs}
