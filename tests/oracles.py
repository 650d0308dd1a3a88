"""Brute-force numpy references of the retrieval metrics: every score formed, every ranking sorted."""
import numpy as np


def brute_force_ranking(query, gallery):
    """Full score matrix [Q, G] (float64) and every row's gallery order (score desc, index asc)."""
    scores = np.asarray(query, np.float64) @ np.asarray(gallery, np.float64).T
    return scores, np.argsort(-scores, axis=1, kind="stable")


def unit_rows(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_metrics(query, gallery, query_keys, gallery_keys, query_labels, gallery_labels, ks, far):
    """Every metric from the full Q x G cosine matrix, with a threshold sweep for TAR@FAR."""
    scores, order = brute_force_ranking(unit_rows(query), unit_rows(gallery))
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    source = np.array([list(gallery_keys).index(k) for k in query_keys])
    out = {}
    for k in ks:
        out[f"instance_rank{k}"] = np.mean([source[i] in order[i, :k] for i in range(len(query))])
        out[f"identity_rank{k}"] = np.mean([np.any(gallery_labels[order[i, :k]] == query_labels[i])
                                            for i in range(len(query))])
        # re-identification: the ranking without the source; only queries whose person has another image count
        eligible = [i for i in range(len(query)) if np.sum(gallery_labels == query_labels[i]) > 1]
        hits = [np.any(gallery_labels[[g for g in order[i] if g != source[i]][:k]] == query_labels[i])
                for i in eligible]
        out[f"reid_rank{k}"] = np.mean(hits)
    genuine = scores[np.arange(len(query)), source]
    impostor = scores[query_labels[:, None] != gallery_labels[None, :]]
    out["mean_source_cosine"] = genuine.mean()
    out["median_source_rank"] = np.median([(scores[i] > genuine[i]).sum() for i in range(len(query))])
    out["tar_at_far"] = threshold_sweep_tar(genuine, impostor, far)
    out["impostor_pairs"] = impostor.size
    return out


def threshold_sweep_tar(genuine, impostor, far):
    """Try every observed score as threshold (accept: score > t); the lowest meeting FAR wins."""
    for t in np.unique(np.concatenate([[-np.inf], genuine, impostor])):
        if np.mean(impostor > t) <= far:
            return np.mean(genuine > t)
    raise AssertionError("unreachable: the largest score always meets any FAR")
