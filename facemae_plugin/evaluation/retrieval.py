"""The leakage metrics built on exact or approximate search: sources, identities, impostors.

Every released (query) embedding searches the whole original gallery (``search``, or
``approximate`` for audits too large to search exactly); this module turns the searches' top-k
lists and source ranks into the audit's figures.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .approximate import RECALL_QUERIES, approximate_search
from .search import RetrievalInputError, SearchResult, chunked_search, score_chunks, unit_rows

DEFAULT_MAX_IMPOSTORS = 1_000_000  # impostor pairs beyond this are sampled, not enumerated
DEFAULT_KS = (1, 5)
FAR_TARGET = 1e-3
EXACT_PAIRS = 25_000_000_000  # (query, gallery) pairs searched exactly under search="auto"; more go approximate
SEARCHES = ("auto", "exact", "approximate")


@dataclass(frozen=True)
class SearchOptions:
    """How a retrieval searches and what it reports; built once by the caller and passed whole.

    ``ks``: the ranks reported; ``far_target``: the TAR@FAR operating point; ``max_impostors`` and
    ``seed``: the impostor sample (``ImpostorCollector``; the approximate search's recall sample too);
    ``search``: ``exact``, ``approximate`` (``approximate.approximate_search``) or ``auto``, exact up to
    ``EXACT_PAIRS`` (query, gallery) pairs; ``recall_queries``: queries the approximate search checks
    against exact search (None: ``approximate.RECALL_QUERIES``); ``chunk``: queries scored at once
    (None: sized to the score budget); ``device``: where exact search scores.
    """

    ks: tuple = DEFAULT_KS
    far_target: float = FAR_TARGET
    max_impostors: int = DEFAULT_MAX_IMPOSTORS
    seed: int = 0
    search: str = "auto"
    recall_queries: Optional[int] = None
    chunk: Optional[int] = None
    device: str = "cpu"
    progress: bool = False


@dataclass
class RetrievalReport:
    """`metrics` is JSON-ready; the arrays feed plots and example grids."""

    metrics: dict
    search: SearchResult
    source_index: np.ndarray  # [Q] gallery row of each query's source record
    impostor_scores: np.ndarray  # [M] released-vs-other-identity cosines (all or a sample)
    recall_rows: np.ndarray = None  # [S] queries whose approximate top-1 was checked against exact search


# ----------------------------------------------------------------------------- keys and pairs


def source_rows(query_keys, gallery_keys):
    """Gallery row of each query's key ([Q] int64); a query key absent from the gallery is named."""
    gallery_keys = np.asarray(gallery_keys, dtype=np.int64)
    query_keys = np.asarray(query_keys, dtype=np.int64)
    order = np.argsort(gallery_keys, kind="stable")
    sorted_keys = gallery_keys[order]
    if len(sorted_keys) > 1 and np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise RetrievalInputError("gallery keys must be unique")
    positions = np.minimum(np.searchsorted(sorted_keys, query_keys), max(len(sorted_keys) - 1, 0))
    found = sorted_keys[positions] == query_keys if len(sorted_keys) else np.zeros(len(query_keys), bool)
    if not found.all():
        missing = int(query_keys[~found][0])
        raise RetrievalInputError(f"query key {missing} has no source record in the gallery")
    return order[positions]


class ImpostorCollector:
    """Scores of (query, gallery) pairs of different identities, taken from the search's score chunks.

    When all such pairs number at most ``max_pairs`` every one is kept (``exhaustive``). Otherwise
    each query gets ``ceil(max_pairs / Q)`` gallery columns drawn uniformly with replacement from a
    generator seeded by ``seed`` before the search starts (so the sample does not depend on the
    chunk size), and the draws that hit the query's own identity are dropped.
    """

    def __init__(self, query_labels, gallery_labels, max_pairs=DEFAULT_MAX_IMPOSTORS, seed=0):
        self.query_labels = torch.from_numpy(np.asarray(query_labels, dtype=np.int64))  # [Q]
        self.gallery_labels = torch.from_numpy(np.asarray(gallery_labels, dtype=np.int64))  # [G]
        self.exhaustive = count_impostor_pairs(query_labels, gallery_labels) <= max_pairs
        self.columns = None  # [Q, m] drawn gallery rows when sampling
        if not self.exhaustive:
            per_query = -(-max_pairs // len(self.query_labels))
            rng = np.random.default_rng(seed)
            self.columns = torch.from_numpy(rng.integers(len(self.gallery_labels),
                                                         size=(len(self.query_labels), per_query)))
        self._parts = []

    def take(self, start, stop, scores):  # scores [c, G]
        query_labels = self.query_labels[start:stop].to(scores.device)[:, None]  # [c, 1]
        if self.exhaustive:
            other = query_labels != self.gallery_labels.to(scores.device)[None, :]  # [c, G]
            self._parts.append(scores[other].cpu().numpy())
            return
        columns = self.columns[start:stop].to(scores.device)  # [c, m]
        other = query_labels != self.gallery_labels.to(scores.device)[columns]  # [c, m]
        self._parts.append(scores.gather(1, columns)[other].cpu().numpy())

    def take_sampled(self, start, stop, pair_scores):
        """Scores [c, m] of queries ``start:stop`` with their drawn ``columns``, computed by the caller."""
        columns = self.columns[start:stop]  # [c, m]
        other = (self.query_labels[start:stop, None] != self.gallery_labels[columns]).numpy()  # [c, m]
        self._parts.append(np.asarray(pair_scores, np.float32)[other])

    def scores(self):
        """All collected impostor scores, [M] float32 in query order."""
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)


@torch.inference_mode()
def impostor_scores(query, gallery, query_labels, gallery_labels, max_pairs=DEFAULT_MAX_IMPOSTORS,
                    seed=0, chunk=None, device="cpu"):
    """``([M] float32, exhaustive)``: impostor cosines as ``ImpostorCollector`` picks them, on their own."""
    collector = ImpostorCollector(query_labels, gallery_labels, max_pairs, seed)
    for start, stop, scores in score_chunks(query, gallery, chunk, device):
        collector.take(start, stop, scores)
        del scores  # free this chunk before the generator computes the next one
    return collector.scores(), collector.exhaustive


def count_impostor_pairs(query_labels, gallery_labels):
    """Number of (query, gallery) pairs whose labels differ, without forming them."""
    shared, query_counts = np.unique(query_labels, return_counts=True)
    gallery_count = dict(zip(*np.unique(gallery_labels, return_counts=True)))
    same = sum(int(n) * int(gallery_count.get(label, 0)) for label, n in zip(shared, query_counts))
    return len(query_labels) * len(gallery_labels) - same


# ----------------------------------------------------------------------------- metrics


def score_tar_at_far(genuine, impostor, far_target=FAR_TARGET):
    """True-accept rate at the loosest threshold whose false-accept rate is <= ``far_target``.

    A pair is accepted when its similarity is strictly above the threshold. The threshold is the
    (floor(far_target * M) + 1)-th highest impostor score, so at most that many impostors minus
    one pass. Returns ``{"tar", "far", "threshold"}``; all ``None`` without impostors.
    """
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]  # descending
    if len(impostor) == 0:
        return {"tar": None, "far": None, "threshold": None}
    allowed = int(np.floor(far_target * len(impostor) + 1e-9))  # impostors that may be accepted
    threshold = impostor[allowed] if allowed < len(impostor) else -np.inf
    return {"tar": float(np.mean(genuine > threshold)) if len(genuine) else None,
            "far": float(np.mean(impostor > threshold)),
            "threshold": float(threshold)}


