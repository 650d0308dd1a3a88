"""``facemae arcface-train --arcface-root PATH CONFIG``: the user's arcface_torch ``train_v2`` with FaceMAE.

Two steps, so everything but the training itself runs (and is tested) on a CPU:

``prepare`` imports the checkout (MXNet or ``compat.mxnet``), checks every hooked name against
the signatures the plugin was written for, loads CONFIG with arcface_torch's own ``get_config``,
and builds what the config's blocks ask for: the frozen ``ReconstructionStage`` (``facemae``,
``stage="batch"``), the provenance check of a converted shard (``stage="offline"``), the IRM
teacher (``irm`` with weight > 0).

``run`` imports ``train_v2`` (started without torchrun: in one process, on the CPU or one GPU,
``one_process``; under torchrun: NCCL on CUDA, as shipped), replaces ``get_dataloader`` /
``PartialFC_V2`` / a torch-incompatible scheduler *in train_v2's namespace, for the run only*, and
calls ``train_v2.main``. Without a ``facemae`` or ``irm`` block nothing is replaced but the
compatibility patches (and, on a CPU, the device), and arcface_torch trains as shipped.
"""
import argparse
import logging
import os
import types
from contextlib import contextmanager

import torch

from ..config import ConfigError
from ..core.devices import pick_device
from ..core.errors import UsageError
from ..privatizers.facemae import ReconstructionStage, check_offline_release
from .checkout import TRAIN_V2_IMPORTS, ArcfaceCheckout
from .configs import config_alias, load_arcface_config
from .dataloader import BatchRecord, wrap_get_dataloader
from .irm_loss import IRMTerm, irm_partial_fc
from .one_process import one_process_run, replaced, under_torchrun
from .patches import apply_patches

log = logging.getLogger(__name__)


class ArcfacePlan:
    """What ``prepare`` decided: the checkout, the config, and the hooks to install."""

    def __init__(self, checkout, config_path, cfg, device):
        self.checkout = checkout
        self.config_path = config_path
        self.cfg = cfg
        self.device = device
        self.record = BatchRecord()
        self.stage = None  # ReconstructionStage when facemae.stage == "batch"
        self.release = None  # provenance of the converted shard when facemae.stage == "offline"
        self.irm_term = None  # IRMTerm when irm.weight > 0

    def summary(self):
        cfg = self.cfg
        return {
            "arcface_root": self.checkout.root, "arcface_commit": self.checkout.commit,
            "config": self.config_path, "rec": cfg.rec, "network": cfg.network, "output": cfg.output,
            "facemae": dict(cfg.facemae) if cfg.get("facemae") else None,
            "stage": self.stage.provenance() if self.stage else None,
            "release": self.release,
            "irm": dict(cfg.irm) if self.irm_term else None,
            "device": str(self.device),
        }


