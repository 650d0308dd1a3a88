"""Leakage from a reconstructor's training set: do released faces look like the people it was trained on?

A FaceMAE release of split B is drawn by a model trained on split A, other real people. Each
released image is compared with every identity *centre* of A (the re-normalised mean of that
identity's unit embeddings) and its nearest centre kept. An image "looks like" an A identity when
that cosine exceeds the attacker's threshold at FAR ``far_target`` for images against identity
centres, measured on A itself: A images against the centres of the *other* A identities are pairs
known to be different people. The same fraction for the original B images is the base rate (B's
own look-alikes of A); only the excess is leakage. Released and original images are paired record
by record, so the excess is judged by McNemar's test on the records that change side.
"""
import math

import numpy as np
import torch

from .retrieval import score_tar_at_far
from .search import RetrievalInputError, score_chunks

FLAG_Z = 3.0  # McNemar z above which the release holds more look-alikes than chance allows
TOP_IDENTITIES = 10


def identity_centres(embeddings, labels):
    """``(centres [C, D] float32 unit rows, centre_labels [C] int64 ascending)`` of unit ``embeddings`` [N, D]."""
    labels = np.asarray(labels, np.int64)
    centre_labels, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(centre_labels), embeddings.shape[1]), np.float64)
    for start in range(0, len(labels), 1 << 16):  # memory maps: a block of rows at a time
        np.add.at(sums, inverse[start:start + (1 << 16)], np.asarray(embeddings[start:start + (1 << 16)], np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms == 0, 1.0, norms)).astype(np.float32), centre_labels


def nearest_centres(query, centres, order=None):
    """``(scores [Q] float32, rows [Q] int64)``: each query's best centre (lowest row among equal scores).

    ``order``: score ``query[order]`` instead of ``query``, without gathering it in memory.
    """
    count = len(query) if order is None else len(order)
    scores, rows = np.empty(count, np.float32), np.empty(count, np.int64)
    for start, stop, block in score_chunks(query, centres, order=order):
        best = block.max(dim=1).values  # [r]
        scores[start:stop] = best.numpy()
        # argmax of the first position equal to the max: the lowest row wins a tie, whatever topk does
        rows[start:stop] = (block == best[:, None]).to(torch.uint8).argmax(dim=1).numpy()
    return scores, rows


def centre_impostor_scores(train, train_labels, centres, centre_labels, max_pairs, seed=0):
    """Cosines of A images against the centres of other A identities: all pairs, or a seeded sample of rows.

    Rows (images) are sampled, each scored against every centre but its own, so the sample holds
    about ``max_pairs`` pairs; returns ``(scores [M] float32, exhaustive)``.
    """
    if len(centres) < 2:
        raise RetrievalInputError("the training set holds one identity: no other identity to tell it from")
    per_row = len(centres) - 1
    exhaustive = len(train) * per_row <= max_pairs
    rows = np.arange(len(train)) if exhaustive else np.sort(np.random.default_rng(seed).choice(
        len(train), size=max(1, min(len(train), max_pairs // per_row)), replace=False))
    own = np.searchsorted(centre_labels, np.asarray(train_labels, np.int64)[rows])  # [R] centre row of each image
    picked = np.asarray(train[rows], np.float32)
    parts = []
    for start, stop, block in score_chunks(picked, centres):
        keep = np.ones(block.shape, bool)
        keep[np.arange(stop - start), own[start:stop]] = False
        parts.append(block.numpy()[keep])
    return np.concatenate(parts), exhaustive


def mcnemar_z(released_above, original_above):
    """z of McNemar's test that released records cross the threshold more often than their originals."""
    gained = int(np.sum(released_above & ~original_above))
    lost = int(np.sum(original_above & ~released_above))
    return (gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0, gained, lost


def training_set_leakage(released, original, train, train_labels, original_rows=None, far_target=1e-3,
                         max_impostors=1_000_000, seed=0, top=TOP_IDENTITIES):
    """Look-alikes of the training identities among released [Q, D] and original unit rows (paired).

    ``original_rows`` [Q]: the row of ``original`` holding each released image's source (default:
    the same row). ``train`` [N, D] unit rows of A with ``train_labels`` [N]. Returns a JSON-ready dict: the
    threshold, the fraction of released and of original images above it, McNemar's z and whether
    the release is flagged, and the A identities released images resemble most often; with it the
    nearest-centre cosines of released and original images ([Q] float32 each), for the histogram.
    """
    paired = len(original) if original_rows is None else len(original_rows)
    if len(released) != paired:
        raise RetrievalInputError(f"released and original rows differ in number: {len(released)} vs {paired}")
    centres, centre_labels = identity_centres(train, train_labels)
    impostors, exhaustive = centre_impostor_scores(train, train_labels, centres, centre_labels, max_impostors, seed)
    threshold = score_tar_at_far(np.empty(0), impostors, far_target)["threshold"]
    released_scores, released_rows = nearest_centres(released, centres)
    original_scores, original_nearest = nearest_centres(original, centres, original_rows)
    released_above, original_above = released_scores > threshold, original_scores > threshold
    z, gained, lost = mcnemar_z(released_above, original_above)
    metrics = {
        "training_identities": int(len(centres)), "training_images": int(len(train)),
        "far_target": far_target, "threshold": float(threshold), "impostor_pairs": int(len(impostors)),
        "impostors_exhaustive": bool(exhaustive),
        "released_fraction": float(released_above.mean()) if len(released) else 0.0,
        "original_fraction": float(original_above.mean()) if len(original) else 0.0,
        "released_mean_nearest_cosine": float(np.mean(released_scores, dtype=np.float64)) if len(released) else None,
        "original_mean_nearest_cosine": float(np.mean(original_scores, dtype=np.float64)) if len(original) else None,
        "records_gained": gained, "records_lost": lost, "mcnemar_z": float(z), "flag_z": FLAG_Z,
        "flagged": bool(z > FLAG_Z),
        "top_identities": _most_hit(centre_labels, released_rows[released_above], original_nearest[original_above],
                                    top),
    }
    return metrics, released_scores, original_scores


def _most_hit(centre_labels, released_rows, original_rows, top):
    """The A identities most released images resemble (above the threshold), with the originals' count."""
    released_counts = np.bincount(released_rows, minlength=len(centre_labels))
    original_counts = np.bincount(original_rows, minlength=len(centre_labels))
    order = np.lexsort((centre_labels, -released_counts))[:top]  # most hits first, label breaks ties
    return [{"label": int(centre_labels[i]), "released": int(released_counts[i]), "original": int(original_counts[i])}
            for i in order if released_counts[i] > 0]
