"""FaceMAE reconstructor: patches, positions, masking, forward, loss, reconstruct, checkpoints."""
import math
import os

import numpy as np
import pytest
import torch

from facemae_plugin.train.losses import masked_mse
from facemae_plugin.core.errors import CheckpointError
from facemae_plugin.core.keyseed import num_visible, seed_for_key
from facemae_plugin.models.mae import FaceMAE, create_facemae, sincos_pos_embed_2d
from facemae_plugin.models.masking import mask_from_ids, mask_noise_for_keys, patchify, random_masking, unpatchify

torch.set_num_threads(2)

# A very small model keeps each test well under a second on a shared 2-core CPU.
TINY = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2)


def small_model(patch_size=16, seed=0, **kw):
    torch.manual_seed(seed)
    return FaceMAE(patch_size=patch_size, **{**TINY, **kw})


def face_batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=g) * 2 - 1  # already normalised to [-1, 1]


# --------------------------------------------------------------------------- patches


@pytest.mark.parametrize("p", [8, 16])
def test_patchify_matches_loop_reference_and_inverts(p):
    imgs = face_batch(2)
    patches = patchify(imgs, p)
    grid = 112 // p
    ref = np.zeros((2, grid * grid, p * p * 3), dtype=np.float32)
    arr = imgs.numpy()
    for n in range(2):
        for r in range(grid):
            for c in range(grid):
                block = arr[n, :, r * p:(r + 1) * p, c * p:(c + 1) * p]  # [3, p, p]
                ref[n, r * grid + c] = block.transpose(1, 2, 0).reshape(-1)  # (row, col, channel)
    np.testing.assert_array_equal(patches.numpy(), ref)
    assert torch.equal(unpatchify(patches, p), imgs)
    # and the other way round on arbitrary patch tensors
    x = torch.randn(3, grid * grid, p * p * 3)
    assert torch.equal(patchify(unpatchify(x, p), p), x)


def test_unpatchify_rejects_wrong_shape():
    with pytest.raises(ValueError, match="cannot unpatchify"):
        unpatchify(torch.zeros(1, 195, 192), 8)
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 112, 112), 10)


# --------------------------------------------------------------------------- positions


def test_sincos_pos_embed_matches_formula():
    dim, grid = 16, 5
    emb = sincos_pos_embed_2d(dim, grid)
    assert emb.shape == (1 + grid * grid, dim) and emb.dtype == np.float32
    assert np.all(emb[0] == 0)  # cls token
    quarter = dim // 4
    for r in range(grid):
        for c in range(grid):
            row = emb[1 + r * grid + c]
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                assert math.isclose(row[k], math.sin(r * omega), abs_tol=1e-6)
                assert math.isclose(row[quarter + k], math.cos(r * omega), abs_tol=1e-6)
                assert math.isclose(row[2 * quarter + k], math.sin(c * omega), abs_tol=1e-6)
                assert math.isclose(row[3 * quarter + k], math.cos(c * omega), abs_tol=1e-6)
    # distinct patches get distinct codes, and there is no cls row when asked
    assert len({tuple(r) for r in emb[1:].round(6)}) == grid * grid
    assert sincos_pos_embed_2d(dim, grid, cls_token=False).shape == (grid * grid, dim)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(18, grid)


def test_pos_embeddings_are_fixed_buffers_not_parameters():
    model = small_model()
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    np.testing.assert_array_equal(model.pos_embed[0].numpy(), sincos_pos_embed_2d(32, 7))


# --------------------------------------------------------------------------- masking


def test_random_masking_keeps_len_keep_and_restores_order():
    L = 196
    noise = torch.rand(5, L, generator=torch.Generator().manual_seed(3))
    for ratio in (0.0, 0.5, 0.75, 0.9):
        ids_shuffle, ids_restore, mask = random_masking(noise, ratio)
        len_keep = int(L * (1 - ratio))
        assert num_visible(L, ratio) == len_keep
        assert mask.shape == (5, L)
        assert torch.all((mask == 0).sum(1) == len_keep)
        assert math.isclose(mask.mean().item(), 1 - len_keep / L, rel_tol=1e-6)
        # ids_restore is the inverse permutation of ids_shuffle
        arange = torch.arange(L).expand(5, L)
        assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), arange)
        assert torch.equal(torch.gather(ids_restore, 1, ids_shuffle), arange)
        # visible patches are exactly the len_keep lowest-noise ones (numpy oracle)
        for n in range(5):
            lowest = set(np.argsort(noise[n].numpy(), kind="stable")[:len_keep].tolist())
            assert set(torch.nonzero(mask[n] == 0).flatten().tolist()) == lowest
        assert torch.equal(mask_from_ids(ids_shuffle, len_keep), mask)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "0.75"])