def evaluate_retrieval(query_emb, gallery_emb, query_keys, gallery_keys, query_labels, gallery_labels,
                       options=SearchOptions(), normalised=False, gallery_copies=None):
    """Search every query in the gallery (cosine) as ``options`` (``SearchOptions``) say and measure
    leakage; see ``retrieval_metrics``. ``normalised=True``: the embeddings are unit rows already
    (numpy or memory maps), used as they are. ``gallery_copies`` [G]: rows with equal values hold the
    same photo (``audit.copies_of``); finding a copy of its source counts as finding the source.
    """
    ks = sorted({int(k) for k in options.ks})
    query_labels = _labels(query_labels, len(query_emb), "query")
    gallery_labels = _labels(gallery_labels, len(gallery_emb), "gallery")
    if len(query_keys) != len(query_emb) or len(gallery_keys) != len(gallery_emb):
        raise RetrievalInputError(
            f"need one key per embedding: {len(query_keys)} query keys for {len(query_emb)} rows, "
            f"{len(gallery_keys)} gallery keys for {len(gallery_emb)} rows")
    source_index = source_rows(query_keys, gallery_keys)
    q, g = (query_emb, gallery_emb) if normalised else (unit_rows(query_emb), unit_rows(gallery_emb))  # [Q, D], [G, D]
    collector = ImpostorCollector(query_labels, gallery_labels, options.max_impostors, options.seed)
    method = choose_search(options.search, len(q), len(g), collector.exhaustive)
    recall_rows = None
    depth = max(ks) + 1  # one more than asked: re-identification drops each query's own source
    if method == "exact":
        result = chunked_search(q, g, depth, source_index=source_index, chunk=options.chunk, device=options.device,
                                impostors=collector)
        search_info = {"method": "exact"}
    else:
        result, search_info, recall_rows = approximate_search(
            q, g, depth, source_index, collector, options.recall_queries or RECALL_QUERIES, seed=options.seed,
            progress=options.progress)
    impostors, exhaustive = collector.scores(), collector.exhaustive

    metrics = {"queries": int(len(q)), "gallery": int(len(g)), "dim": int(q.shape[1]), "search": search_info}
    copies = np.arange(len(g)) if gallery_copies is None else np.asarray(gallery_copies)  # [G]
    found_source = copies[result.top_indices] == copies[source_index][:, None]  # [Q, depth]
    found_identity = gallery_labels[result.top_indices] == query_labels[:, None]  # [Q, depth]
    for k in ks:
        metrics[f"instance_rank{k}"] = float(found_source[:, :k].any(1).mean()) if len(q) else 0.0
        metrics[f"identity_rank{k}"] = float(found_identity[:, :k].any(1).mean()) if len(q) else 0.0
    metrics.update(reidentification_metrics(result.top_indices, source_index, query_labels, gallery_labels, ks))
    metrics["mean_source_cosine"] = float(np.mean(result.source_scores, dtype=np.float64)) if len(q) else None
    exact_ranks = len(q) and method == "exact"  # approximate ranks stop at the candidate count
    metrics["median_source_rank"] = float(np.median(result.source_ranks)) if exact_ranks else None
    verification = score_tar_at_far(result.source_scores, impostors, options.far_target)
    metrics.update({"far_target": options.far_target, "tar_at_far": verification["tar"],
                    "far": verification["far"], "threshold": verification["threshold"],
                    "impostor_pairs": int(len(impostors)), "impostors_exhaustive": exhaustive,
                    "mean_impostor_cosine": float(np.mean(impostors, dtype=np.float64)) if len(impostors) else None})
    return RetrievalReport(metrics, result, source_index, impostors, recall_rows)


