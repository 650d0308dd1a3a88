"""10-fold verification accuracy against a loop reference and arcface_torch's calculate_roc."""
import ast
import os

import numpy as np
import pytest

from facemae_plugin.evaluation.verification import (VerificationInputError, accuracy_from_distances,
                                                    raw_pixel_accuracy, ten_fold_accuracy)

THRESHOLDS = np.arange(0, 4, 0.01)


# ---------------------------------------------------------------- independent references

def reference_folds(n, k):
    """Test index lists of an ordered, unshuffled k-fold split: first n % k folds one larger."""
    folds, start = [], 0
    for i in range(k):
        size = n // k + (1 if i < n % k else 0)
        folds.append(list(range(start, start + size)))
        start += size
    return folds


def reference_accuracy(dist, same, indices, threshold):
    right = 0
    for i in indices:
        if (dist[i] < threshold) == bool(same[i]):
            right += 1
    return right / len(indices)


def reference_distance(a, b):
    a = a / np.sqrt(sum(x * x for x in a))
    b = b / np.sqrt(sum(x * x for x in b))
    return sum((x - y) ** 2 for x, y in zip(a, b))


def reference_from_distances(dist, same, k=10):
    fold_accs, best = [], []
    for test in reference_folds(len(dist), k):
        train = [i for i in range(len(dist)) if i not in set(test)]
        best_acc, best_t = -1.0, None
        for t in THRESHOLDS:
            acc = reference_accuracy(dist, same, train, t)
            if acc > best_acc:  # strict: the first maximum wins
                best_acc, best_t = acc, t
        best.append(best_t)
        fold_accs.append(reference_accuracy(dist, same, test, best_t))
    return np.array(fold_accs), np.array(best)


def planted_pairs(n_pairs, dim, noise, seed):
    """Same pairs are noisy copies, different pairs are independent draws."""
    rng = np.random.default_rng(seed)
    same = rng.random(n_pairs) < 0.5
    e1 = rng.normal(size=(n_pairs, dim)) * rng.uniform(0.5, 3.0, size=(n_pairs, 1))
    other = rng.normal(size=(n_pairs, dim))
    e2 = np.where(same[:, None], e1 + noise * rng.normal(size=(n_pairs, dim)), other)
    return e1, e2, same


# ---------------------------------------------------------------- against the loop reference

@pytest.mark.parametrize("n_pairs,noise,seed", [(600, 1.0, 0), (437, 1.4, 1), (123, 0.8, 2)])
def test_matches_loop_reference(n_pairs, noise, seed):
    e1, e2, same = planted_pairs(n_pairs, 16, noise, seed)
    dist = np.array([reference_distance(a, b) for a, b in zip(e1, e2)])
    ref_folds, ref_best = reference_from_distances(dist, same)
    result = ten_fold_accuracy(e1, e2, same)
    np.testing.assert_allclose(result.fold_accuracies, ref_folds, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.best_thresholds, ref_best, rtol=0, atol=1e-12)
    assert abs(result.accuracy_mean - np.mean(ref_folds)) < 1e-12
    assert abs(result.accuracy_std - np.std(ref_folds)) < 1e-12
    assert 0.6 < result.accuracy_mean < 0.99, "planted structure should make the task neither trivial nor hopeless"


def test_ties_pick_the_first_best_threshold():
    # Distances on a coarse grid make many thresholds tie on the training folds.
    rng = np.random.default_rng(3)
    same = rng.random(200) < 0.5
    dist = np.where(same, rng.choice([0.5, 1.5], 200), rng.choice([1.5, 2.5], 200))
    ref_folds, ref_best = reference_from_distances(dist, same)
    result = accuracy_from_distances(dist, same)
    np.testing.assert_array_equal(result.best_thresholds, ref_best)
    np.testing.assert_array_equal(result.fold_accuracies, ref_folds)


def test_embeddings_are_normalised_inside():
    e1, e2, same = planted_pairs(300, 8, 1.0, 4)
    scale = np.random.default_rng(5).uniform(0.01, 100, size=(300, 1))
    a = ten_fold_accuracy(e1, e2, same)
    b = ten_fold_accuracy(e1 * scale, e2, same)
    np.testing.assert_allclose(a.fold_accuracies, b.fold_accuracies, atol=1e-12)


