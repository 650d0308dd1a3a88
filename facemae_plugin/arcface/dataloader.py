"""``stage="batch"``: arcface_torch's data loader, each batch reconstructed on the device.

arcface_torch's ``get_dataloader`` builds the dataset and the loader itself, and its
``MXFaceDataset`` yields ``(image, label)`` only. The FaceMAE masks come from ``(seed, record
key)``, so the wrapper

1. lets ``get_dataloader`` run unchanged, then gives the dataset it built a subclass whose
   ``__getitem__`` also returns the record key (``imgidx[index]`` for ``MXFaceDataset``, the
   dataset index otherwise) and whether the image is mirrored;
2. gives the loader a subclass whose iterator reconstructs each batch with the
   ``ReconstructionStage`` and yields ``(images, labels)`` again, so ``train_v2`` sees the
   batches it expects (and ``isinstance(loader, DataLoader)`` still holds for ``set_epoch``).

Flip and mask. ``MXFaceDataset`` mirrors at random *before* the backbone; a mask keyed by the
record would then fall on the mirrored face, and the online image would differ from what
``facemae convert`` wrote for that record. So the flip is taken out of the dataset's transform
and applied after the reconstruction: the same ``torch.rand(1) < p`` draw at the same point of the
random stream (so the same images are mirrored as without the plugin), and the result is
exactly ``flip(stage(original, key))`` - the converted record, mirrored as arcface_torch mirrors it.
"""
import logging

import torch
from torchvision import transforms

from ..core.errors import ConfigError
from ..data.dataset import mirror_where
from .checkout import ArcfaceCheckoutError

log = logging.getLogger(__name__)


class BatchRecord:
    """The last batch the staged loader produced: what IRM and tests need besides the images."""

    def __init__(self):
        self.originals = None  # [B, 3, H, W] images before reconstruction, mirrored like the output
        self.keys = None  # [B] record keys
        self.flipped = None  # [B] bool


def _take_out_flip(dataset):
    """Remove RandomHorizontalFlip from ``dataset.transform``; return its probability (0 if none)."""
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, transforms.RandomHorizontalFlip):
        dataset.transform = None
        return float(transform.p)
    if not isinstance(transform, transforms.Compose):
        return 0.0
    flips = [t for t in transform.transforms if isinstance(t, transforms.RandomHorizontalFlip)]
    if len(flips) > 1:
        raise ArcfaceCheckoutError(f"{type(dataset).__name__}.transform has {len(flips)} RandomHorizontalFlips; "
                         f"the FaceMAE batch stage can move one")
    if flips:
        dataset.transform = transforms.Compose([t for t in transform.transforms if t is not flips[0]])
        return float(flips[0].p)
    return 0.0


def _keyed_subclass(base, flip_p):
    """``base`` whose ``__getitem__`` gives ``(image, label) -> (image, label, key, flipped)``."""

    def __getitem__(self, index):
        image, label = base.__getitem__(self, index)
        # The draw RandomHorizontalFlip would make here: same stream position, same outcome.
        flipped = bool(torch.rand(1) < flip_p) if flip_p else False
        imgidx = getattr(self, "imgidx", None)
        key = int(imgidx[index]) if imgidx is not None else int(index)
        return image, label, key, flipped

    # A plain subclass with no new fields, so the existing object can switch to it.
    return type(f"FaceMAEKeyed{base.__name__}", (base,), {"__getitem__": __getitem__})


def attach_keys(dataset):
    """Make ``dataset`` yield record keys and flip flags; the class swap touches this object only."""
    if not hasattr(type(dataset), "__getitem__"):
        raise ArcfaceCheckoutError(f"FaceMAE batch stage: {type(dataset).__name__} is not a map-style dataset")
    if getattr(dataset, "imgidx", None) is None:
        log.warning("facemae: %s has no imgidx (record keys); masks are keyed by dataset index, which "
                    "`facemae convert` does not use", type(dataset).__name__)
    flip_p = _take_out_flip(dataset)
    dataset.__class__ = _keyed_subclass(type(dataset), flip_p)
    log.info("facemae: %s yields record keys; random flip (p=%.2f) moved after the reconstruction",
             type(dataset).__name__, flip_p)
    return dataset


def _staged_subclass(base, stage, record):
    """``base`` loader whose iterator reconstructs each batch and yields ``(images, labels)``."""

    def __iter__(self):
        source = base.__iter__(self)  # DataLoaderX returns itself; a plain DataLoader an iterator
        while True:
            try:
                images, labels, keys, flipped = next(source)
            except StopIteration:
                return
            reconstructed = stage(images, keys)  # [B, 3, H, W], on the images' device
            record.originals = mirror_where(images, flipped)
            record.keys, record.flipped = keys, flipped
            yield mirror_where(reconstructed, flipped), labels

    return type(f"FaceMAE{base.__name__}", (base,), {"__iter__": __iter__})


def stage_loader(loader, stage, record):
    """Wrap the loader ``get_dataloader`` returned (its dataset must already carry keys)."""
    if not isinstance(loader, torch.utils.data.DataLoader):
        raise ArcfaceCheckoutError(f"FaceMAE batch stage needs a torch DataLoader, got {type(loader).__name__} "
                         f"(DALI yields no record keys: set config.dali = False)")
    loader.__class__ = _staged_subclass(type(loader), stage, record)
    return loader


def wrap_get_dataloader(get_dataloader, stage, record, dataset_hook=attach_keys):
    """``get_dataloader`` with the same signature whose loader yields reconstructed batches."""

    def get_dataloader_with_facemae(root_dir, local_rank, batch_size, dali=False, dali_aug=False,
                                    seed=2048, num_workers=2):
        if dali:
            raise ConfigError("FaceMAE batch stage: DALI yields no record keys; set config.dali = False")
        loader = get_dataloader(root_dir, local_rank, batch_size, dali, dali_aug, seed, num_workers)
        dataset_hook(loader.dataset)  # before the first iteration starts any worker
        log.info("facemae: batches of %s are reconstructed on the device before the backbone", root_dir)
        return stage_loader(loader, stage, record)

    get_dataloader_with_facemae.__wrapped__ = get_dataloader
    return get_dataloader_with_facemae
