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


# ----------------------------------------------------------------------------- originals in published files

FIGURE_SCALES = tuple(np.round(np.arange(0.4, 1.45, 0.05), 2))  # a face drawn at 45..162 px, as figures draw it


def originals_shown(folder, original_dir, threshold=0.95, scales=FIGURE_SCALES):
    """Every image file under ``folder`` (any name: whatever OpenCV decodes) searched for every original
    face of ``original_dir`` by normalised cross-correlation at each of ``scales``: ``[(file, key,
    correlation)]`` of the matches at or above ``threshold``, the best scale and place of each pair."""
    import os

    import cv2

    from facemae_plugin.formats.shard import FaceShard

    with FaceShard(original_dir) as shard:
        originals = {int(key): cv2.cvtColor(shard.decode(key), cv2.COLOR_RGB2GRAY) for key in shard.image_keys}
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            picture = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
            if picture is None:
                continue
            for key, face in originals.items():
                best = max(_best_correlation(picture, face, scale) for scale in scales)
                if best >= threshold:
                    found.append((os.path.relpath(path, folder), key, best))
    return found


def _best_correlation(picture, face, scale):
    side = int(round(face.shape[0] * scale))
    if side > min(picture.shape) or side < 8:
        return -1.0
    import cv2

    template = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    return float(cv2.matchTemplate(picture, template, cv2.TM_CCOEFF_NORMED).max())


def visible_patch_matcher(original_dir, released_dir, masks, patch_size, every=1):
    """Rank-1 instance leakage of the brute-force matcher on what a mask leaves verbatim: each released
    face (every ``every``-th, for time) is compared with every original on its visible patches alone
    (``masks``: ``{key: [L] 1 = masked}``) by mean absolute difference of the decoded RGB pixels; its
    source is found when no other original is strictly closer. Every such pair is formed."""
    import cv2

    from facemae_plugin.formats.shard import FaceShard

    def patches(shard):  # [N, L, p * p * 3]: each image's patches, row-major, as the masks number them
        images = np.stack([cv2.imdecode(np.frombuffer(shard.read(k)[1], np.uint8), cv2.IMREAD_COLOR)
                           for k in shard.image_keys]).astype(np.float32)  # [N, H, W, 3]
        n, h, w, c = images.shape
        side = h // patch_size
        grid = images.reshape(n, side, patch_size, side, patch_size, c).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(grid.reshape(n, side * side, -1))

    with FaceShard(original_dir) as original, FaceShard(released_dir) as released:
        gallery, query, keys = patches(original), patches(released), list(original.image_keys)
        assert list(released.image_keys) == keys
    found, queries = 0, range(0, len(keys), every)
    for i in queries:
        visible = np.flatnonzero(np.asarray(masks[keys[i]]) == 0)  # [V] patch indices
        distances = np.abs(gallery[:, visible] - query[i, visible]).mean(axis=(1, 2))  # [G]
        found += distances[i] <= distances.min()
    return found / len(queries)
