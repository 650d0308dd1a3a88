"""Approximate search for audits too large to search exactly: faiss binary codes, then exact re-ranking.

Every embedding is rotated at random and reduced to ``CODE_BITS`` sign bits (faiss ``IndexLSH``,
whose rotation is fixed, so codes do not depend on the data). The Hamming distance between two
codes grows with the angle between their embeddings whatever the data's structure, so a query's
nearest codes hold its nearest embeddings with high probability; a clustering index (IVF, HNSW)
needs clustered data, which isotropic test embeddings lack. Each query's ``candidates`` nearest
codes (an exhaustive Hamming scan, 32 bytes per row instead of 2 KiB) are re-ranked by their
exact inner products, read from the embeddings on disk.

Recall is measured, never assumed: for ``recall_queries`` queries drawn with the audit's seed
the exact top-1 (a brute-force pass over the whole gallery) is compared with the approximate one,
and the candidate count doubles until the recall reaches ``recall_target`` or ``MAX_CANDIDATES``.
The report carries the recall reached beside every figure.

Source ranks are counted among the candidates, so a rank of ``candidates`` means "at least that".
"""
import numpy as np

from .retrieval import SearchResult, _sort_desc_then_index

CODE_BITS = 256
FIRST_CANDIDATES = 32
MAX_CANDIDATES = 1024
RECALL_TARGET = 0.99
RECALL_QUERIES = 1000
ROW_BLOCK = 1 << 16  # gallery rows encoded or scanned at a time
RERANK_BUDGET = 1 << 24  # gathered embedding floats per re-ranking block (64 MiB)


def code_index(gallery, progress=False):
    """``(encoder, codes)``: the LSH encoder and a faiss binary index of the gallery's codes."""
    import faiss
    from tqdm import tqdm

    dim = gallery.shape[1]
    encoder = faiss.IndexLSH(dim, CODE_BITS, True, False)  # random rotation, sign thresholds at 0
    encoder.train(_float32(gallery[:min(len(gallery), 1024)]))  # sets up the rotation only
    codes = faiss.IndexBinaryFlat(CODE_BITS)
    for start in tqdm(range(0, len(gallery), ROW_BLOCK), desc="codes", unit="block", disable=not progress):
        codes.add(encoder.sa_encode(_float32(gallery[start:start + ROW_BLOCK])))
    return encoder, codes


def approximate_search(query, gallery, k, source_index, impostors=None, recall_queries=RECALL_QUERIES,
                       recall_target=RECALL_TARGET, seed=0, progress=False):
    """``(SearchResult, info, recall_rows)``: top-k of every query by re-ranked code candidates.

    query [Q, D], gallery [G, D]: unit rows (numpy or memory maps). ``impostors`` (a sampling
    ``ImpostorCollector``) gets the scores of its drawn pairs. ``info`` (JSON-ready) says which
    search ran, its candidate count and the recall@1 measured on the queries ``recall_rows``.
    """
    from tqdm import tqdm

    k = min(int(k), len(gallery))
    encoder, codes = code_index(gallery, progress)
    rows = np.sort(np.random.default_rng(seed).choice(len(query), size=min(recall_queries, len(query)),
                                                      replace=False))
    exact_top1 = brute_force_top1(_float32(query[rows]), gallery)  # [S]
    candidates, recall = tune_candidates(encoder, codes, query, gallery, rows, exact_top1, k, recall_target)

    result = SearchResult(np.empty((len(query), k), np.float32), np.empty((len(query), k), np.int64),
                          np.empty(len(query), np.float32), np.empty(len(query), np.int64))
    block = max(1, RERANK_BUDGET // (candidates * gallery.shape[1]))
    for start in tqdm(range(0, len(query), block), desc="search", unit="block", disable=not progress):
        stop = min(start + block, len(query))
        q = _float32(query[start:stop])  # [c, D]
        top_scores, top_indices, cand_scores = search_block(encoder, codes, q, gallery, candidates, k)
        result.top_scores[start:stop], result.top_indices[start:stop] = top_scores, top_indices
        own = pair_scores(q, gallery, source_index[start:stop, None])[:, 0]  # [c]
        result.source_scores[start:stop] = own
        result.source_ranks[start:stop] = (cand_scores > own[:, None]).sum(1)
        if impostors is not None:
            impostors.take_sampled(start, stop, pair_scores(q, gallery, impostors.columns[start:stop].numpy()))
    info = {"method": "approximate", "index": f"faiss IndexLSH {CODE_BITS}-bit codes, exact re-ranking",
            "candidates": int(candidates), "recall_at_1": recall, "recall_queries": int(len(rows)),
            "recall_target": recall_target}
    return result, info, rows


def tune_candidates(encoder, codes, query, gallery, rows, exact_top1, k, recall_target):
    """``(candidates, recall@1)``: the fewest candidates (doubling) reaching ``recall_target`` on ``rows``."""
    q = _float32(query[rows])  # [S, D]
    candidates = max(FIRST_CANDIDATES, k)
    while True:
        candidates = min(candidates, len(gallery), MAX_CANDIDATES)
        _, top_indices, _ = search_block(encoder, codes, q, gallery, candidates, 1)
        recall = float(np.mean(top_indices[:, 0] == exact_top1)) if len(rows) else 1.0
        if recall >= recall_target or candidates >= min(len(gallery), MAX_CANDIDATES):
            return candidates, recall
        candidates *= 2


def search_block(encoder, codes, q, gallery, candidates, k):
    """Re-ranked top-k of queries ``q`` [c, D]: ``(scores [c, k], indices [c, k], candidate scores [c, m])``."""
    _, ids = codes.search(encoder.sa_encode(q), candidates)  # [c, m] nearest codes (Hamming)
    ids = ids.astype(np.int64)
    scores = pair_scores(q, gallery, ids)  # [c, m] exact inner products
    scores, ids = _sort_desc_then_index(scores, ids)
    return scores[:, :k], ids[:, :k], scores


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
