"""Hooks into a real arcface_torch checkout: FaceMAE from one config block, no upstream edits.

- ``checkout``: import the user's checkout from its path; check the hooked signatures.
- ``configs``: arcface_torch's own ``get_config`` on configs outside ``configs/``; plugin blocks.
- ``dataloader``: ``facemae.stage="batch"``: record keys per sample, batches reconstructed.
- ``irm_loss``: ``irm`` block: IRM added to ``PartialFC_V2``'s loss.
- ``patches``: narrow, logged fixes where upstream breaks on current torch.
- ``one_process``: train_v2 without torchrun: gloo on a free port, CUDA names redirected on a CPU.
- ``launch``: ``prepare`` (checks, blocks) and ``run`` (train_v2: one process, or under torchrun).
"""
from .checkout import ArcfaceCheckout, ArcfaceCheckoutError
from .launch import arcface_train, prepare, run

__all__ = ["ArcfaceCheckout", "ArcfaceCheckoutError", "arcface_train", "prepare", "run"]
