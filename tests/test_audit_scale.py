"""The audit at scale: embeddings on disk, the choice of search, and approximate search's measured recall.

Oracles: the in-memory exact path of 0.2 (``retrieval_metrics`` on embeddings held in RAM) for the
disk-backed audit, and numpy brute force over the whole gallery for the recall the approximate
search reports.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from facemae_plugin.evaluation import approximate, retrieval
from facemae_plugin.evaluation.audit import AuditOptions, audit
from facemae_plugin.evaluation.embed import embed_with_flip
from facemae_plugin.evaluation.embedding_store import EmbeddingRows
from facemae_plugin.evaluation.retrieval import SearchOptions, evaluate_retrieval, retrieval_metrics
from facemae_plugin.evaluation.search import RetrievalInputError
from facemae_plugin.data.dataset import normalise
from facemae_plugin.formats.shard import FaceShard
from tests.helpers import PixelProjection


def in_memory_embeddings(shard_dir, attacker, batch_size):
    """Image + flip embeddings of a whole shard in one array, as the audit held them before."""
    with FaceShard(shard_dir) as shard:
        images = torch.stack([normalise(shard.decode(k)) for k in shard.image_keys])
        labels = np.array([shard.label(k) for k in shard.image_keys])
        keys = shard.image_keys.copy()
    return embed_with_flip(attacker, images, batch_size).astype(np.float32), labels, keys


def test_a_disk_backed_audit_gives_the_in_memory_figures_bit_for_bit(synthetic_faces, tmp_path):
    attacker = PixelProjection()
    original, blurred = synthetic_faces / "original", synthetic_faces / "blurred"
    report = audit(original, blurred, attacker, options=AuditOptions(batch_size=7, plots=False), out_dir=tmp_path)
    gallery, gallery_labels, keys = in_memory_embeddings(original, attacker, 7)
    query, query_labels, _ = in_memory_embeddings(blurred, attacker, 7)
    want = retrieval_metrics(query, gallery, keys, keys, query_labels, gallery_labels)
    assert report["search"] == {"method": "exact"}
    assert {name: report[name] for name in want} == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json"]  # the embeddings went with the audit


def test_float16_embeddings_move_the_figures_by_little(synthetic_faces, tmp_path):
    attacker = PixelProjection()
    args = (synthetic_faces / "original", synthetic_faces / "blurred", attacker)
    full = audit(*args, options=AuditOptions(plots=False), out_dir=tmp_path / "32")
    half = audit(*args, options=AuditOptions(plots=False, embedding_dtype="float16"), out_dir=tmp_path / "16")
    assert half["mean_source_cosine"] == pytest.approx(full["mean_source_cosine"], abs=1e-3)
    assert abs(half["instance_rank1"] - full["instance_rank1"]) <= 1 / full["queries"]


def test_embedding_rows_are_written_in_order_and_read_back_mapped(tmp_path):
    rows = EmbeddingRows(tmp_path / "e.npy", 5, "float16")
    data = np.arange(15, dtype=np.float32).reshape(5, 3)
    rows.append(data[:2])
    rows.append(data[2:])
    back = rows.finish()
    assert isinstance(back, np.memmap) and back.dtype == np.float16 and np.array_equal(back, data)


def planted(n, dim, noise, seed=0):
    """Gallery of random unit rows and queries = gallery + noise: each query's source is its planted match."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n, dim)).astype(np.float32)
    query = gallery + np.float32(noise) * rng.standard_normal((n, dim)).astype(np.float32)
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (query, gallery)]
    return unit[0].astype(np.float32), unit[1].astype(np.float32), np.arange(n), np.arange(n) // 4


@pytest.mark.parametrize("noise", [1.0, 2.5])
def test_approximate_search_reports_the_recall_brute_force_finds(noise):
    query, gallery, keys, labels = planted(3000, 64, noise)
    options = SearchOptions(search="approximate", max_impostors=2000, recall_queries=400, seed=3)
    got = evaluate_retrieval(query, gallery, keys, keys, labels, labels, options, normalised=True)
    rows = got.recall_rows
    assert len(rows) == 400 and len(set(rows.tolist())) == 400
    exact_top1 = np.argmax(query[rows].astype(np.float64) @ gallery.astype(np.float64).T, axis=1)
    measured = np.mean(got.search.top_indices[rows, 0] == exact_top1)
    info = got.metrics["search"]
    assert info["method"] == "approximate" and info["recall_queries"] == 400
    assert info["recall_at_1"] == pytest.approx(measured, abs=1 / 400)  # float32 vs float64 near-ties at most
    exact = evaluate_retrieval(query, gallery, keys, keys, labels, labels, replace(options, search="exact"),
                               normalised=True)
    everywhere = np.mean(got.search.top_indices[:, 0] == exact.search.top_indices[:, 0])
    assert everywhere >= 0.98  # the sample's recall speaks for the whole set
    assert abs(got.metrics["instance_rank1"] - exact.metrics["instance_rank1"]) <= 1 - everywhere + 1e-9
    assert got.metrics["median_source_rank"] is None and exact.metrics["median_source_rank"] is not None


