"""Exact search at scale: every query row against every gallery row, a chunk of query rows at a time.

The Q x G score matrix is never held: queries go through in chunks of rows, each chunk's scores
``[chunk, G]`` are reduced by the caller (top-k, the source's score and rank, the nearest identity
centre) and dropped, so memory is O(chunk x G) on top of the embeddings, and a query held in a
memory map is read a chunk at a time. ``SCORE_BUDGET`` sets the chunk for every search.

Ties are broken one way everywhere: a higher score first, and among equal scores the lower
gallery index first -- the order of a stable ``np.argsort(-scores)``. This makes results
independent of the chunk size and of how ``torch.topk`` happens to order equal values.
"""
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import FaceMAEError

SCORE_BUDGET = 1 << 25  # float32 scores per chunk (128 MiB): sets the default chunk rows
COUNT_BLOCK = 1 << 23  # scores compared at a time when ranking sources (see _count_above)


class RetrievalInputError(FaceMAEError):
    """Embeddings, keys or labels that cannot be searched as asked; the message says what was expected."""


@dataclass
class SearchResult:
    """Per-query outcome of one pass over the gallery (Q queries)."""

    top_scores: np.ndarray  # [Q, k] float32, best first
    top_indices: np.ndarray  # [Q, k] int64 gallery rows, tie order as in the module docstring
    source_scores: np.ndarray = None  # [Q] float32 score of each query's own source row
    source_ranks: np.ndarray = None  # [Q] int64 gallery rows scoring strictly higher than the source


def unit_rows(embeddings):
    """Rows of ``[N, D]`` scaled to unit length, float32 torch; all-zero rows stay zero."""
    x = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings)
    x = x.to(torch.float32)
    norms = x.norm(dim=1, keepdim=True)  # [N, 1]
    return x / torch.where(norms == 0, torch.ones_like(norms), norms)


