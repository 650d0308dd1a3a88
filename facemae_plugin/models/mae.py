"""FaceMAE reconstructor: a masked autoencoder for aligned faces, built from timm ViT blocks.

Pixels in and out are RGB float32 NCHW normalised ``(x/255 - 0.5) / 0.5``. The decoder predicts
patches in that same space (no per-patch normalisation of targets), because its output is
released as images.

The forward pass is split so that the mask can be an explicit input (ONNX export, the online
stage): ``random_masking`` turns noise into ``ids_shuffle``; ``forward_encoder`` takes the
visible ids, ``forward_decoder`` takes ``ids_restore``; ``mask_from_ids`` rebuilds the mask.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from ..core.errors import CheckpointError, ConfigError
from ..core.files import atomic_file
from ..core.keyseed import num_visible
from .masking import mask_noise_for_keys, patchify, random_masking, unpatchify
from .weights import block_count, check_state_matches, plain_values, read_model_checkpoint

__all__ = ["FaceMAE", "PRESETS", "OUTPUT_MODES", "create_facemae", "sincos_pos_embed_2d"]

OUTPUT_MODES = ("full", "paste")

# Encoder / decoder sizes. `tiny` is small enough to train on a CPU; `base` is MAE's ViT-B.
PRESETS = {
    "tiny": dict(embed_dim=192, depth=6, num_heads=3,
                 decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6,
                  decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


# --------------------------------------------------------------------------- positions


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, dim]: sin of dim/2 geometric frequencies, then their cos."""
    freqs = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))  # [dim/2]
    angles = positions.astype(np.float64)[:, None] * freqs[None, :]  # [M, dim/2]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos embedding, [grid*grid (+1), dim] float32.

    Patch (row, col) in row-major order gets the 1-D code of `row` in the first dim/2 channels
    and of `col` in the last dim/2; the cls token (first row when `cls_token`) gets zeros.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim // 2, rows.reshape(-1)),
                          _sincos_1d(dim // 2, cols.reshape(-1))], axis=1)  # [L, dim]
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)  # [1 + L, dim]
    return emb.astype(np.float32)


# --------------------------------------------------------------------------- model


