"""Baseline privatizers do what they say, checked against OpenCV / numpy / FaceMAE's own masks."""
import cv2
import numpy as np
import pytest
import torch

from facemae_plugin.models.mae import create_facemae
from facemae_plugin.privatizers.baselines import (
    GaussianBlur,
    GaussianNoise,
    Identity,
    MaskedOnly,
    Pixelate,
)
from facemae_plugin.privatizers.methods import make_privatizer
from facemae_plugin.core.errors import UsageError
from facemae_plugin.core.keyseed import variant_key
from facemae_plugin.privatizers.facemae import ReconstructionStage


def random_images(n, seed=0):
    """[N, 3, 112, 112] in [-1, 1] with plenty of high-frequency content."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(-1, 1, size=(n, 3, 112, 112)).astype(np.float32))


def high_frequency_energy(images):
    """Spectral energy outside the lowest quarter of frequencies, per image."""
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(images.numpy()), axes=(-2, -1))) ** 2
    h, w = images.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    far = np.hypot(yy - h // 2, xx - w // 2) > min(h, w) / 8
    return spectrum[..., far].sum(axis=(-1, -2))


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_blur_matches_opencv_and_removes_high_frequencies(sigma):
    images = random_images(2)
    out = GaussianBlur(sigma)(images, [1, 2])
    ksize = 2 * int(np.ceil(3 * sigma)) + 1
    for image, blurred in zip(images, out):
        hwc = image.permute(1, 2, 0).numpy()
        expected = cv2.GaussianBlur(hwc, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(blurred.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert (high_frequency_energy(out) < 0.1 * high_frequency_energy(images)).all()
    flat = torch.full((1, 3, 112, 112), 0.25)
    torch.testing.assert_close(GaussianBlur(sigma)(flat, [0]), flat)  # weights sum to one


@pytest.mark.parametrize("block", [8, 5])
def test_pixelate_gives_constant_blocks_of_the_block_mean(block):
    images = random_images(2, seed=1)
    out = Pixelate(block)(images, [1, 2]).numpy()
    source = images.numpy()
    for y in range(0, 112, block):
        for x in range(0, 112, block):  # with block 5 the last row/column of blocks is 2 pixels wide
            cell_in = source[:, :, y:y + block, x:x + block]
            cell_out = out[:, :, y:y + block, x:x + block]
            expected = cell_in.mean(axis=(2, 3), keepdims=True)
            np.testing.assert_allclose(cell_out, np.broadcast_to(expected, cell_out.shape), atol=1e-6)


def test_noise_has_the_std_asked_for_and_is_fixed_by_seed_and_key():
    grey = torch.zeros(4, 3, 112, 112)  # mid-grey: no clipping for std 20 grey levels
    keys = [3, 4, 5, 6]
    noisy = GaussianNoise(std=20.0, seed=1)(grey, keys)
    levels = noisy.numpy() * 127.5  # back to grey levels
    assert abs(levels.std() - 20.0) < 0.3 and abs(levels.mean()) < 0.3
    again = GaussianNoise(std=20.0, seed=1)(grey[[2, 0]], [5, 3])  # other batch, other order
    torch.testing.assert_close(again, noisy[[2, 0]])
    assert not torch.equal(noisy[0], noisy[1])
    assert not torch.equal(GaussianNoise(std=20.0, seed=2)(grey, keys), noisy)
    variants = GaussianNoise(std=20.0, seed=1, k=2).variants(grey, keys)
    torch.testing.assert_close(variants[:, 0], noisy)
    assert not torch.equal(variants[:, 0], variants[:, 1])


def test_noise_is_clipped_to_valid_pixels():
    white = torch.ones(1, 3, 112, 112)
    out = GaussianNoise(std=50.0)(white, [1])
    assert out.max() <= 1.0 and out.min() >= -1.0 and out.mean() < 1.0


def test_masked_only_is_grey_exactly_where_facemae_masks():
    torch.manual_seed(0)
    model = create_facemae("tiny", depth=1, decoder_depth=1)
    images = random_images(3, seed=2)
    keys = [11, 12, 13]
    masked = MaskedOnly(patch_size=8, mask_ratio=0.75, seed=4)
    out = masked(images, keys)
    _, facemae_mask = model.reconstruct(images, 0.75, keys=keys, seed=4)  # [N, L], 1 = masked
    patches_in, patches_out = model.patchify(images), model.patchify(out)
    hidden = facemae_mask.bool()
    assert (patches_out[hidden] == 0).all()  # grey, 127.5, is 0 after normalisation
    assert torch.equal(patches_out[~hidden], patches_in[~hidden])
    assert int(hidden.sum()) == 3 * 147  # 196 patches, 49 stay visible
    # variant j uses the mask FaceMAE's stage uses for reconstruction j
    second = MaskedOnly(8, 0.75, seed=4, k=2).variants(images, keys)[:, 1]
    stage_mask = ReconstructionStage(model, seed=4, k=2).masks(keys, j=1)
    assert (model.patchify(second)[stage_mask.bool()] == 0).all()
    assert torch.equal(stage_mask, MaskedOnly(8, 0.75, seed=4).masks([variant_key(k, 1) for k in keys], 196))


def test_deterministic_baselines_repeat_across_variants():
    images = random_images(2, seed=3)
    for privatizer in (GaussianBlur(2.0, k=2), Pixelate(4, k=2), Identity(k=2)):
        out = privatizer.variants(images, [1, 2])
        assert out.shape == (2, 2, 3, 112, 112)
        assert torch.equal(out[:, 0], out[:, 1])
    torch.testing.assert_close(Identity()(images, [1, 2]), images)


def test_factory_builds_every_method(tmp_path):
    checkpoint = tmp_path / "facemae.pt"
    torch.manual_seed(0)
    create_facemae("tiny", depth=1, decoder_depth=1).save_checkpoint(checkpoint)
    built = {
        "facemae": make_privatizer("facemae", checkpoint=checkpoint, seed=1, k=2),
        "blur": make_privatizer("blur", sigma=2.0),
        "pixelate": make_privatizer("pixelate", block_size=4),
        "noise": make_privatizer("noise", std=10.0, seed=1),
        "masked": make_privatizer("masked", patch_size=8, mask_ratio=0.5),
    }
    images = random_images(2, seed=4)
    for method, privatizer in built.items():
        assert privatizer.provenance()["method"] == method
        out = privatizer(images, [1, 2])
        assert out.shape == images.shape and not torch.equal(out, images)
    assert built["facemae"].provenance()["k"] == 2
    assert built["pixelate"].provenance()["block_size"] == 4


def test_factory_names_what_is_wrong():
    with pytest.raises(ValueError, match="unknown privatization method 'swirl'"):
        make_privatizer("swirl")
    with pytest.raises(ValueError, match=r"blur takes no parameter\(s\) \['std'\]"):
        make_privatizer("blur", std=3)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_privatizer("facemae")
    with pytest.raises(ValueError, match="sigma"):
        make_privatizer("blur", sigma=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        make_privatizer("masked", mask_ratio=1.5)


def test_every_method_in_the_registry_resolves_and_declares_what_the_package_asks():
    from facemae_plugin.protocol.report import METHOD_COLOURS
    from facemae_plugin.privatizers.methods import BASELINE_METHODS, METHODS, STRENGTHS, _factory
    from facemae_plugin.privatizers.privatizer import Privatizer

    for name, method in METHODS.items():
        factory = _factory(method.factory)
        made = factory.__self__ if hasattr(factory, "__self__") else factory  # a class, or a classmethod's class
        assert issubclass(made, Privatizer) and made.method == name, name
        assert method.strength is None or method.strength.param in method.params, name
        assert METHOD_COLOURS[name] == method.colour
    assert set(STRENGTHS) == set(METHODS) and set(BASELINE_METHODS) == set(METHODS) - {"facemae"}
    blur = make_privatizer("blur", sigma=2.0)
    assert isinstance(blur, GaussianBlur) and blur.sigma == 2.0
    with pytest.raises(UsageError, match="method facemae needs a checkpoint"):
        make_privatizer("facemae", mask_ratio=0.5)