def test_single_fold_trains_and_tests_on_all_pairs():
    e1, e2, same = planted_pairs(150, 8, 1.2, 6)
    dist = np.array([reference_distance(a, b) for a, b in zip(e1, e2)])
    everything = list(range(150))
    best = max(THRESHOLDS, key=lambda t: reference_accuracy(dist, same, everything, t))  # first max
    result = ten_fold_accuracy(e1, e2, same, nrof_folds=1)
    assert result.best_thresholds[0] == best
    assert result.accuracy_mean == reference_accuracy(dist, same, everything, best)


def test_raw_pixel_accuracy_is_cosine_on_centred_pixels():
    rng = np.random.default_rng(7)
    n = 300
    same = rng.random(n) < 0.5
    base = rng.integers(0, 256, size=(n, 6, 5, 3))
    noisy = np.clip(base + rng.normal(0, 60, size=base.shape), 0, 255)
    img1 = base.astype(np.uint8)
    img2 = np.where(same[:, None, None, None], noisy, rng.integers(0, 256, size=base.shape)).astype(np.uint8)
    dist = []
    for a, b in zip(img1, img2):
        va = a.reshape(-1).astype(float)
        vb = b.reshape(-1).astype(float)
        dist.append(reference_distance(va - va.mean(), vb - vb.mean()))
    ref_folds, _ = reference_from_distances(np.array(dist), same)
    assert abs(raw_pixel_accuracy(img1, img2, same) - np.mean(ref_folds)) < 1e-12


@pytest.mark.parametrize("call,message", [
    (lambda: ten_fold_accuracy(np.ones((10, 3)), np.ones((10, 4)), [True] * 10), "same shape|one shape"),
    (lambda: ten_fold_accuracy(np.ones((10, 3)), np.ones((10, 3)), [True] * 9), "10 flags"),
    (lambda: ten_fold_accuracy(np.ones((5, 3)), np.ones((5, 3)), [True] * 5), "at least 10 pairs"),
    (lambda: accuracy_from_distances(np.ones(10), [2] * 10), "booleans or 0/1"),
    (lambda: accuracy_from_distances(np.full(10, np.nan), [1] * 10), "finite"),
])
def test_bad_input_raises_one_clear_error(call, message):
    with pytest.raises(VerificationInputError, match=message):
        call()


# ---------------------------------------------------------------- against arcface_torch itself

def load_arcface_calculate_roc():
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("ARCFACE_TORCH_ROOT is not set: no arcface_torch checkout to compare with")
    try:
        from sklearn.model_selection import KFold
    except ImportError:
        pytest.skip("scikit-learn is not installed: arcface_torch's calculate_roc needs its KFold")
    path = os.path.join(root, "eval", "verification.py")
    source = open(path).read()
    # The module imports mxnet at top, so only the three definitions calculate_roc uses are run.
    wanted = {"LFold", "calculate_roc", "calculate_accuracy"}
    tree = ast.parse(source)
    body = [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted]
    assert {node.name for node in body} == wanted, f"{path} no longer defines {wanted}"
    namespace = {"np": np, "KFold": KFold}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace["calculate_roc"]


@pytest.mark.parametrize("n_pairs,noise,seed", [(600, 1.0, 10), (513, 1.3, 11)])
def test_matches_arcface_torch_calculate_roc(n_pairs, noise, seed):
    calculate_roc = load_arcface_calculate_roc()
    e1, e2, same = planted_pairs(n_pairs, 32, noise, seed)
    n1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)  # arcface_torch normalises before evaluate()
    n2 = e2 / np.linalg.norm(e2, axis=1, keepdims=True)
    tpr, fpr, accuracy = calculate_roc(THRESHOLDS, n1, n2, same, nrof_folds=10)
    result = ten_fold_accuracy(e1, e2, same)
    np.testing.assert_allclose(result.fold_accuracies, accuracy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.tpr, tpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.fpr, fpr, rtol=0, atol=1e-12)
    assert abs(result.accuracy_mean - np.mean(accuracy)) < 1e-12
    assert abs(result.accuracy_std - np.std(accuracy)) < 1e-12
