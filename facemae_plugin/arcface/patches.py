"""Compatibility patches for arcface_torch on current torch: each one detected, narrow and logged.

A patch replaces a name *in train_v2's namespace only* (the module that uses it), never the
checkout's files or classes, and only when the break is detected on the running torch.

- ``PolynomialLRWarmup`` (lr_scheduler.py) calls ``_LRScheduler.__init__(..., verbose=verbose)``;
  torch >= 2.7 removed ``verbose`` there, so constructing it raises TypeError. The patch is a
  subclass whose method resolution order puts a base that drops ``verbose`` between
  ``_LRScheduler`` and ``LRScheduler``: upstream's ``__init__``, ``get_lr`` and state dict run
  unchanged, and its ``verbose`` argument (only ever False in train_v2) is ignored.
- ``CallBackVerification`` (utils/utils_callbacks.py) loads each ``val_targets`` set with
  ``eval/verification.py``'s ``load_bin``, a plain ``pickle.load``: a hostile ``.bin`` would run
  code inside the training job. Always replaced: a subclass whose ``init_dataset`` reads each set
  with the plugin's restricted unpickler first and hands upstream's ``load_bin`` only a clean copy
  of what it admitted, so the decoded tensors are upstream's own.
- ``interpolate`` (eval/verification.py) finds the threshold at FAR=1e-3 with
  ``interp1d(far, thresholds, kind="slinear")``; scipy >= 1.9 refuses tied x, which a young
  model's FARs have, and the verification callback crashes mid-training. The patch gives
  verification.py a ``scipy.interpolate`` whose ``interp1d`` keeps the first threshold of each tied
  FAR (the same piecewise-linear curve where there are no ties).
"""
import inspect
import logging
import os
import tempfile

import numpy as np
from scipy import interpolate
from torch.optim.lr_scheduler import LRScheduler

from ..formats.binfile import load_bin as load_bin_restricted
from ..formats.binfile import write_bin
from .one_process import overlay

log = logging.getLogger(__name__)


def scheduler_takes_verbose():
    return "verbose" in inspect.signature(LRScheduler.__init__).parameters


class _DropVerbose(LRScheduler):
    """Accepts the removed ``verbose`` argument and drops it."""

    def __init__(self, optimizer, last_epoch=-1, verbose=False):
        super().__init__(optimizer, last_epoch=last_epoch)


def without_verbose(scheduler_class):
    """``scheduler_class`` constructible on a torch whose LRScheduler has no ``verbose``."""
    return type(scheduler_class.__name__, (scheduler_class, _DropVerbose),
                {"__module__": scheduler_class.__module__, "__doc__": scheduler_class.__doc__})


def patch_lr_scheduler(train_v2):
    """Replace ``train_v2.PolynomialLRWarmup`` when torch no longer takes ``verbose``; returns a note."""
    if scheduler_takes_verbose():
        return None
    original = train_v2.PolynomialLRWarmup
    if "verbose" not in inspect.signature(original.__init__).parameters:
        return None  # upstream fixed it
    train_v2.PolynomialLRWarmup = without_verbose(original)
    note = "train_v2.PolynomialLRWarmup: torch's LRScheduler no longer takes `verbose`; argument dropped"
    log.warning("facemae compat patch: %s", note)
    return note


def restricted_load_bin(upstream_load_bin):
    """``upstream_load_bin(path, image_size)`` fed only a clean copy of what the restricted unpickler admitted."""
    def load_bin(path, image_size):
        images, issame = load_bin_restricted(path)  # refuses hostile or malformed files in one line
        with tempfile.TemporaryDirectory(prefix="facemae-val-") as tmp:
            clean = os.path.join(tmp, os.path.basename(path))
            write_bin(clean, images, issame)
            return upstream_load_bin(clean, image_size)
    return load_bin


def safe_verification_callback(callback_class):
    """``callback_class`` (CallBackVerification) with its validation sets read through ``restricted_load_bin``."""
    load_bin = restricted_load_bin(inspect.getmodule(callback_class).verification.load_bin)

    def init_dataset(self, val_targets, data_dir, image_size):
        for name in val_targets:
            path = os.path.join(data_dir, name + ".bin")
            if os.path.exists(path):
                self.ver_list.append(load_bin(path, image_size))
                self.ver_name_list.append(name)

    return type(callback_class.__name__, (callback_class,),
                {"init_dataset": init_dataset, "__module__": callback_class.__module__,
                 "__doc__": callback_class.__doc__})


def patch_verification_loader(train_v2):
    """Replace ``train_v2.CallBackVerification`` so no validation set is unpickled unrestricted; returns a note."""
    train_v2.CallBackVerification = safe_verification_callback(train_v2.CallBackVerification)
    note = ("train_v2.CallBackVerification: validation .bin sets read with the restricted unpickler "
            "(upstream load_bin uses pickle.load)")
    log.info("facemae compat patch: %s", note)
    return note


def interp1d_refuses_ties():
    try:
        interpolate.interp1d([0.0, 0.0, 1.0], [0.0, 1.0, 2.0], kind="slinear")
    except ValueError:
        return True
    return False


def interp1d_over_ties(x, y, kind="linear", **kwargs):
    """``interpolate.interp1d`` on the first ``y`` of each distinct ``x`` (a constant where there is one)."""
    x_unique, first = np.unique(np.asarray(x), return_index=True)
    y_first = np.asarray(y)[first]
    if len(x_unique) == 1:
        return lambda x_new: np.full(np.shape(x_new), y_first[0])
    return interpolate.interp1d(x_unique, y_first, kind=kind, **kwargs)


def patch_verification_interpolation(verification):
    """Give eval/verification.py an ``interp1d`` that takes tied FARs, when scipy refuses them; a note."""
    if not interp1d_refuses_ties():
        return None
    verification.interpolate = overlay(interpolate, interp1d=interp1d_over_ties)
    note = ("eval.verification.interpolate: scipy's slinear interp1d refuses tied FARs; the first threshold "
            "of each is kept")
    log.warning("facemae compat patch: %s", note)
    return note


def apply_patches(train_v2, verification):
    """Every patch train_v2 (and the verification module its callback runs) needs here; their notes."""
    return [note for note in (patch_lr_scheduler(train_v2), patch_verification_loader(train_v2),
                              patch_verification_interpolation(verification)) if note]
