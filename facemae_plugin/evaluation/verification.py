"""10-fold face-verification accuracy, the protocol of arcface_torch's eval/verification.py.

Pairs are split into `nrof_folds` contiguous folds in order (no shuffle). For each fold
the distance threshold with the best accuracy on the other folds (first one on ties) is
applied to the held-out fold. Distances are squared L2 between L2-normalised embeddings,
so they lie in [0, 4] and the thresholds are `np.arange(0, 4, 0.01)`.
"""
from dataclasses import dataclass

import numpy as np

from ..core.errors import FaceMAEError

DEFAULT_THRESHOLDS = np.arange(0, 4, 0.01)
_PIXEL_CHUNK = 256  # image pairs per chunk when turning pixels into distances


class VerificationInputError(FaceMAEError):
    """Embeddings, labels or fold settings that the protocol cannot use."""


@dataclass(frozen=True)
class VerificationResult:
    accuracy_mean: float
    accuracy_std: float  # population std over folds, as arcface_torch reports it
    best_thresholds: np.ndarray  # [nrof_folds] threshold chosen on each fold's training part
    fold_accuracies: np.ndarray  # [nrof_folds] accuracy on each held-out fold
    tpr: np.ndarray  # [T] true-positive rate per threshold, mean over held-out folds
    fpr: np.ndarray  # [T] false-positive rate per threshold, mean over held-out folds