def test_mask_ratio_out_of_range_is_rejected(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.rand(1, 196), ratio)


def test_mask_ratio_keeping_nothing_is_rejected():
    with pytest.raises(ValueError, match="keeps no patch"):
        num_visible(49, 0.99)


def test_key_masks_do_not_depend_on_batch_or_order():
    L = 196
    keys = [7, 123456789, 0, 2**40 + 5]
    batch = mask_noise_for_keys(11, keys, L)
    assert batch.shape == (4, L) and batch.dtype == torch.float32 and batch.device.type == "cpu"
    # each key alone, and the batch reversed, give the same rows
    for i, key in enumerate(keys):
        assert torch.equal(mask_noise_for_keys(11, [key], L)[0], batch[i])
    assert torch.equal(mask_noise_for_keys(11, keys[::-1], L), batch.flip(0))
    assert torch.equal(mask_noise_for_keys(11, torch.tensor(keys), L), batch)
    assert torch.equal(mask_noise_for_keys(11, np.array(keys), L), batch)
    # different keys and different seeds differ
    _, _, masks = random_masking(batch, 0.75)
    assert len({tuple(m.tolist()) for m in masks}) == 4
    assert not torch.equal(mask_noise_for_keys(12, keys, L), batch)
    # the seed mix is a fixed function, not the per-process salted hash()
    assert seed_for_key(11, 7) == seed_for_key(11, 7) != seed_for_key(7, 11)
    assert 0 <= seed_for_key(11, -1) < 2**64


def test_key_mask_fraction_over_many_keys():
    noise = mask_noise_for_keys(0, range(200), 196)
    _, _, mask = random_masking(noise, 0.75)
    assert torch.all(mask.sum(1) == 196 - 49)
    # every patch position gets masked sometimes: masks are not one shared pattern
    per_patch = mask.mean(0)
    assert per_patch.min() > 0.5 and per_patch.max() < 0.95


def test_keys_must_be_integers():
    with pytest.raises(TypeError, match="record keys must be integers"):
        mask_noise_for_keys(0, ["a"], 10)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("p", [8, 16])