def default_chunk(gallery_size):
    """Query rows per chunk so that one chunk's scores stay within ``SCORE_BUDGET`` floats."""
    return max(1, SCORE_BUDGET // max(1, gallery_size))


def score_chunks(query, gallery, chunk=None, device="cpu", order=None):
    """Yield ``(start, stop, scores [stop - start, G])`` for consecutive chunks of query rows.

    query [Q, D] (an array, a memory map or a tensor, read one chunk of rows at a time) and
    gallery [G, D] are checked; the gallery moves to ``device`` once, each chunk when it is scored.
    Each chunk's scores are the inner products of its rows with every gallery row, freed when the
    caller moves on. ``order`` [n]: score ``query[order]`` instead, in that order, each chunk's rows
    read in ascending order (a memory map reads forward).
    """
    g = _as_matrix(gallery, "gallery").to(device)
    query = query if hasattr(query, "shape") else np.asarray(query, np.float32)
    if len(query.shape) != 2:
        raise RetrievalInputError(f"query embeddings must be a [N, D] matrix, got shape {tuple(query.shape)}")
    if query.shape[1] != g.shape[1]:
        raise RetrievalInputError(f"query and gallery dimensions differ: {query.shape[1]} vs {g.shape[1]}")
    if len(g) == 0:
        raise RetrievalInputError("the gallery is empty: nothing to search")
    chunk = default_chunk(len(g)) if chunk is None else int(chunk)
    if chunk < 1:
        raise RetrievalInputError(f"chunk must be a positive number of query rows, got {chunk}")
    count = len(query) if order is None else len(order)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        rows = _as_matrix(_read_rows(query, start, stop, order), "query").to(device)  # [c, D]
        yield start, stop, rows @ g.T  # [c, G]; BLAS reads the transposed view, no copy


def _read_rows(query, start, stop, order):
    """Rows ``start:stop`` of ``query``, or of ``query[order]`` (read in ascending row order, then put back)."""
    if order is None:
        return query[start:stop]
    wanted = np.asarray(order[start:stop], np.int64)
    ascending = np.sort(wanted)
    block = query[ascending]
    return block[np.searchsorted(ascending, wanted)]


@torch.inference_mode()
def chunked_search(query, gallery, k, source_index=None, chunk=None, device="cpu", impostors=None):
    """Top-k gallery rows by inner product for every query row, one chunk of queries at a time.

    query [Q, D], gallery [G, D]: already normalised when cosines are wanted. ``k`` larger than
    G is clamped to G. With ``source_index`` [Q] the score and rank of each query's source row
    are recorded too (rank = number of rows scoring strictly higher; 0 means nothing beats it).
    ``impostors`` (an ``ImpostorCollector``) picks its pairs from the same score chunks.
    """
    if k < 1:
        raise RetrievalInputError(f"k must be a positive integer, got {k}")
    num_queries, gallery_size = len(query), len(gallery)
    k = min(int(k), max(1, gallery_size))
    result = SearchResult(np.empty((num_queries, k), np.float32), np.empty((num_queries, k), np.int64))
    if source_index is not None:
        source_index = np.asarray(source_index, dtype=np.int64)
        result.source_scores = np.empty(num_queries, np.float32)
        result.source_ranks = np.empty(num_queries, np.int64)
    for start, stop, scores in score_chunks(query, gallery, chunk, device):
        values, indices = _topk_with_ties(scores, k)
        result.top_scores[start:stop] = values
        result.top_indices[start:stop] = indices
        if source_index is not None:
            rows = torch.as_tensor(source_index[start:stop], device=scores.device)
            own = scores.gather(1, rows[:, None])  # [c, 1]: the very values the ranks compare against
            result.source_scores[start:stop] = own[:, 0].cpu().numpy()
            result.source_ranks[start:stop] = _count_above(scores, own)
        if impostors is not None:
            impostors.take(start, stop, scores)
        del scores  # free this chunk before the generator computes the next one
    return result


def _count_above(scores, threshold):
    """Per row of ``scores`` [c, G], how many entries exceed ``threshold`` [c, 1] -> numpy [c] int64."""
    # The comparison and the sum's int64 cast each materialise a [rows, G] tensor (9 bytes per
    # score). Blocks of 8M scores bound them whatever the chunk, and keep the int64 buffer above
    # glibc's 32 MiB mmap ceiling so it goes back to the OS when freed (smaller blocks pile up in
    # the heap instead).
    rows = max(1, COUNT_BLOCK // max(1, scores.shape[1]))
    counts = [(scores[r:r + rows] > threshold[r:r + rows]).sum(1) for r in range(0, len(scores), rows)]
    return torch.cat(counts).cpu().numpy() if counts else np.zeros(0, np.int64)


def chunked_topk(query, gallery, k, chunk=None, device="cpu"):
    """``(scores [Q, k] float32, indices [Q, k] int64)``: the k best gallery rows per query."""
    result = chunked_search(query, gallery, k, chunk=chunk, device=device)
    return result.top_scores, result.top_indices


def _topk_with_ties(scores, k):
    """Top-k of each row of ``scores`` [c, G] in (score desc, index asc) order -> numpy [c, k] x2."""
    gallery_size = scores.shape[1]
    # One extra candidate shows whether a tie straddles the k-th place; only such rows need a full look.
    depth = min(k + 1, gallery_size)
    values, indices = scores.topk(depth, dim=1)  # [c, depth], descending, tie order unspecified
    values, indices = values.cpu().numpy(), indices.cpu().numpy()
    straddling = np.flatnonzero(values[:, k - 1] == values[:, depth - 1]) if depth > k else []
    values, indices = sort_desc_then_index(values[:, :k], indices[:, :k])
    for row in straddling:
        values[row], indices[row] = _row_topk_exact(scores[row], k)
    return values, indices


def sort_desc_then_index(values, indices):
    """``values``, ``indices`` [..., n] reordered along the last axis: score descending, then index ascending."""
    order = np.lexsort((indices, -values), axis=-1)  # primary key last: score desc, then index asc
    return np.take_along_axis(values, order, -1), np.take_along_axis(indices, order, -1)


def _row_topk_exact(row_scores, k):
    """A row whose k-th best score is tied beyond k: keep every tied row, then cut by index."""
    kth = row_scores.topk(k).values[-1]
    candidates = torch.nonzero(row_scores >= kth)[:, 0]  # [m >= k], ascending indices
    values = row_scores[candidates].cpu().numpy()
    values, indices = sort_desc_then_index(values, candidates.cpu().numpy())
    return values[:k], indices[:k]


def _as_matrix(x, name):
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise RetrievalInputError(f"{name} embeddings must be a [N, D] matrix, got shape {tuple(t.shape)}")
    return t.to(torch.float32)