def fold_ranges(nrof_pairs, nrof_folds):
    """Contiguous (start, stop) test ranges; the first `nrof_pairs % nrof_folds` folds get one extra."""
    base, extra = divmod(nrof_pairs, nrof_folds)
    sizes = [base + 1 if i < extra else base for i in range(nrof_folds)]
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def l2_normalize(x):
    """Rows divided by their L2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
    return x / np.where(norms == 0, 1.0, norms)


def pair_distances(embeddings1, embeddings2):
    """Squared L2 distance between the normalised rows of two [N, D] arrays -> [N]."""
    e1 = np.asarray(embeddings1, dtype=np.float64)
    e2 = np.asarray(embeddings2, dtype=np.float64)
    if e1.ndim != 2 or e1.shape != e2.shape:
        raise VerificationInputError(
            f"embeddings must be two [N, D] arrays of one shape, got {e1.shape} and {e2.shape}")
    diff = l2_normalize(e1) - l2_normalize(e2)  # [N, D]
    return np.sum(np.square(diff), axis=1)


def accuracy_from_distances(distances, issame, nrof_folds=10, thresholds=None):
    """10-fold accuracy from precomputed pair distances ([N]) and same-identity flags ([N])."""
    dist = np.asarray(distances, dtype=np.float64)
    if dist.ndim != 1 or not np.all(np.isfinite(dist)):
        raise VerificationInputError(f"distances must be a flat array of finite numbers, got shape {dist.shape}")
    same = _check_labels(issame, len(dist))
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    _check_folds(nrof_folds, len(dist))

    # One row per threshold: is each pair classified correctly?
    predicted_same = dist[None, :] < thresholds[:, None]  # [T, N]
    correct = predicted_same == same[None, :]  # [T, N]
    correct_per_threshold = correct.sum(axis=1)  # [T]

    fold_acc, best, tprs, fprs = [], [], [], []
    for start, stop in _folds(len(dist), nrof_folds):
        test_correct = correct[:, start:stop].sum(axis=1)  # [T]
        train_correct = correct_per_threshold - test_correct if nrof_folds > 1 else test_correct
        n_train = len(dist) - (stop - start) if nrof_folds > 1 else len(dist)
        best_index = int(np.argmax(train_correct / n_train))
        best.append(thresholds[best_index])
        fold_acc.append(test_correct[best_index] / (stop - start))
        tpr, fpr = _rates(predicted_same[:, start:stop], same[start:stop])
        tprs.append(tpr)
        fprs.append(fpr)

    fold_acc = np.asarray(fold_acc)
    return VerificationResult(
        accuracy_mean=float(np.mean(fold_acc)), accuracy_std=float(np.std(fold_acc)),
        best_thresholds=np.asarray(best), fold_accuracies=fold_acc,
        tpr=np.mean(tprs, axis=0), fpr=np.mean(fprs, axis=0))


def ten_fold_accuracy(embeddings1, embeddings2, issame, nrof_folds=10, thresholds=None):
    """Verification accuracy of pairs (embeddings1[i], embeddings2[i]); raw vectors are fine."""
    return accuracy_from_distances(
        pair_distances(embeddings1, embeddings2), issame, nrof_folds, thresholds)


def raw_pixel_accuracy(images1, images2, issame, nrof_folds=10):
    """Accuracy of cosine similarity on mean-centred pixels: the no-learning baseline."""
    a, b = np.asarray(images1), np.asarray(images2)
    if a.shape != b.shape or a.ndim < 2:
        raise VerificationInputError(
            f"images must be two stacks [N, ...] of one shape, got {a.shape} and {b.shape}")
    dist = np.concatenate([
        pair_distances(_centred_vectors(a[i:i + _PIXEL_CHUNK]), _centred_vectors(b[i:i + _PIXEL_CHUNK]))
        for i in range(0, len(a), _PIXEL_CHUNK)]) if len(a) else np.zeros(0)
    return accuracy_from_distances(dist, issame, nrof_folds).accuracy_mean


def _centred_vectors(images):
    flat = images.reshape(len(images), -1).astype(np.float64)  # [n, H*W*C]
    return flat - flat.mean(axis=1, keepdims=True)


def _folds(nrof_pairs, nrof_folds):
    # A single fold means "train and test on everything", as arcface_torch's LFold does.
    return [(0, nrof_pairs)] if nrof_folds == 1 else fold_ranges(nrof_pairs, nrof_folds)


def _rates(predicted_same, same):
    """TPR and FPR per threshold row of `predicted_same` ([T, n]); 0 where undefined."""
    tp = np.sum(predicted_same & same, axis=1)
    fp = np.sum(predicted_same & ~same, axis=1)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    tpr = tp / n_pos if n_pos else np.zeros(len(tp))
    fpr = fp / n_neg if n_neg else np.zeros(len(fp))
    return tpr, fpr


def _check_labels(issame, nrof_pairs):
    same = np.asarray(issame)
    if same.ndim != 1 or len(same) != nrof_pairs:
        raise VerificationInputError(
            f"issame must be a flat list of {nrof_pairs} flags (one per pair), got shape {same.shape}")
    if same.dtype != bool:
        if not np.all(np.isin(same, (0, 1))):
            raise VerificationInputError("issame must hold only booleans or 0/1")
        same = same.astype(bool)
    return same


def _check_folds(nrof_folds, nrof_pairs):
    if not isinstance(nrof_folds, (int, np.integer)) or nrof_folds < 1:
        raise VerificationInputError(f"nrof_folds must be a positive integer, got {nrof_folds!r}")
    if nrof_pairs < nrof_folds:
        raise VerificationInputError(
            f"need at least {nrof_folds} pairs for {nrof_folds} folds, got {nrof_pairs}")


# ----------------------------------------------------------------------------- TAR @ FAR

VAL_THRESHOLDS = np.arange(0, 4, 0.001)  # arcface_torch's finer grid for TAR@FAR


@dataclass(frozen=True)
class TarAtFar:
    tar_mean: float  # true-accept rate on the held-out folds, mean over folds
    tar_std: float  # population std over folds
    far_mean: float  # false-accept rate actually reached on the held-out folds
    far_target: float
    thresholds: np.ndarray  # [nrof_folds] threshold chosen on each fold's training part


def ten_fold_tar_at_far(distances, issame, far_target=1e-3, nrof_folds=10, thresholds=None):
    """TAR at a target FAR with arcface_torch's folds, without its scipy crash.

    arcface_torch's `calculate_val` interpolates threshold(FAR) with `interp1d`, which
    current scipy refuses because FAR is a step function of the threshold (repeated x
    values). Here each fold instead takes the largest grid threshold whose FAR on the
    training folds is <= `far_target`: the loosest operating point that still meets the
    target, well defined for any data. Threshold 0 accepts nothing (distances are >= 0),
    so a choice always exists. A fold with no positive (negative) pairs counts TAR (FAR) 0.
    """
    dist = np.asarray(distances, dtype=np.float64)
    if dist.ndim != 1 or not np.all(np.isfinite(dist)):
        raise VerificationInputError(f"distances must be a flat array of finite numbers, got shape {dist.shape}")
    same = _check_labels(issame, len(dist))
    thresholds = VAL_THRESHOLDS if thresholds is None else np.sort(np.asarray(thresholds, dtype=np.float64))
    _check_folds(nrof_folds, len(dist))
    if not 0.0 <= far_target <= 1.0:
        raise VerificationInputError(f"far_target must be in [0, 1], got {far_target!r}")

    tars, fars, chosen = [], [], []
    all_pairs = np.ones(len(dist), dtype=bool)
    for start, stop in _folds(len(dist), nrof_folds):
        test = np.zeros(len(dist), dtype=bool)
        test[start:stop] = True
        train = ~test if nrof_folds > 1 else all_pairs
        _, train_far = _accept_rates(dist[train], same[train], thresholds)  # [T]
        allowed = np.flatnonzero(train_far <= far_target)
        threshold = thresholds[allowed[-1]] if len(allowed) else 0.0
        tar, far = _accept_rates(dist[test], same[test], np.array([threshold]))
        tars.append(tar[0])
        fars.append(far[0])
        chosen.append(threshold)
    return TarAtFar(tar_mean=float(np.mean(tars)), tar_std=float(np.std(tars)),
                    far_mean=float(np.mean(fars)), far_target=float(far_target),
                    thresholds=np.asarray(chosen))


def _accept_rates(dist, same, thresholds):
    """(TAR, FAR) per threshold ([T] each) for the rule "accept when dist < threshold"."""
    # Counting sorted distances below each threshold is O((n + T) log n), not O(n * T).
    positives, negatives = np.sort(dist[same]), np.sort(dist[~same])
    accepted_pos = np.searchsorted(positives, thresholds, side="left")  # [T] count of dist < t
    accepted_neg = np.searchsorted(negatives, thresholds, side="left")
    tar = accepted_pos / len(positives) if len(positives) else np.zeros(len(thresholds))
    far = accepted_neg / len(negatives) if len(negatives) else np.zeros(len(thresholds))
    return tar, far