def train_device(name=None):
    """The device train_v2 will use: ``name`` if given, else this rank's GPU, else the CPU.

    Under torchrun train_v2 runs NCCL, so the device is the rank's GPU and nothing else.
    """
    if under_torchrun():
        if not torch.cuda.is_available() or (name and pick_device(name).type != "cuda"):
            raise UsageError("under torchrun, arcface_torch's train_v2 runs NCCL on CUDA; on a CPU start "
                             "facemae arcface-train without torchrun (one process)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return pick_device(name)


# ------------------------------------------------------------------------- the blocks

def build_irm(cfg, record, device, config_path):
    from ..models.backbones import load_backbone

    irm = cfg.irm
    if cfg.get("facemae") is None or cfg.facemae.stage != "batch":
        raise ConfigError(f"{config_path}: config.irm.weight={irm.weight} needs config.facemae with "
                          f"stage='batch' (IRM compares originals with their reconstructions)")
    if not irm.teacher:
        raise ConfigError(f"{config_path}: config.irm.teacher must name the frozen recogniser (model.pt)")
    teacher = load_backbone(irm.teacher, irm.network, device=str(device))
    return IRMTerm(teacher, record, irm.weight, irm.variant, irm.temperature)


def prepare(arcface_root, config_path, device=None):
    """Everything up to ``import train_v2``: checks, config, stage, provenance, IRM teacher."""
    checkout = ArcfaceCheckout(arcface_root)
    checkout.check_library_modules()
    checkout.check_train_v2_source()
    cfg = load_arcface_config(checkout, config_path)
    plan = ArcfacePlan(checkout, os.path.abspath(config_path), cfg, train_device(device))
    block = cfg.get("facemae")
    if block is not None:
        if not block.checkpoint:
            raise ConfigError(f"{config_path}: config.facemae.checkpoint must be set")
        if not os.path.isfile(block.checkpoint):
            raise ConfigError(f"{config_path}: config.facemae.checkpoint {block.checkpoint} not found")
        if block.stage == "batch":
            plan.stage = ReconstructionStage.from_block(block, plan.device, cfg.fp16)
        else:
            plan.release = check_offline_release(cfg.rec, block, config_path)
    if cfg.get("irm") is not None and cfg.irm.weight:
        plan.irm_term = build_irm(cfg, plan.record, plan.device, config_path)
    return plan


# ------------------------------------------------------------------------- the run

def install_hooks(plan, train_v2):
    """Replace the hooked names in ``train_v2`` (a module or namespace); returns what was done.

    Call it through ``hooks_installed``, which puts every replaced name back afterwards.
    """
    patched = apply_patches(train_v2, plan.checkout.import_module("eval.verification"))  # each logs itself
    hooked = []
    if plan.stage is not None:
        train_v2.get_dataloader = wrap_get_dataloader(train_v2.get_dataloader, plan.stage, plan.record)
        hooked.append("train_v2.get_dataloader: batches reconstructed by FaceMAE before the backbone")
    if plan.irm_term is not None:
        train_v2.PartialFC_V2 = irm_partial_fc(train_v2.PartialFC_V2, plan.irm_term)
        hooked.append(f"train_v2.PartialFC_V2: + {plan.irm_term.weight} * IRM ({plan.irm_term.variant})")
    for line in hooked:
        log.info("facemae: %s", line)
    return patched + hooked


@contextmanager
def torchrun_train_v2(checkout):
    """``train_v2`` imported as shipped: under torchrun it starts NCCL from the launcher's variables."""
    yield checkout.import_module("train_v2")


@contextmanager
def hooks_installed(plan, train_v2):
    """``install_hooks`` for the block (yields its notes); every name it replaced comes back after."""
    verification = plan.checkout.import_module("eval.verification")
    with replaced(train_v2, **{name: getattr(train_v2, name) for name in TRAIN_V2_IMPORTS if hasattr(train_v2, name)}), \
            replaced(verification, interpolate=verification.interpolate):
        yield install_hooks(plan, train_v2)


def run(plan):
    """Import train_v2, hook it for this run, and train (one process unless under torchrun)."""
    started = torchrun_train_v2(plan.checkout) if under_torchrun() else one_process_run(plan.checkout, plan.device)
    with started as train_v2:
        plan.checkout.check_signature(train_v2, "train_v2", "main")
        with hooks_installed(plan, train_v2), replaced(torch.backends.cudnn, benchmark=True), \
                config_alias(plan.checkout, plan.config_path) as alias:  # cudnn: train_v2's __main__ block
            train_v2.main(argparse.Namespace(config=alias))
    return plan.summary()


def dry_run_notes(plan):
    """The patches and hooks ``run`` would install, worked out on a stand-in for train_v2."""
    stand_in = types.SimpleNamespace(
        PolynomialLRWarmup=plan.checkout.import_module("lr_scheduler").PolynomialLRWarmup,
        get_dataloader=plan.checkout.import_module("dataset").get_dataloader,
        PartialFC_V2=plan.checkout.import_module("partial_fc_v2").PartialFC_V2,
        CallBackVerification=plan.checkout.import_module("utils.utils_callbacks").CallBackVerification)
    with hooks_installed(plan, stand_in) as notes:
        return notes


def arcface_train(arcface_root, config_path, dry_run=False, device=None):
    """Prepare, then train (or, with ``dry_run``, report what training would do)."""
    plan = prepare(arcface_root, config_path, device)
    if dry_run:
        return {**plan.summary(), "hooks": dry_run_notes(plan), "trained": False}
    return {**run(plan), "trained": True}