class FaceMAE(nn.Module):
    """Masked autoencoder with a ViT encoder over visible patches and a light decoder."""

    def __init__(self, img_size: int = 112, patch_size: int = 8, in_chans: int = 3,
                 embed_dim: int = 192, depth: int = 6, num_heads: int = 3,
                 decoder_embed_dim: int = 128, decoder_depth: int = 2, decoder_num_heads: int = 4,
                 mlp_ratio: float = 4.0, preset: Optional[str] = None):
        super().__init__()
        _check_dims(img_size, patch_size, embed_dim, num_heads, "encoder")
        _check_dims(img_size, patch_size, decoder_embed_dim, decoder_num_heads, "decoder")
        # every constructor argument, so a checkpoint can rebuild the model with FaceMAE(**config)
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, mlp_ratio=float(mlp_ratio),
                           preset=preset)
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                  norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

        # fixed positions: derived from the config, so not saved in the state_dict
        self.register_buffer("pos_embed", torch.from_numpy(
            sincos_pos_embed_2d(embed_dim, self.grid_size))[None], persistent=False)
        self.register_buffer("decoder_pos_embed", torch.from_numpy(
            sincos_pos_embed_2d(decoder_embed_dim, self.grid_size))[None], persistent=False)
        self._init_weights()

    def _init_weights(self):
        # patch projection initialised like a linear layer on the flattened patch
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- pixels <-> patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, L, p*p*3]"""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, p*p*3] -> [N, 3, H, W]"""
        return unpatchify(x, self.patch_size, self.in_chans)

    def _check_images(self, imgs: torch.Tensor):
        expected = (self.in_chans, self.img_size, self.img_size)
        if not isinstance(imgs, torch.Tensor) or imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            got = list(imgs.shape) if isinstance(imgs, torch.Tensor) else type(imgs).__name__
            raise ValueError(f"FaceMAE expects images [N, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}], got {got}")
        if not imgs.is_floating_point():
            raise ValueError(f"FaceMAE expects float images normalised (x/255-0.5)/0.5, "
                             f"got dtype {imgs.dtype}")

    # ---------------------------------------------------------------- masking

    def make_noise(self, batch_size: int, generator: Optional[torch.Generator] = None,
                   keys: Optional[Sequence[int]] = None, seed: int = 0) -> torch.Tensor:
        """[N, L] CPU noise from per-record keys, else from `generator` (a CPU one if None)."""
        if keys is not None:
            noise = mask_noise_for_keys(seed, keys, self.num_patches)
            if noise.shape[0] != batch_size:
                raise ValueError(f"got {noise.shape[0]} record keys for a batch of {batch_size} images")
            return noise
        device = generator.device if generator is not None else "cpu"
        return torch.rand(batch_size, self.num_patches, generator=generator, device=device)

    # ---------------------------------------------------------------- forward

    def forward_encoder(self, imgs: torch.Tensor, ids_shuffle: torch.Tensor,
                        len_keep: int) -> torch.Tensor:
        """Encode the visible patches ids_shuffle[:, :len_keep]; returns [N, 1 + len_keep, D]."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # [N, L, D]
        ids_keep = ids_shuffle[:, :len_keep]  # [N, K]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [N, K, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1)  # [N, 1 + K, D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the latent of the visible ones; returns [N, L, p*p*3]."""
        x = self.decoder_embed(latent)  # [N, 1 + K, Dd]
        n, num_tokens, dim = x.shape
        num_masked = ids_restore.shape[1] + 1 - num_tokens
        mask_tokens = self.mask_token.to(x.dtype).expand(n, num_masked, -1)  # [N, L - K, Dd]
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # [N, L, Dd] in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # patch order
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed  # [N, 1 + L, Dd]
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))  # [N, 1 + L, p*p*3]
        return x[:, 1:]  # drop cls

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                generator: Optional[torch.Generator] = None,
                noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode, decode. Returns pred [N, L, p*p*3] and mask [N, L] (1 = masked)."""
        self._check_images(imgs)
        if noise is None:
            noise = self.make_noise(imgs.shape[0], generator=generator)
        elif tuple(noise.shape) != (imgs.shape[0], self.num_patches):
            raise ValueError(f"mask noise must be [{imgs.shape[0]}, {self.num_patches}], "
                             f"got {list(noise.shape)}")
        ids_shuffle, ids_restore, mask = random_masking(noise.to(imgs.device), mask_ratio)
        latent = self.forward_encoder(imgs, ids_shuffle, num_visible(self.num_patches, mask_ratio))
        pred = self.forward_decoder(latent, ids_restore)
        return pred, mask

    # ---------------------------------------------------------------- deployment

    def compose(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                output: str = "full") -> torch.Tensor:
        """Images [N, 3, H, W] from predicted patches: `full` all predicted, `paste` keeps visible."""
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
        patches = pred.float().clamp(-1.0, 1.0)  # [N, L, p*p*3]
        if output == "paste":
            visible = (mask < 0.5).unsqueeze(-1)  # [N, L, 1]
            patches = torch.where(visible, self.patchify(imgs).to(patches.dtype), patches)
        return self.unpatchify(patches)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float = 0.75, output: str = "full",
                    keys: Optional[Sequence[int]] = None, seed: int = 0,
                    generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask and reconstruct in eval mode; returns images [N, 3, H, W] in [-1, 1] and mask [N, L].

        Masks come from `keys` (per record, via mask_noise_for_keys(seed, key)) when given, else
        from `generator`, else from a CPU generator seeded with `seed`.
        """
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
        self._check_images(imgs)
        if keys is None and generator is None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = self.make_noise(imgs.shape[0], generator=generator, keys=keys, seed=seed)
        was_training = self.training
        self.eval()
        try:
            pred, mask = self.forward(imgs, mask_ratio, noise=noise)
        finally:
            self.train(was_training)
        return self.compose(imgs, pred, mask, output), mask

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, path: Union[str, os.PathLike], step: int = 0,
                        extra_config: Optional[Mapping] = None) -> str:
        """Write {"model", "config", "step"} atomically (temp file + rename); returns the path.

        `extra_config` (e.g. the training recipe) is stored as config["extra"] and comes back as
        `model.extra_config`; it must hold only plain values (numbers, strings, lists, dicts).
        """
        path = os.fspath(path)
        config = dict(self.config)
        config["extra"] = plain_values(extra_config or {}, "extra_config")
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        checkpoint = {"model": state, "config": config, "step": int(step)}
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
        return path

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike],
                        map_location: Union[str, torch.device] = "cpu") -> "FaceMAE":
        """Rebuild a FaceMAE from a checkpoint written by save_checkpoint (weights_only load)."""
        path = os.fspath(path)
        config, state, extra, step = read_model_checkpoint(path, "FaceMAE", _constructor_args())
        # Sizes are checked against the weights before anything is built: a tiny file claiming a
        # huge config must not allocate that model.
        _check_config_fits_weights(path, {**_constructor_defaults(), **config}, state)
        try:
            model = cls(**config)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: its config does not build a FaceMAE: {e}") from None
        check_state_matches(path, model.state_dict(), state)
        model.load_state_dict(state, strict=True)
        model.extra_config = extra
        model.step = step
        return model.to(map_location)


