"""ReconstructionStage: per-record masks, batch independence, k variants, precision, checkpoints.

The reference is the model's own ``reconstruct`` called on one image at a time with the record's
key: the batched stage must give the same result whatever else shares the batch.
"""
import hashlib

import numpy as np
import pytest
import torch

from facemae_plugin.core.errors import CheckpointError
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.core.keyseed import variant_key
from facemae_plugin.privatizers.facemae import ReconstructionStage

SEED = 5


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return create_facemae("tiny", depth=1, decoder_depth=1).eval()


def face_batch(n, seed=0):
    """[N, 3, 112, 112] smooth images in the normalised range (blocky, so not pure noise)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.uniform(-1, 1, size=(n, 3, 7, 7)).astype(np.float32))
    return torch.nn.functional.interpolate(small, size=112, mode="bilinear", align_corners=False)


def single_reference(model, images, keys, output="full", seed=SEED, mask_ratio=0.75):
    """The model's reconstruct, one image at a time: [N, 3, H, W] and masks [N, L]."""
    outs, masks = [], []
    for image, key in zip(images, keys):
        out, mask = model.reconstruct(image[None], mask_ratio, output, keys=[key], seed=seed)
        outs.append(out[0])
        masks.append(mask[0])
    return torch.stack(outs), torch.stack(masks)


@pytest.mark.parametrize("output", ["full", "paste"])
def test_stage_equals_single_image_reconstruct(output):
    model = tiny_model()
    images, keys = face_batch(6), [3, 17, 1, 250, 9, 4]
    stage = ReconstructionStage(model, output=output, seed=SEED, device="cpu")
    expected, _ = single_reference(model, images, keys, output)
    out = stage(images, keys)
    assert out.shape == images.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # the check can fail: another seed reconstructs something visibly different
    other, _ = single_reference(model, images, keys, output, seed=SEED + 1)
    assert (other - expected).abs().mean() > 100 * 1e-5


def test_paste_keeps_visible_patches_exactly():
    model = tiny_model()
    images, keys = face_batch(3), [1, 2, 3]
    stage = ReconstructionStage(model, output="paste", seed=SEED)
    out = stage(images, keys)
    visible = (stage.masks(keys) == 0)  # [N, L]
    patches_in, patches_out = model.patchify(images), model.patchify(out)
    assert torch.equal(patches_out[visible], patches_in[visible].clamp(-1, 1))
    assert not torch.allclose(patches_out[~visible], patches_in[~visible], atol=1e-2)


def test_results_independent_of_batch_composition_and_order():
    model = tiny_model()
    images = face_batch(8, seed=1)
    keys = [10, 11, 12, 13, 14, 15, 16, 17]
    stage = ReconstructionStage(model, seed=SEED)
    whole = stage(images, keys)
    order = [5, 2, 7, 0, 3]
    shuffled = stage(images[order], [keys[i] for i in order])
    torch.testing.assert_close(shuffled, whole[order], atol=1e-5, rtol=0)
    pair = stage(images[[6, 1]], [keys[6], keys[1]])
    torch.testing.assert_close(pair, whole[[6, 1]], atol=1e-5, rtol=0)


def test_masks_come_from_seed_and_key_only():
    model = tiny_model()
    images, keys = face_batch(4), [7, 8, 9, 7]
    stage = ReconstructionStage(model, mask_ratio=0.75, seed=SEED)
    _, reference = single_reference(model, images, keys)
    masks = stage.masks(keys)
    assert torch.equal(masks, reference)  # the masks reconstruct() uses for these keys
    assert torch.equal(masks[0], masks[3])  # same key, same mask, wherever it sits in the batch
    assert not torch.equal(masks[0], masks[1])
    assert torch.equal(stage.masks(keys[1:3]), masks[1:3])  # batch size does not matter
    assert masks.sum(1).tolist() == [model.num_patches - int(model.num_patches * 0.25)] * 4
    other = ReconstructionStage(model, seed=SEED + 1).masks(keys)
    assert not torch.equal(other, masks)


