"""Approximate search for audits too large to search exactly: a faiss inverted file, then exact re-ranking.

The gallery is clustered into about sqrt(G) lists (faiss ``IndexIVF`` with k-means centroids
trained on a sample drawn with the audit's seed) and each row is stored in its list as a 4-bit
product-quantised code (``PQ..x4fs``, faiss's SIMD "fast scan" layout, 32 rows a block). A query
scans only the lists of its ``probes`` nearest centroids, ranks their codes by approximate inner
product and re-ranks its ``candidates`` best by their exact inner products, read from the
embeddings on disk.

How many lists to probe depends on the data: clustered face embeddings need few, isotropic
random ones (the benchmark's) many more. So recall is measured, never assumed: for
``recall_queries`` queries drawn with the audit's seed the exact top-1 (a brute-force pass over
the whole gallery) is compared with the approximate one, the probes grow by a quarter until the
recall reaches ``recall_target``, and once every list is probed the candidates double up to
``MAX_CANDIDATES``. The report carries the recall reached beside every figure.

Source ranks are counted among the candidates, so a rank of ``candidates`` means "at least that".
"""
import math

import numpy as np

from .search import SearchResult, sort_desc_then_index

CANDIDATES = 64
MAX_CANDIDATES = 1024
FIRST_PROBES = 16
PROBE_STEP = 1.25  # probes grow by a quarter: each step costs the sample little, an overshoot the whole set much
RECALL_TARGET = 0.99
RECALL_QUERIES = 1000
TRAIN_ROWS_PER_LIST = 64  # k-means sample size per list (faiss asks for at least 39)
DIMS_PER_SUBVECTOR = 8  # 4 bits per 8 dimensions; coarser codes rank weak matches too poorly to re-rank them
ROW_BLOCK = 1 << 16  # gallery rows added or brute-forced at a time
RERANK_BUDGET = 1 << 24  # gathered embedding floats per re-ranking block (64 MiB)


def list_count(gallery_size):
    """Inverted lists for a gallery: the power of two nearest sqrt(G), with enough rows to train each."""
    lists = 2 ** round(math.log2(max(1.0, math.sqrt(gallery_size))))
    while lists > 1 and lists * TRAIN_ROWS_PER_LIST > gallery_size:
        lists //= 2
    return lists


def subvectors(dim):
    """Product-quantiser sub-vectors: the largest divisor of ``dim`` up to dim / DIMS_PER_SUBVECTOR."""
    most = max(1, dim // DIMS_PER_SUBVECTOR)
    return max(m for m in range(1, most + 1) if dim % m == 0)


def build_index(gallery, seed=0, progress=False):
    """A trained faiss inverted file holding every gallery row [G, D] (unit rows, numpy or memory maps)."""
    import faiss
    from tqdm import tqdm

    size, dim = gallery.shape
    lists = list_count(size)
    spec = f"IVF{lists},PQ{subvectors(dim)}x4fs"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)  # an IndexIVFPQFastScan
    index.by_residual = False  # one look-up table per query, not one per probed list
    index.cp.seed = index.pq.cp.seed = seed
    sample = np.sort(np.random.default_rng(seed).choice(size, min(size, lists * TRAIN_ROWS_PER_LIST),
                                                        replace=False))
    index.train(_float32(gallery[sample]))
    for start in tqdm(range(0, size, ROW_BLOCK), desc="index", unit="block", disable=not progress):
        index.add(_float32(gallery[start:start + ROW_BLOCK]))
    return index


