"""pixelops: the converter's torch-free worker ops give the torch privatizers' exact bytes."""
import numpy as np
import pytest
import torch

from facemae_plugin.convert import privatize_batch
from facemae_plugin.core.keyseed import num_visible, seed_for_key, variant_key
from facemae_plugin.privatizers.pixelops import torch_rand_bits
from facemae_plugin.privatizers.baselines import GaussianBlur, GaussianNoise, Identity, MaskedOnly, Pixelate


def random_rgb(n=6, size=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("privatizer", [
    Identity(k=2), GaussianBlur(3.0), GaussianBlur(0.8, k=2), Pixelate(8), Pixelate(5, k=2),
    MaskedOnly(8, 0.75, seed=3), MaskedOnly(16, 0.5, seed=0, k=3),
    GaussianNoise(25.0, seed=1), GaussianNoise(60.0, seed=0, k=2),
], ids=lambda p: f"{p.method}-{p.params()}-k{p.k}")
def test_worker_op_gives_the_torch_privatizers_bytes(privatizer):
    rgb, keys = random_rgb(), [1, 2, 3, 500, 2 ** 40, 7]
    expected = privatize_batch(privatizer, rgb, keys)  # the converter's in-process path
    np.testing.assert_array_equal(privatizer.worker_op()(rgb, keys), expected)


def test_blur_float_values_match_bit_for_bit():
    """Same summation order on both sides, not merely the same rounded bytes."""
    blur, rgb = GaussianBlur(3.0), random_rgb(2, seed=1)
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    expected = blur(images, [1, 2]).permute(0, 2, 3, 1).numpy()
    op = blur.worker_op()
    from facemae_plugin.privatizers.pixelops import normalise

    assert np.array_equal(np.stack([op.blur(normalise(image)) for image in rgb]), expected)


@pytest.mark.parametrize("patch_size", [4, 7, 8, 14, 16])
@pytest.mark.parametrize("mask_ratio", [0.0, 0.5, 0.75, 0.9, 0.97, 0.99])
def test_masked_op_and_torch_masks_follow_one_visible_count_rule(patch_size, mask_ratio):
    """The numpy op keeps exactly the torch mask's visible patches, and both refuse a ratio that keeps none."""
    rgb, keys = random_rgb(3), [1, 9, 2 ** 33]
    num_patches = (112 // patch_size) ** 2
    privatizer = MaskedOnly(patch_size, mask_ratio, seed=2)
    if int(num_patches * (1 - mask_ratio)) < 1:
        for run in (lambda: privatizer.worker_op()(rgb, keys), lambda: privatize_batch(privatizer, rgb, keys),
                    lambda: privatizer.check_image_size((112, 112))):
            with pytest.raises(ValueError, match="keeps no patch"):
                run()
        return
    numpy_masks = privatizer.worker_op().masks(keys, num_patches)
    torch_masks = privatizer.masks(keys, num_patches).numpy().astype(bool)
    assert np.array_equal(numpy_masks, torch_masks)
    assert (~numpy_masks).sum(axis=1).tolist() == [num_visible(num_patches, mask_ratio)] * len(keys)
    np.testing.assert_array_equal(privatizer.worker_op()(rgb, keys), privatize_batch(privatizer, rgb, keys))


def test_blur_too_wide_for_the_image_is_refused_like_torch():
    with pytest.raises(ValueError, match="too wide"):
        GaussianBlur(3.0).worker_op()(random_rgb(1, size=8), [1])


def test_torch_rand_is_reproduced_for_any_64_bit_seed():
    seeds = [seed_for_key(3, key) for key in range(64)] + [0, 1, 2 ** 32 + 5, 2 ** 64 - 1]
    expected = np.stack([torch.rand(196, generator=torch.Generator().manual_seed(s)).numpy() for s in seeds])
    assert np.array_equal(torch_rand_bits(seeds, 196).astype(np.float32) / np.float32(2 ** 24), expected)


def test_reconstruction_j_of_a_record_has_its_own_key():
    assert variant_key(5, 0) == 5 and variant_key(5, 1) != variant_key(5, 2)


def test_noise_float_values_match_bit_for_bit():
    noise, rgb, keys = GaussianNoise(25.0, seed=4), random_rgb(2, seed=2), [9, 10]
    images = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    expected = noise(images, keys).permute(0, 2, 3, 1).numpy()
    op = noise.worker_op()
    from facemae_plugin.privatizers.pixelops import gaussian_draws, normalise

    drawn = gaussian_draws(op.seed, keys, (3, 112, 112)).transpose(0, 2, 3, 1)
    assert np.array_equal(np.clip(normalise(rgb) + drawn * op.scale, -1, 1), expected)

