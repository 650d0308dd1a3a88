"""Compatibility patches for arcface_torch on current torch: each one detected, narrow and logged.

A patch replaces a name *in train_v2's namespace only* (the module that uses it), never the
checkout's files or classes, and only when the break is detected on the running torch.

- ``PolynomialLRWarmup`` (lr_scheduler.py) calls ``_LRScheduler.__init__(..., verbose=verbose)``;
  torch >= 2.7 removed ``verbose`` there, so constructing it raises TypeError. The patch is a
  subclass whose method resolution order puts a base that drops ``verbose`` between
  ``_LRScheduler`` and ``LRScheduler``: upstream's ``__init__``, ``get_lr`` and state dict run
  unchanged, and its ``verbose`` argument (only ever False in train_v2) is ignored.
"""
import inspect
import logging

from torch.optim.lr_scheduler import LRScheduler

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


def apply_patches(train_v2):
    """Every patch this torch needs; returns their notes (empty when arcface_torch runs as is)."""
    return [note for note in (patch_lr_scheduler(train_v2),) if note]