def _check_dims(img_size, patch_size, dim, num_heads, part):
    if not isinstance(img_size, int) or not isinstance(patch_size, int) or patch_size < 1:
        raise ConfigError(f"img_size and patch_size must be positive integers, got "
                         f"{img_size!r} and {patch_size!r}")
    if img_size % patch_size:
        raise ConfigError(f"img_size {img_size} is not divisible by patch_size {patch_size}; "
                         f"expected e.g. 8 or 16 for 112")
    if dim % num_heads:
        raise ConfigError(f"{part} width {dim} is not divisible by its {num_heads} heads")
    if dim % 4:
        raise ConfigError(f"{part} width {dim} must be divisible by 4 for sin-cos positions")


def _constructor_args():
    import inspect
    return [p for p in inspect.signature(FaceMAE.__init__).parameters if p != "self"]


def _constructor_defaults():
    import inspect
    return {name: p.default for name, p in inspect.signature(FaceMAE.__init__).parameters.items()
            if name != "self"}


def _check_config_fits_weights(path, config, state):
    """The config's widths, depths and patch size agree with the tensors' shapes (cheap, nothing built)."""
    def shape(key):
        value = state.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    patch = config["patch_size"]
    claims = {
        "patch_embed.proj.weight": (config["embed_dim"], config["in_chans"], patch, patch),
        "cls_token": (1, 1, config["embed_dim"]),
        "decoder_embed.weight": (config["decoder_embed_dim"], config["embed_dim"]),
        "blocks.": config["depth"],
        "decoder_blocks.": config["decoder_depth"],
    }
    for key, claimed in claims.items():
        found = block_count(state, key) if key.endswith(".") else shape(key)
        if found != claimed:
            what = "block count" if key.endswith(".") else "shape"
            raise CheckpointError(f"{path}: weights do not match the checkpoint's config: {key.rstrip('.')} "
                                  f"{what} is {found}, the config says {claimed}")


def create_facemae(preset: str = "tiny", **overrides) -> FaceMAE:
    """FaceMAE from a preset (`tiny`, `small`, `base`) with any constructor argument overridden."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown FaceMAE preset {preset!r}; expected one of {sorted(PRESETS)}")
    known = set(_constructor_args()) - {"preset"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown FaceMAE argument(s) {unknown}; expected some of {sorted(known)}")
    return FaceMAE(**{**PRESETS[preset], **overrides, "preset": preset})