def without_source(top_indices, source_index, width):
    """Each query's ranked gallery rows with its own source row taken out: ``[Q, width]``.

    ``top_indices`` [Q, depth] holds at least ``width + 1`` rows, or every gallery row, so ``width``
    rows remain whether or not the source ranked among them.
    """
    is_source = top_indices == source_index[:, None]  # [Q, depth], at most one True per row
    order = np.argsort(is_source, axis=1, kind="stable")  # the source last, the others in rank order
    return np.take_along_axis(top_indices, order, 1)[:, :width]


def reidentification_metrics(top_indices, source_index, query_labels, gallery_labels, ks=DEFAULT_KS):
    """``reid_rank{k}``: a released image's person found among the *other* originals (its source held out).

    Only queries whose identity has another gallery image can be re-identified; they are the
    denominator (``reid_queries``). Ranks past what the search kept count as misses.
    """
    ids, counts = np.unique(gallery_labels, return_counts=True)
    others = np.zeros(len(query_labels), np.int64)  # [Q] gallery images of the query's person, source excluded
    present = np.isin(query_labels, ids)
    others[present] = counts[np.searchsorted(ids, query_labels[present])] - 1
    eligible = others > 0  # [Q]
    width = max(0, min(max(ks), len(gallery_labels) - 1))
    ranked = without_source(top_indices, source_index, width)  # [Q, width]
    hits = gallery_labels[ranked] == query_labels[:, None]  # [Q, width]
    metrics = {"reid_queries": int(eligible.sum())}
    for k in ks:
        metrics[f"reid_rank{k}"] = float(hits[eligible, :k].any(1).mean()) if eligible.any() else None
    return metrics


def retrieval_metrics(query_emb, gallery_emb, query_keys, gallery_keys, query_labels, gallery_labels,
                      options=SearchOptions()):
    """Leakage of released (query) embeddings [Q, D] against their originals (gallery) [G, D].

    Embeddings are L2-normalised here. A query's *source* is the gallery record with its key.
    Returns a JSON-ready dict:
      instance_rank{k}   fraction of queries whose top-k holds their own source record
      identity_rank{k}   fraction whose top-k holds any gallery image of their identity
      reid_rank{k}       the same with each query's source held out of the gallery (re-identification,
                         ``reidentification_metrics``), over ``reid_queries`` queries
      mean_source_cosine mean cosine of (query, source) pairs
      median_source_rank median number of gallery rows scoring strictly above the source
      tar_at_far         TAR of (query, source) pairs against (query, other-identity) impostor
                         pairs at FAR ``far_target``, with ``far`` reached and ``threshold``;
      impostor_pairs     how many impostors were scored (all, or about ``max_impostors`` sampled,
                         see ``ImpostorCollector``).
    """
    return evaluate_retrieval(query_emb, gallery_emb, query_keys, gallery_keys, query_labels,
                              gallery_labels, options).metrics


def choose_search(search, num_queries, gallery_size, exhaustive_impostors):
    """``exact`` or ``approximate`` for ``search`` (one of ``SEARCHES``) at this size."""
    if search not in SEARCHES:
        raise RetrievalInputError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if search == "auto":
        small = num_queries * gallery_size <= EXACT_PAIRS or exhaustive_impostors
        return "exact" if small else "approximate"
    if search == "approximate" and exhaustive_impostors:
        raise RetrievalInputError("approximate search samples impostors, but these sets have at most max_impostors "
                                  "impostor pairs; search exactly or lower max_impostors")
    return search


def _labels(labels, n, name):
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise RetrievalInputError(f"need one {name} label per embedding ({n}), got shape {labels.shape}")
    return labels
