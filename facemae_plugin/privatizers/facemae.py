"""The reconstruction stage: a frozen FaceMAE that turns a batch of faces into released faces.

One object serves every deployment path: offline conversion (``facemae convert``), the batch
stage of ``facemae train`` and the arcface_torch hook (``arcface-train``). It is a privatizer
(``privatizers.privatizer``): it takes normalised RGB images ``[N, 3, H, W]`` and their record keys
and returns reconstructions in the same space, on the device the images came from.

Masks come from ``(seed, key)`` (``mask_noise_for_keys``), never from the batch, so a record's
result does not depend on which records share its batch, their order, the shard or the device.
With ``k > 1`` the j-th reconstruction of a record uses the mask of ``variant_key(key, j)``:
different for every j, still fixed by ``(seed, key, j)``; ``variant_key(key, 0) == key``, so the
first reconstruction is what ``k = 1`` gives.
"""
import json
import os

import torch

from ..core.devices import autocast as autocast_context, mixed_precision, pick_device
from ..core.errors import ConfigError
from ..core.files import sha256_file
from ..formats.shard import PROVENANCE_NAME
from ..models.mae import FaceMAE, OUTPUT_MODES
from ..models.masking import mask_noise_for_keys, masks_for_keys, random_masking
from .privatizer import SECRET, Privatizer, as_key_list, variant_keys


class ReconstructionStage(Privatizer):
    """Frozen FaceMAE, eval mode, no grad: ``stage(images, keys) -> images``.

    ``output`` is ``full`` (every pixel predicted) or ``paste`` (visible patches kept). ``autocast``
    runs the model in fp16 on CUDA / bf16 on CPU; results come back as float32.
    """

    method = "facemae"

    def __init__(self, model, mask_ratio=0.75, output="full", seed=0, k=1, device=None,
                 autocast=False, checkpoint=None):
        if not isinstance(model, FaceMAE):
            raise TypeError(f"ReconstructionStage needs a FaceMAE, got {type(model).__name__}")
        if output not in OUTPUT_MODES:
            raise ConfigError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
        super().__init__(k, seed)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.mask_ratio = float(mask_ratio)
        random_masking(torch.zeros(1, model.num_patches), self.mask_ratio)  # validates the ratio
        self.output = output
        self.autocast = bool(autocast)
        self.checkpoint = checkpoint  # {"path", "sha256"} when loaded from a file

    @classmethod
    def from_checkpoint(cls, checkpoint, **kwargs):
        """Load ``facemae.pt`` (CheckpointError / FileNotFoundError with the path on bad files)."""
        path = os.path.abspath(os.fspath(checkpoint))
        model = FaceMAE.from_checkpoint(path)
        return cls(model, checkpoint={"path": path, "sha256": sha256_file(path)}, **kwargs)

    @classmethod
    def from_block(cls, block, device, fp16):
        """The frozen reconstructor a config's ``facemae`` block with ``stage="batch"`` asks for."""
        autocast = mixed_precision(device, fp16) if block.autocast is None else block.autocast
        return cls.from_checkpoint(block.checkpoint, mask_ratio=block.mask_ratio, output=block.output,
                                   seed=block.seed, device=device, autocast=bool(autocast))

    @property
    def num_patches(self):
        return self.model.num_patches

    def check_image_size(self, size):
        expected = (self.model.img_size, self.model.img_size)
        if tuple(size) != expected:
            raise ConfigError(f"images are {size[1]}x{size[0]}, the FaceMAE model expects "
                              f"{expected[1]}x{expected[0]}")

    def masks(self, keys, j=0):
        """[N, L] masks (1 = masked) the j-th reconstruction of each record uses, on the CPU."""
        return masks_for_keys(self.seed, as_key_list(keys, len(keys)), self.num_patches, self.mask_ratio, j)

    def __call__(self, images, keys):
        """[N, 3, H, W] normalised images -> [N, 3, H, W] reconstructions (first of the k)."""
        return self._reconstruct(images, as_key_list(keys, images.shape[0]))

    def variants(self, images, keys):
        """[N, 3, H, W] -> [N, k, 3, H, W]: the k reconstructions of each image, in one pass."""
        n = images.shape[0]
        keys = as_key_list(keys, n)
        repeated = images.repeat_interleave(self.k, dim=0)  # [N * k, 3, H, W], record-major
        out = self._reconstruct(repeated, variant_keys(keys, self.k))  # [N * k, 3, H, W]
        return out.reshape(n, self.k, *out.shape[1:])

    @torch.no_grad()
    def _reconstruct(self, images, mask_keys):
        """Reconstruct ``images`` with the masks of ``mask_keys`` (already derived per variant)."""
        if images.shape[0] == 0:
            return images.float().clone()
        source_device = images.device
        images = images.to(self.device, dtype=torch.float32, non_blocking=True)
        noise = mask_noise_for_keys(self.seed, mask_keys, self.num_patches)  # [N, L] CPU
        with autocast_context(self.device, self.autocast):
            pred, mask = self.model(images, self.mask_ratio, noise=noise)  # [N, L, p*p*3], [N, L]
        out = self.model.compose(images, pred.float(), mask, self.output)  # [N, 3, H, W] fp32
        return out.to(source_device)

    def provenance(self):
        """What produced a released dataset: method, checkpoint and its hash, masking, output mode."""
        dtype = None
        if self.autocast:
            dtype = "float16" if self.device.type == "cuda" else "bfloat16"
        config = {k: v for k, v in self.model.config.items()}
        return self.published({
            "method": self.method,
            # the file's name, not where it lies on the publisher's machine; its hash identifies it
            "checkpoint": os.path.basename(self.checkpoint["path"]) if self.checkpoint else None,
            "checkpoint_sha256": self.checkpoint["sha256"] if self.checkpoint else None,
            "model": config,
            "mask_ratio": self.mask_ratio,
            "output": self.output,
            "seed": self.seed,
            "k": self.k,
            "autocast": dtype,
            "mask_key_scheme": "mask of reconstruction j of record key: mask_noise_for_keys(seed, "
                               "[variant_key(key, j)]), variant_key(key, 0) = key",
        })


def check_offline_release(rec_dir, block, config_path):
    """``stage="offline"``: ``rec_dir`` must be a shard that ``facemae convert`` made with this block."""
    path = os.path.join(rec_dir, PROVENANCE_NAME)
    if not os.path.isfile(path):
        raise ConfigError(f"{config_path}: facemae.stage='offline' but {path} does not exist: config.rec must "
                          f"point at the output of `facemae convert`")
    with open(path) as f:
        provenance = json.load(f)
    made_by = provenance.get("privatizer", {})
    expected = {"method": "facemae", "checkpoint_sha256": sha256_file(block.checkpoint),
                "mask_ratio": block.mask_ratio, "output": block.output, "seed": block.seed}
    if made_by.get("seed") == SECRET:  # the masks are in the images already; the publisher holds the seed
        del expected["seed"]
    for field, value in expected.items():
        if made_by.get(field) != value:
            raise ConfigError(f"{config_path}: {path}: the shard was made with {field}={made_by.get(field)!r}, "
                              f"config.facemae asks for {value!r}"
                              + (f" ({block.checkpoint})" if field == "checkpoint_sha256" else ""))
    return provenance
