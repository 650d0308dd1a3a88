"""Procedural synthetic faces: determinism, format, and the difficulty the demo relies on."""
import cv2
import numpy as np
import pytest

from facemae_plugin.data import faces as synth
from facemae_plugin.evaluation.verification import raw_pixel_accuracy, ten_fold_accuracy


def test_same_seed_identity_and_index_give_the_same_bytes():
    first = synth.identity_images(3, 7, 4)
    again = synth.identity_images(3, 7, 4)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
    # Image i does not depend on how many images were asked for.
    alone = synth.render_face(synth.identity_traits(3, 7), synth.image_rng(3, 7, 2))
    assert alone.tobytes() == first[2].tobytes()
    assert synth.identity_images(3, 7, 2)[1].tobytes() == first[1].tobytes()


def test_images_ignore_global_random_state_and_other_identities():
    before = synth.identity_images(5, 11, 3)
    np.random.seed(1234)
    cv2.setRNGSeed(99)
    synth.identity_images(5, 12, 5)  # another identity drawn in between
    after = synth.identity_images(5, 11, 3)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))


def test_image_format_is_uint8_bgr_112_ready_for_imencode():
    image = synth.identity_images(0, 0, 1)[0]
    assert image.shape == (synth.IMAGE_SIZE, synth.IMAGE_SIZE, 3) == (112, 112, 3)
    assert image.dtype == np.uint8 and image.flags.c_contiguous
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok and cv2.imdecode(encoded, cv2.IMREAD_COLOR).shape == (112, 112, 3)
    assert image.std() > 10, "an image should not be flat"


def test_images_vary_within_an_identity_and_seeds_differ():
    images = synth.identity_images(0, 4, 3)
    assert images[0].tobytes() != images[1].tobytes() != images[2].tobytes()
    assert synth.identity_images(1, 4, 1)[0].tobytes() != images[0].tobytes()


def test_identities_have_different_traits():
    a, b = synth.identity_traits(0, 1), synth.identity_traits(0, 2)
    assert a.skin != b.skin and a.eye_spacing != b.eye_spacing and a.mouth_y != b.mouth_y
    again = synth.identity_traits(0, 1)
    assert again.skin == a.skin and np.array_equal(again.skin_pattern, a.skin_pattern)
    # Seed and identity are not interchangeable.
    assert synth.identity_traits(1, 0).eye_spacing != a.eye_spacing


def test_neutral_landmarks_match_the_insightface_template():
    face_align = pytest.importorskip("insightface.utils.face_align")
    template = np.asarray(face_align.arcface_dst)  # [5, 2] the 112x112 alignment target
    landmarks = np.stack([synth.face_landmarks(synth.identity_traits(0, i)) for i in range(200)])
    assert np.abs(landmarks.mean(axis=0) - template).max() < 2.5
    assert np.abs(landmarks - template).max() < 10, "single faces stay near the template"


def test_eyes_are_drawn_at_the_landmarks():
    # In the mean of many faces the eye columns are darker at eye height than the nose column.
    images = np.stack([im for i in range(30) for im in synth.identity_images(9, i, 2)])
    grey = images.mean(axis=(0, 3))  # [112, 112]
    eye_rows = grey[48:56]
    nose = eye_rows[:, 52:60].mean()
    assert eye_rows[:, 33:44].mean() < nose - 5 and eye_rows[:, 68:79].mean() < nose - 5
    assert grey[64:72, 33:44].mean() > eye_rows[:, 33:44].mean() + 5, "cheeks below the eyes are lighter"


@pytest.mark.parametrize("kwargs,name", [
    (dict(seed=-1, identity=0, count=1), "seed"),
    (dict(seed=0, identity=-3, count=1), "identity"),
    (dict(seed=0, identity=0, count=-1), "count"),
    (dict(seed=0.5, identity=0, count=1), "seed"),
])
def test_bad_arguments_raise_one_clear_error(kwargs, name):
    with pytest.raises(synth.SynthInputError, match=f"{name} must be a non-negative integer"):
        synth.identity_images(**kwargs)


# ---------------------------------------------------------------- detail: identity in fine features

def test_detail_narrows_coarse_traits_with_the_same_draws_and_keeps_categorical_ones():
    plain = [synth.identity_traits(2, i) for i in range(60)]
    fine = [synth.identity_traits(2, i, detail=1.0) for i in range(60)]
    for name, (low, high) in {"eye_spacing": (14.5, 20.5), "head_half_width": (36, 46), "mouth_y": (87, 97)}.items():
        middle = (low + high) / 2
        narrowed = [middle + (getattr(t, name) - middle) * 0.25 for t in plain]
        assert np.allclose([getattr(t, name) for t in fine], narrowed), name
    for name in ("hair_style", "beard", "glasses", "moles"):
        assert [getattr(t, name) for t in fine] == [getattr(t, name) for t in plain], name
    assert np.std([t.skin for t in fine], axis=0).mean() < 0.5 * np.std([t.skin for t in plain], axis=0).mean()