def test_approximate_search_searches_harder_until_recall_is_reached():
    query, gallery, keys, labels = planted(3000, 64, 2.5)  # weak matches: the first effort does not suffice
    options = SearchOptions(search="approximate", max_impostors=2000, recall_queries=300)
    got = evaluate_retrieval(query, gallery, keys, keys, labels, labels, options, normalised=True).metrics["search"]
    first = approximate.Effort(min(approximate.FIRST_PROBES, got["lists"]), approximate.CANDIDATES)
    assert (got["probes"], got["candidates"]) != (first.probes, first.candidates)
    assert got["probes"] >= first.probes and got["candidates"] >= first.candidates
    assert got["recall_at_1"] >= 0.99 or (got["probes"], got["candidates"]) == (got["lists"], 1024)


def test_approximate_search_is_deterministic_for_a_seed():
    query, gallery, keys, labels = planted(3000, 64, 1.5)
    options = SearchOptions(search="approximate", max_impostors=2000, recall_queries=200, seed=5)
    runs = [evaluate_retrieval(query, gallery, keys, keys, labels, labels, options, normalised=True) for _ in range(2)]
    assert runs[0].metrics == runs[1].metrics
    assert np.array_equal(runs[0].search.top_indices, runs[1].search.top_indices)


def test_queries_whose_probed_lists_run_short_are_searched_exactly():
    query, gallery, _, _ = planted(400, 32, 1.0)
    index = approximate.build_index(gallery, seed=0)
    assert index.nlist > 1  # one probed list holds fewer rows than asked for
    k = len(gallery) // index.nlist + 20
    scores, rows, candidates = approximate.search_block(index, approximate.Effort(1, len(gallery)), query[:50],
                                                         gallery, k)
    assert np.isinf(candidates).any(1).all()  # faiss ran out of rows for every query
    brute = query[:50].astype(np.float64) @ gallery.astype(np.float64).T  # [50, G]
    want = np.argsort(-brute, axis=1)[:, :k]
    assert [set(r) for r in rows.tolist()] == [set(r) for r in want.tolist()]
    assert np.allclose(scores, -np.sort(-np.take_along_axis(brute, want, 1), axis=1), atol=1e-5)


def test_auto_searches_exactly_up_to_the_pair_limit(monkeypatch):
    query, gallery, keys, labels = planted(400, 32, 1.0)
    options = SearchOptions(max_impostors=1000)
    run = lambda: evaluate_retrieval(query, gallery, keys, keys, labels, labels, options,  # noqa: E731
                                     normalised=True).metrics["search"]["method"]
    assert run() == "exact"
    monkeypatch.setattr(retrieval, "EXACT_PAIRS", 400 * 400 - 1)
    assert run() == "approximate"


def test_approximate_search_refuses_sets_whose_impostors_are_all_scored():
    query, gallery, keys, labels = planted(200, 16, 1.0)
    with pytest.raises(RetrievalInputError, match="search exactly or lower max_impostors"):
        evaluate_retrieval(query, gallery, keys, keys, labels, labels, SearchOptions(search="approximate"))


def test_the_cli_offers_the_searches_and_dtypes_the_library_takes():
    from facemae_plugin import cli
    from facemae_plugin.evaluation.embedding_store import EMBEDDING_DTYPES

    assert cli.options.AUDIT_SEARCHES == retrieval.SEARCHES and cli.options.AUDIT_EMBEDDING_DTYPES == EMBEDDING_DTYPES
    args = cli.build_parser().parse_args(["audit", "--original", "a", "--released", "b", "--model", "m.pt",
                                          "--search", "approximate", "--embedding-dtype", "float16"])
    assert (args.search, args.embedding_dtype, args.recall_queries) == ("approximate", "float16", 1000)