def approximate_search(query, gallery, k, source_index, impostors=None, recall_queries=RECALL_QUERIES,
                       recall_target=RECALL_TARGET, seed=0, progress=False):
    """``(SearchResult, info, recall_rows)``: top-k of every query by re-ranked inverted-file candidates.

    query [Q, D], gallery [G, D]: unit rows (numpy or memory maps). ``impostors`` (a sampling
    ``ImpostorCollector``) gets the scores of its drawn pairs. ``info`` (JSON-ready) says which
    search ran, its probes and candidates and the recall@1 measured on the queries ``recall_rows``.
    """
    from tqdm import tqdm

    k = min(int(k), len(gallery))
    index = build_index(gallery, seed, progress)
    rows = np.sort(np.random.default_rng(seed).choice(len(query), size=min(recall_queries, len(query)),
                                                      replace=False))
    exact_top1 = brute_force_top1(_float32(query[rows]), gallery)  # [S]
    effort, recall = tune_effort(index, query, gallery, rows, exact_top1, k, recall_target)

    result = SearchResult(np.empty((len(query), k), np.float32), np.empty((len(query), k), np.int64),
                          np.empty(len(query), np.float32), np.empty(len(query), np.int64))
    block = max(1, RERANK_BUDGET // (effort.candidates * gallery.shape[1]))
    for start in tqdm(range(0, len(query), block), desc="search", unit="block", disable=not progress):
        stop = min(start + block, len(query))
        q = _float32(query[start:stop])  # [c, D]
        top_scores, top_indices, cand_scores = search_block(index, effort, q, gallery, k)
        result.top_scores[start:stop], result.top_indices[start:stop] = top_scores, top_indices
        own = pair_scores(q, gallery, source_index[start:stop, None])[:, 0]  # [c]
        result.source_scores[start:stop] = own
        result.source_ranks[start:stop] = (cand_scores > own[:, None]).sum(1)
        if impostors is not None:
            impostors.take_sampled(start, stop, pair_scores(q, gallery, impostors.columns[start:stop].numpy()))
    info = {"method": "approximate", "index": f"faiss IVF{index.nlist},PQ{index.pq.M}x4fs, exact re-ranking",
            "lists": int(index.nlist), "probes": int(effort.probes), "candidates": int(effort.candidates),
            "recall_at_1": recall, "recall_queries": int(len(rows)), "recall_target": recall_target}
    return result, info, rows


class Effort:
    """How hard each query searches: inverted lists probed and candidates re-ranked exactly."""

    def __init__(self, probes, candidates):
        self.probes, self.candidates = probes, candidates

    def harder(self, lists, gallery_size):
        """The next setting up (more probes, then more candidates), or None at the most there is."""
        if self.probes < lists:
            return Effort(min(math.ceil(PROBE_STEP * self.probes), lists), self.candidates)
        most = min(gallery_size, MAX_CANDIDATES)
        return Effort(self.probes, min(2 * self.candidates, most)) if self.candidates < most else None


def tune_effort(index, query, gallery, rows, exact_top1, k, recall_target):
    """``(Effort, recall@1)``: the least effort, step by step, whose top-1 on ``rows`` reaches ``recall_target``."""
    q = _float32(query[rows])  # [S, D]
    lists = int(index.nlist)
    effort = Effort(min(FIRST_PROBES, lists), min(max(CANDIDATES, k), len(gallery)))
    while True:
        _, top_indices, _ = search_block(index, effort, q, gallery, 1)
        recall = float(np.mean(top_indices[:, 0] == exact_top1)) if len(rows) else 1.0
        harder = effort.harder(lists, len(gallery))
        if recall >= recall_target or harder is None:
            return effort, recall
        effort = harder


def search_block(index, effort, q, gallery, k):
    """Re-ranked top-k of queries ``q`` [c, D]: ``(scores [c, k], indices [c, k], candidate scores [c, m])``.

    A query whose probed lists hold fewer than ``k`` rows is searched exactly instead.
    """
    index.nprobe = effort.probes
    _, ids = index.search(q, effort.candidates)  # [c, m] best codes; -1 where the lists ran out
    ids = ids.astype(np.int64)
    missing = ids < 0
    scores = pair_scores(q, gallery, np.where(missing, 0, ids))  # [c, m] exact inner products
    scores[missing] = -np.inf
    scores, ids = sort_desc_then_index(scores, np.where(missing, len(gallery), ids))
    top_scores, top_ids = scores[:, :k], ids[:, :k]
    for row in np.flatnonzero(np.isinf(top_scores).any(1)):
        top_scores[row], top_ids[row] = exact_topk(q[row], gallery, k)
    return top_scores, top_ids, scores


def exact_topk(q, gallery, k):
    """``(scores [k], rows [k])``: the exact best gallery rows of one query ``q`` [D], lower row first on ties."""
    scores = np.concatenate([_float32(gallery[s:s + ROW_BLOCK]) @ q for s in range(0, len(gallery), ROW_BLOCK)])
    rows = np.argsort(-scores, kind="stable")[:k]
    return scores[rows], rows


def pair_scores(q, gallery, columns):
    """[c, m] float32 inner products of each query row with the gallery rows ``columns`` [c, m]."""
    needed = np.unique(columns)  # ascending: each row read once, in file order
    picked = _float32(gallery[needed])[np.searchsorted(needed, columns)]  # [c, m, D]
    return np.matmul(picked, q[:, :, None])[:, :, 0]


def brute_force_top1(q, gallery):
    """[S] exact top-1 gallery row of each query row, the lower row winning a tie, over gallery blocks."""
    best_scores = np.full(len(q), -np.inf, np.float32)
    best_rows = np.zeros(len(q), np.int64)
    for start in range(0, len(gallery), ROW_BLOCK):
        scores = q @ _float32(gallery[start:start + ROW_BLOCK]).T  # [S, b]
        rows = scores.argmax(1)  # first maximum: the lowest row of the block
        values = scores[np.arange(len(q)), rows]
        better = values > best_scores  # strictly: an earlier block keeps a tie
        best_scores[better], best_rows[better] = values[better], start + rows[better]
    return best_rows


def _float32(x):
    return np.ascontiguousarray(x, dtype=np.float32)