def test_detail_adds_freckles_in_proportion_and_zero_adds_none():
    assert all(synth.identity_traits(0, i).freckles == () for i in range(20))
    counts = {d: np.mean([len(synth.identity_traits(0, i, detail=d).freckles) for i in range(40)]) for d in (0.5, 1.0)}
    assert 20 <= counts[1.0] <= 45 and counts[0.5] == pytest.approx(counts[1.0] / 2, rel=0.1)
    again = synth.identity_images(0, 3, 2, detail=0.7)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again, synth.identity_images(0, 3, 2, detail=0.7)))


def _share_surviving_blur(detail, pairs=30, sigma=3.0):
    """How much of the difference between two people survives a blur, under identical nuisance."""
    shares = []
    for k in range(pairs):
        nuisance = [synth.image_rng(1, 0, k) for _ in range(2)]  # same pose, light, background, noise
        a, b = (synth.render_face(synth.identity_traits(1, 2 * k + j, detail), nuisance[j]).astype(np.float64)
                for j in range(2))
        difference = a - b
        shares.append((cv2.GaussianBlur(difference, (0, 0), sigma) ** 2).sum() / (difference ** 2).sum())
    return float(np.mean(shares))


def test_detail_moves_identity_into_what_blur_removes():
    coarse, fine = _share_surviving_blur(0.0), _share_surviving_blur(1.0)
    assert fine < coarse - 0.1, f"blur keeps {fine:.2f} of identity at detail 1 vs {coarse:.2f} at detail 0"


@pytest.mark.parametrize("detail", [-0.1, 1.5, "high", True])
def test_bad_detail_raises_one_clear_error(detail):
    with pytest.raises(synth.SynthInputError, match="detail must be a number in"):
        synth.identity_traits(0, 0, detail)


# ---------------------------------------------------------------- difficulty

def _dataset(seed, identities, per_identity):
    images, labels = [], []
    for identity in identities:
        images += synth.identity_images(seed, identity, per_identity)
        labels += [identity] * per_identity
    return np.stack(images), np.array(labels)


def _pairs(labels, count, rng):
    """Alternating same-identity and different-identity pairs of image indices."""
    identities = np.unique(labels)
    first, second, same = [], [], []
    for k in range(count):
        if k % 2 == 0:
            members = np.flatnonzero(labels == rng.choice(identities))
            a, b = rng.choice(members, 2, replace=False)
        else:
            i, j = rng.choice(identities, 2, replace=False)
            a, b = rng.choice(np.flatnonzero(labels == i)), rng.choice(np.flatnonzero(labels == j))
        first.append(a)
        second.append(b)
        same.append(k % 2 == 0)
    return np.array(first), np.array(second), np.array(same)


def _small_features(images, size=28):
    """Area-downsampled pixels: still a linear function of the image."""
    small = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
    return np.stack(small).reshape(len(images), -1).astype(np.float64)


def _fit_pca_lda(features, labels, n_pca=100, ridge=1e-3):
    """Fisher LDA on PCA-reduced features, whitened by the within-identity scatter: a linear map."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problem: threads only add contention
    try:
        x = torch.from_numpy(features)
        mean = x.mean(0)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        pca = vt[:n_pca].T  # [D, P]
        z = (x - mean) @ pca  # [N, P]
        classes = torch.from_numpy(np.unique(labels, return_inverse=True)[1])
        means = torch.stack([z[classes == c].mean(0) for c in range(int(classes.max()) + 1)])  # [C, P]
        within = z - means[classes]
        scatter = within.T @ within / len(z)  # [P, P]
        scatter += ridge * scatter.trace() / len(scatter) * torch.eye(len(scatter), dtype=scatter.dtype)
        eigenvalues, eigenvectors = torch.linalg.eigh(scatter)
        whiten = eigenvectors / eigenvalues.sqrt()  # [P, P]
        _, _, between = torch.linalg.svd((means - means.mean(0)) @ whiten, full_matrices=False)
        projection = (pca @ whiten @ between[:len(means) - 1].T).numpy()  # [D, C-1]
    finally:
        torch.set_num_threads(threads)
    mean = mean.numpy()
    return lambda f: (f - mean) @ projection


def test_raw_pixels_fail_but_a_linear_model_learns_identity():
    train_images, train_labels = _dataset(0, range(40), 10)
    test_images, test_labels = _dataset(0, range(1000, 1020), 10)  # held-out identities
    first, second, same = _pairs(test_labels, 300, np.random.default_rng(0))

    raw = raw_pixel_accuracy(test_images[first], test_images[second], same)
    embed = _fit_pca_lda(_small_features(train_images), train_labels)
    embeddings = embed(_small_features(test_images))
    learned = ten_fold_accuracy(embeddings[first], embeddings[second], same).accuracy_mean

    assert raw <= 0.75, f"raw-pixel verification too easy: {raw:.3f}"
    assert learned >= raw + 0.10, f"identity not learnable enough: learned {learned:.3f} vs raw {raw:.3f}"