def test_forward_shapes(p):
    model = small_model(patch_size=p)
    L = (112 // p) ** 2
    pred, mask = model(face_batch(2), mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, L, p * p * 3)
    assert mask.shape == (2, L)
    assert torch.all(mask.sum(1) == L - int(L * 0.25))


def test_forward_rejects_bad_input():
    model = small_model()
    with pytest.raises(ValueError, match=r"expects images \[N, 3, 112, 112\], got \[2, 3, 96, 96\]"):
        model(torch.zeros(2, 3, 96, 96))
    with pytest.raises(ValueError, match="float images"):
        model(torch.zeros(2, 3, 112, 112, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        FaceMAE(patch_size=10, **TINY)


def test_forward_with_explicit_noise_equals_split_forward():
    model = small_model().eval()
    imgs = face_batch(2)
    noise = torch.rand(2, model.num_patches, generator=torch.Generator().manual_seed(1))
    pred, mask = model(imgs, 0.5, noise=noise)
    ids_shuffle, ids_restore, mask2 = random_masking(noise, 0.5)
    latent = model.forward_encoder(imgs, ids_shuffle, num_visible(model.num_patches, 0.5))
    assert latent.shape == (2, 1 + num_visible(model.num_patches, 0.5), 32)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(model.forward_decoder(latent, ids_restore), pred)


def test_prediction_does_not_depend_on_masked_pixels():
    # the encoder sees visible patches only: changing masked pixels leaves the output unchanged
    model = small_model().eval()
    imgs = face_batch(1)
    noise = torch.rand(1, model.num_patches, generator=torch.Generator().manual_seed(2))
    pred, mask = model(imgs, 0.75, noise=noise)
    pixel_mask = model.unpatchify(mask[..., None].expand(-1, -1, 16 * 16 * 3))  # 1 = masked pixel
    altered = torch.where(pixel_mask > 0, -imgs, imgs)
    pred2, _ = model(altered, 0.75, noise=noise)
    torch.testing.assert_close(pred2, pred)


def test_presets_and_config():
    model = create_facemae("tiny", depth=1, decoder_depth=1)
    assert model.config["preset"] == "tiny" and model.config["embed_dim"] == 192
    assert model.config["depth"] == 1 and model.config["patch_size"] == 8
    rebuilt = FaceMAE(**model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="unknown FaceMAE preset 'huge'"):
        create_facemae("huge")
    with pytest.raises(ValueError, match="unknown FaceMAE argument"):
        create_facemae("tiny", dept=3)


# --------------------------------------------------------------------------- loss


def test_loss_matches_numpy_reference():
    g = torch.Generator().manual_seed(5)
    imgs = torch.rand(3, 3, 112, 112, generator=g) * 2 - 1
    model = small_model()
    pred = torch.randn(3, 49, 16 * 16 * 3, generator=g)
    _, _, mask = random_masking(torch.rand(3, 49, generator=g), 0.75)

    # reference: per-patch MSE computed pixel by pixel from image blocks
    target = imgs.numpy()
    pred_img = unpatchify(pred, 16).numpy()
    m = mask.numpy()
    masked_err, visible_err = [], []
    for n in range(3):
        for i in range(49):
            r, c = divmod(i, 7)
            diff = pred_img[n, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] - \
                target[n, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
            (masked_err if m[n, i] else visible_err).append(np.mean(diff.astype(np.float64) ** 2))
    for w in (0.0, 1.0, 0.3):
        expected = np.mean(masked_err) + w * np.mean(visible_err)
        got = masked_mse(pred, model.patchify(imgs), mask, w_visible=w).item()
        assert math.isclose(got, expected, rel_tol=1e-5)


def test_loss_with_no_masked_patches_is_finite():
    pred, target = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    loss = masked_mse(pred, target, torch.zeros(1, 4), w_visible=1.0)
    assert math.isclose(loss.item(), ((pred - target) ** 2).mean().item(), rel_tol=1e-6)


def smooth_batch(n=4, seed=3):
    # low-frequency images: unlike pixel noise, masked patches are predictable from visible ones
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(112, 112), mode="bilinear",
                                           align_corners=True)


def test_a_few_steps_reduce_loss_on_fixed_batch():
    model = small_model(seed=1)
    imgs = smooth_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_at_fixed_mask():
        pred, mask = model(imgs, 0.75, generator=torch.Generator().manual_seed(0))
        return masked_mse(pred, model.patchify(imgs), mask, w_visible=1.0)

    with torch.no_grad():
        before = loss_at_fixed_mask().item()
    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        pred, mask = model(imgs, 0.75, generator=g)
        loss = masked_mse(pred, model.patchify(imgs), mask, w_visible=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at_fixed_mask().item()
    assert after < 0.8 * before


# --------------------------------------------------------------------------- reconstruct


def test_paste_copies_visible_patches_and_full_does_not():
    model = small_model()
    imgs = face_batch(2)
    keys = [10, 11]
    full, mask_full = model.reconstruct(imgs, 0.75, output="full", keys=keys, seed=3)
    paste, mask_paste = model.reconstruct(imgs, 0.75, output="paste", keys=keys, seed=3)
    assert torch.equal(mask_full, mask_paste)
    assert full.shape == imgs.shape and full.dtype == torch.float32
    assert full.min() >= -1 and full.max() <= 1 and paste.min() >= -1 and paste.max() <= 1
    visible = mask_full == 0  # [N, L]
    src, p_out, f_out = patchify(imgs, 16), patchify(paste, 16), patchify(full, 16)
    assert torch.equal(p_out[visible], src[visible])
    # masked patches in paste mode are the same prediction as in full mode
    assert torch.equal(p_out[~visible], f_out[~visible])
    # an untrained model does not reproduce the input: no original pixel leaks in full mode
    assert (f_out[~visible] - src[~visible]).abs().mean() > 0.1
    assert (f_out[visible] - src[visible]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="output must be one of"):
        model.reconstruct(imgs, output="blend")


def test_reconstruct_is_independent_of_batch_composition():
    model = small_model()
    imgs = face_batch(3)
    keys = [42, 7, 1000]
    out, mask = model.reconstruct(imgs, 0.75, output="full", keys=keys, seed=5)
    for i in range(3):
        one, one_mask = model.reconstruct(imgs[i:i + 1], 0.75, output="full", keys=[keys[i]], seed=5)
        assert torch.equal(one_mask[0], mask[i])
        torch.testing.assert_close(one[0], out[i], atol=1e-5, rtol=0)
    # reversed order: rows follow their keys
    rev, rev_mask = model.reconstruct(imgs.flip(0), 0.75, keys=keys[::-1], seed=5)
    assert torch.equal(rev_mask, mask.flip(0))
    torch.testing.assert_close(rev, out.flip(0), atol=1e-5, rtol=0)


def test_reconstruct_restores_training_mode_and_needs_no_grad():
    model = small_model().train()
    out, _ = model.reconstruct(face_batch(1), keys=[1])
    assert model.training and not out.requires_grad
    with pytest.raises(ValueError, match="record keys for a batch"):
        model.reconstruct(face_batch(2), keys=[1])


def test_reconstruct_default_is_seeded():
    model = small_model()
    imgs = face_batch(2)
    a, ma = model.reconstruct(imgs, seed=1)
    b, mb = model.reconstruct(imgs, seed=1)
    _, mc = model.reconstruct(imgs, seed=2)
    assert torch.equal(a, b) and torch.equal(ma, mb) and not torch.equal(ma, mc)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = create_facemae("tiny", depth=1, decoder_depth=1, patch_size=16)
    path = tmp_path / "sub" / "facemae.pt"
    model.save_checkpoint(path, step=17, extra_config={"mask_ratio": 0.75, "irm": {"weight": 1.0}})
    assert sorted(os.listdir(path.parent)) == ["facemae.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "config", "step"} and raw["step"] == 17
    loaded = FaceMAE.from_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.extra_config == {"mask_ratio": 0.75, "irm": {"weight": 1.0}}
    assert loaded.step == 17
    imgs = face_batch(2)
    a, ma = model.reconstruct(imgs, keys=[3, 4])
    b, mb = loaded.reconstruct(imgs, keys=[3, 4])
    assert torch.equal(ma, mb) and torch.equal(a, b)


def test_checkpoint_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        FaceMAE.from_checkpoint(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pt: not a readable torch checkpoint"):
        FaceMAE.from_checkpoint(garbage)

    truncated = tmp_path / "truncated.pt"
    small_model().save_checkpoint(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable"):
        FaceMAE.from_checkpoint(truncated)

    recogniser = tmp_path / "model.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "fc.weight": torch.zeros(512, 10)}, recogniser)
    with pytest.raises(CheckpointError, match="model.pt: this looks like a recogniser state_dict"):
        FaceMAE.from_checkpoint(recogniser)

    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(CheckpointError, match="missing 'model' and/or 'config'"):
        FaceMAE.from_checkpoint(other)

    mismatch = tmp_path / "mismatch.pt"
    small_model().save_checkpoint(mismatch)
    ckpt = torch.load(mismatch, weights_only=True)
    ckpt["config"]["embed_dim"] = 64
    torch.save(ckpt, mismatch)
    with pytest.raises(CheckpointError, match=r"mismatch.pt: weights do not match .*shape"):
        FaceMAE.from_checkpoint(mismatch)

    unknown = tmp_path / "unknown.pt"
    ckpt["config"]["embed_dim"] = 32
    ckpt["config"]["dropout"] = 0.1
    torch.save(ckpt, unknown)
    with pytest.raises(CheckpointError, match=r"unknown.pt: unknown FaceMAE config key\(s\) \['dropout'\]"):
        FaceMAE.from_checkpoint(unknown)


def test_checkpoint_rejects_non_plain_extra_config(tmp_path):
    with pytest.raises(TypeError, match="extra_config.fn holds a function"):
        small_model().save_checkpoint(tmp_path / "x.pt", extra_config={"fn": lambda: 0})
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- precision


def test_bf16_autocast_cpu_is_close_to_fp32():
    model = small_model(patch_size=8).eval()
    imgs = face_batch(2)
    with torch.no_grad():
        ref, mask = model(imgs, 0.75, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, mask_low = model(imgs, 0.75, generator=torch.Generator().manual_seed(0))
            out, _ = model.reconstruct(imgs, keys=[1, 2])
    assert torch.equal(mask, mask_low)
    assert out.dtype == torch.float32
    err = (low.float() - ref).abs()
    assert err.max() < 0.1 and err.mean() < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_key_masks():
    model = small_model()
    imgs = face_batch(2)
    cpu, cpu_mask = model.reconstruct(imgs, keys=[5, 6])
    gpu_model = small_model().cuda()
    gpu, gpu_mask = gpu_model.reconstruct(imgs.cuda(), keys=[5, 6])
    assert torch.equal(gpu_mask.cpu(), cpu_mask)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low, _ = gpu_model.reconstruct(imgs.cuda(), keys=[5, 6])
    assert (low.cpu() - cpu).abs().mean() < 0.02