def test_k_variants_use_derived_keys():
    model = tiny_model()
    images, keys = face_batch(3, seed=2), [4, 5, 6]
    stage = ReconstructionStage(model, seed=SEED, k=3)
    out = stage.variants(images, keys)
    assert out.shape == (3, 3, 3, 112, 112)
    torch.testing.assert_close(out[:, 0], stage(images, keys), atol=1e-5, rtol=0)
    for j in range(3):
        derived = [variant_key(key, j) for key in keys]
        expected, _ = single_reference(model, images, derived)
        torch.testing.assert_close(out[:, j], expected, atol=1e-5, rtol=0)
    masks = [stage.masks(keys, j) for j in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert variant_key(4, 0) == 4 and variant_key(4, 1) != variant_key(5, 1) != variant_key(4, 2)


def test_stage_is_frozen_and_gradient_free():
    model = tiny_model().train()
    stage = ReconstructionStage(model)
    assert not stage.model.training
    assert not any(p.requires_grad for p in stage.model.parameters())
    images = face_batch(2).requires_grad_(True)
    out = stage(images, [1, 2])
    assert not out.requires_grad


def test_bf16_autocast_close_to_fp32():
    model = tiny_model()
    images, keys = face_batch(4, seed=3), [1, 2, 3, 4]
    fp32 = ReconstructionStage(model, seed=SEED)(images, keys)
    bf16_stage = ReconstructionStage(model, seed=SEED, autocast=True)
    bf16 = bf16_stage(images, keys)
    assert bf16.dtype == torch.float32
    diff = (bf16 - fp32).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2
    assert bf16_stage.provenance()["autocast"] == "bfloat16"


def test_from_checkpoint_records_provenance(tmp_path):
    path = tmp_path / "facemae.pt"
    tiny_model().save_checkpoint(path)
    stage = ReconstructionStage.from_checkpoint(path, mask_ratio=0.5, output="paste", seed=3, k=2)
    prov = stage.provenance()
    assert prov["checkpoint"] == "facemae.pt" and prov["method"] == "facemae"  # the name, not where it lies
    assert prov["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (prov["mask_ratio"], prov["output"], prov["seed"], prov["k"]) == (0.5, "paste", 3, 2)
    assert prov["model"]["depth"] == 1 and prov["model"]["patch_size"] == 8


def test_from_checkpoint_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ReconstructionStage.from_checkpoint(tmp_path / "missing.pt")
    recogniser = tmp_path / "model.pt"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, recogniser)
    with pytest.raises(CheckpointError, match="recogniser"):
        ReconstructionStage.from_checkpoint(recogniser)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        ReconstructionStage.from_checkpoint(junk)


def test_bad_settings_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="output"):
        ReconstructionStage(model, output="blend")
    with pytest.raises(ValueError, match="mask_ratio"):
        ReconstructionStage(model, mask_ratio=1.0)
    with pytest.raises(ValueError, match="k"):
        ReconstructionStage(model, k=0)
    with pytest.raises(ValueError, match="2 record keys for a batch of 3"):
        ReconstructionStage(model)(face_batch(3), [1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_matches_cpu(autocast):
    model = tiny_model()
    images, keys = face_batch(8, seed=4), list(range(100, 108))
    cpu = ReconstructionStage(model, seed=SEED)(images, keys)
    cuda_stage = ReconstructionStage(tiny_model(), seed=SEED, device="cuda", autocast=autocast)
    assert torch.equal(cuda_stage.masks(keys), ReconstructionStage(model, seed=SEED).masks(keys))
    gpu_in = images.cuda()
    out = cuda_stage(gpu_in, keys)
    assert out.device == gpu_in.device
    tolerance = 0.05 if autocast else 1e-3
    assert (out.cpu() - cpu).abs().mean() < tolerance / 5 and (out.cpu() - cpu).abs().max() < 10 * tolerance
