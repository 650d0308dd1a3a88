"""Privacy audit: chunked retrieval against brute-force numpy, hit definitions by hand, audits of real shards."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from facemae_plugin.evaluation.attackers import THREATS
from facemae_plugin.evaluation.audit import AuditInputError, AuditOptions, audit
from facemae_plugin.evaluation.retrieval import (SearchOptions, count_impostor_pairs, impostor_scores,
                                                 retrieval_metrics, score_tar_at_far)
from facemae_plugin.evaluation.search import RetrievalInputError, chunked_search, chunked_topk
from facemae_plugin.formats.shard import FaceShard, FaceShardWriter
from facemae_plugin.data.synthetic import make_synthetic_dataset
from tests.oracles import brute_force_metrics, brute_force_ranking, threshold_sweep_tar, unit_rows
from tests.helpers import POOL, PixelProjection, blurred_copy, facemae

def numpy_pixel_embeddings(shard, weight):
    """What PixelProjection gives for image + flip, computed in numpy from the decoded pixels."""
    rows, labels = [], []
    for key in shard.image_keys:
        label, payload = shard.read(key)
        rgb = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        x = rgb.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1.0  # [3, 112, 112]
        pooled = [v.reshape(3, 14, POOL, 14, POOL).mean(axis=(2, 4)).ravel() for v in (x, x[:, :, ::-1])]
        rows.append(weight @ pooled[0] + weight @ pooled[1])
        labels.append(label)
    return np.array(rows), np.array(labels)


# ----------------------------------------------------------------------------- chunked top-k


@pytest.mark.parametrize("chunk", [1, 4, 7, 37, 1000])
@pytest.mark.parametrize("k", [1, 5, 23])
def test_chunked_topk_equals_stable_argsort_with_ties(chunk, k):
    rng = np.random.default_rng(chunk * 100 + k)
    # Small integer vectors: dot products are exact in float32 and ties are everywhere.
    query = rng.integers(-1, 2, size=(37, 3)).astype(np.float32)
    gallery = rng.integers(-1, 2, size=(23, 3)).astype(np.float32)
    scores, indices = chunked_topk(query, gallery, k, chunk=chunk)
    expected_scores, expected_order = brute_force_ranking(query, gallery)
    assert np.array_equal(indices, expected_order[:, :k])
    assert np.array_equal(scores, np.take_along_axis(expected_scores, expected_order[:, :k], 1))


def test_chunked_topk_on_random_floats_and_k_beyond_gallery():
    rng = np.random.default_rng(3)
    query, gallery = rng.normal(size=(50, 16)).astype(np.float32), rng.normal(size=(200, 16)).astype(np.float32)
    _, indices = chunked_topk(query, gallery, 5, chunk=13)
    assert np.array_equal(indices, brute_force_ranking(query, gallery)[1][:, :5])
    _, indices = chunked_topk(query[:3], gallery[:4], 10, chunk=2)  # k clamps to the gallery size
    assert np.array_equal(indices, brute_force_ranking(query[:3], gallery[:4])[1])


def test_source_scores_and_ranks_count_strictly_better_rows():
    rng = np.random.default_rng(4)
    query = rng.integers(-2, 3, size=(29, 4)).astype(np.float32)
    gallery = rng.integers(-2, 3, size=(31, 4)).astype(np.float32)
    source = rng.integers(31, size=29)
    result = chunked_search(query, gallery, 3, source_index=source, chunk=6)
    scores, _ = brute_force_ranking(query, gallery)
    own = scores[np.arange(29), source]
    assert np.array_equal(result.source_scores, own)
    assert np.array_equal(result.source_ranks, (scores > own[:, None]).sum(1))


# ----------------------------------------------------------------------------- metric definitions


def at_degrees(*angles, norm=1.0):
    radians = np.deg2rad(angles)
    return norm * np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_instance_and_identity_hits_on_hand_made_embeddings():
    # Gallery keys 10, 11 (identity 0) at 0 and 20 degrees; 12, 13 (identity 1) at 90 and 110.
    gallery = at_degrees(0, 20, 90, 110, norm=3.0)  # norms differ from 1: metrics must normalise
    query_keys = [12, 10, 13, 11]
    # 12 -> nearest is itself.  10 -> 11 first (same identity), itself second.
    # 13 -> 10 then 11 (both identity 0), itself far away.  11 -> 12 (other identity) first, itself second.
    query = at_degrees(88, 22, 2, 60, norm=0.5)
    m = retrieval_metrics(query, gallery, query_keys, [10, 11, 12, 13], [1, 0, 1, 0], [0, 0, 1, 1],
                          SearchOptions(ks=(1, 2)))
    assert m["instance_rank1"] == 1 / 4 and m["instance_rank2"] == 3 / 4
    assert m["identity_rank1"] == 2 / 4 and m["identity_rank2"] == 3 / 4
    own_angles = np.deg2rad([2, 22, 108, 40])
    assert m["mean_source_cosine"] == pytest.approx(np.cos(own_angles).mean(), abs=1e-6)
    assert m["median_source_rank"] == 1.0  # source ranks 0, 1, 3, 1


def test_tar_at_far_equals_a_threshold_sweep():
    rng = np.random.default_rng(5)
    for n_impostors, far in [(5000, 1e-3), (700, 1e-2), (999, 1e-3), (50, 0.1)]:
        genuine = np.round(rng.normal(0.5, 0.2, size=300), 2)  # rounded: many ties
        impostor = np.round(rng.normal(0.0, 0.2, size=n_impostors), 2)
        result = score_tar_at_far(genuine, impostor, far)
        assert result["tar"] == pytest.approx(threshold_sweep_tar(genuine, impostor, far))
        assert result["far"] <= far and result["far"] == np.mean(impostor > result["threshold"])


def test_retrieval_metrics_equal_brute_force_on_clustered_data():
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(12), 5)  # 60 originals, 12 identities
    centres = rng.normal(size=(12, 32))
    gallery = centres[labels] + 0.8 * rng.normal(size=(60, 32))
    keys = np.arange(1, 61) * 3  # keys need not be 0..N-1
    order = rng.permutation(60)  # queries in another order than the gallery
    query = gallery[order] + 3.0 * rng.normal(size=(60, 32))  # noisy enough that some queries miss
    got = retrieval_metrics(query, gallery, keys[order], keys, labels[order], labels,
                            SearchOptions(ks=(1, 5, 10), chunk=7, far_target=1e-2))
    want = brute_force_metrics(query, gallery, keys[order], keys, labels[order], labels, (1, 5, 10), 1e-2)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["impostors_exhaustive"] and 0 < got["instance_rank1"] < got["instance_rank10"] < 1  # not trivial
    assert 0 < got["reid_rank1"] < got["identity_rank1"] and got["reid_queries"] == 60
    assert 0 < got["tar_at_far"] < 1 and got["median_source_rank"] > 0


def test_impostors_are_sampled_deterministically_and_never_same_identity():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(20), 4)
    directions = unit_rows(rng.normal(size=(20, 64)))  # random 64-d directions: cosines near 0
    embeddings = unit_rows(directions[labels] + 0.01 * rng.normal(size=(80, 64)))  # same identity: ~1
    assert count_impostor_pairs(labels, labels) == 80 * 80 - 20 * 16
    first, exhaustive = impostor_scores(embeddings, embeddings, labels, labels, max_pairs=500, seed=1, chunk=7)
    again, _ = impostor_scores(embeddings, embeddings, labels, labels, max_pairs=500, seed=1, chunk=80)
    other_seed, _ = impostor_scores(embeddings, embeddings, labels, labels, max_pairs=500, seed=2)
    # The chunk size does not change the sample (matmul blocking may change the last bit of a score).
    assert not exhaustive and len(first) == len(again) and np.allclose(first, again, atol=1e-6)
    assert not np.array_equal(first, other_seed)
    # 7 draws per query (ceil(500 / 80)); about 4 in 80 land on the query's own identity and are dropped.
    assert 480 <= len(first) < 80 * 7
    assert first.max() < 0.8  # every same-identity pair scores > 0.99, so none was kept
    everything, exhaustive = impostor_scores(embeddings, embeddings, labels, labels, max_pairs=10 ** 6, chunk=9)
    scores = embeddings @ embeddings.T
    assert exhaustive and np.allclose(everything, scores[labels[:, None] != labels[None, :]], atol=1e-6)


def test_query_key_without_source_is_named():
    with pytest.raises(RetrievalInputError, match="query key 99 has no source"):
        retrieval_metrics(np.eye(2), np.eye(2), [1, 99], [1, 2], [0, 1], [0, 1])


# ----------------------------------------------------------------------------- audits of shards


@pytest.fixture(scope="module")
def few_faces(tmp_path_factory):
    """18 faces (6 identities x 3): enough for a random mbf attacker on a shared CPU."""
    root = tmp_path_factory.mktemp("few")
    make_synthetic_dataset(root, identities=6, images_per_identity=3, holdout_identities=2, num_pairs=10,
                           progress=False)
    return root


def test_originals_audited_against_themselves_retrieve_every_source(layout_a_shard, tmp_path):
    shard_dir, _ = layout_a_shard
    report = audit(shard_dir, shard_dir, PixelProjection(), options=AuditOptions(batch_size=4, plots=False),
                   out_dir=tmp_path / "self")
    assert report["instance_rank1"] == 1.0 and report["identity_rank1"] == 1.0
    assert report["mean_source_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert report["median_source_rank"] == 0
    with open(tmp_path / "self" / "audit.json") as f:
        assert json.load(f)["instance_rank1"] == 1.0


def test_audit_of_a_blurred_copy_matches_numpy(synthetic_faces, tmp_path):
    attacker = PixelProjection()
    original, blurred = synthetic_faces / "original", synthetic_faces / "blurred"
    report = audit(original, blurred, attacker, options=AuditOptions(batch_size=16, examples=5, plots=False),
                   out_dir=tmp_path)
    gallery, gallery_labels = numpy_pixel_embeddings(FaceShard(original), attacker.weight.double().numpy())
    query, query_labels = numpy_pixel_embeddings(FaceShard(blurred), attacker.weight.double().numpy())
    keys = FaceShard(original).image_keys
    want = brute_force_metrics(query, gallery, keys, keys, query_labels, gallery_labels, (1, 5), 1e-3)
    for name, value in want.items():
        assert report[name] == pytest.approx(value, abs=1e-5), name
    # Examples are ranked by source cosine: the 5 highest and the 5 lowest, in order.
    cosines = np.sum(unit_rows(query) * unit_rows(gallery), axis=1)  # same keys, same order
    assert [r["source_cosine"] for r in report["most_leaking"]] == pytest.approx(np.sort(cosines)[::-1][:5])
    assert [r["source_cosine"] for r in report["least_leaking"]] == pytest.approx(np.sort(cosines)[:5])
    assert report["plots"] == {} and os.listdir(tmp_path) == ["audit.json"]


def test_heavy_blur_leaks_less_than_the_originals_to_a_random_mbf(few_faces, tmp_path):
    from facemae_plugin.models.backbones import get_backbone

    torch.manual_seed(0)
    attacker = get_backbone("mbf").eval()
    blurred_copy(few_faces, tmp_path / "heavy", sigma=12)
    identical = audit(few_faces, few_faces, attacker, options=AuditOptions(batch_size=18, plots=False),
                      out_dir=tmp_path / "a")
    heavy = audit(few_faces, tmp_path / "heavy", attacker, options=AuditOptions(batch_size=18, plots=False),
                  out_dir=tmp_path / "b")
    assert identical["instance_rank1"] == 1.0 and identical["mean_source_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert heavy["instance_rank1"] <= 0.9 and heavy["mean_source_cosine"] < 0.97
    assert heavy["tar_at_far"] < identical["tar_at_far"] == 1.0


def test_audit_names_a_key_missing_from_the_release(synthetic_faces, tmp_path):
    shard = FaceShard(synthetic_faces / "original")
    with FaceShardWriter(tmp_path / "short") as writer:  # one identity fewer: the last 4 keys are gone
        for start, end in list(shard.identity_ranges().values())[:-1]:
            writer.add_identity([shard.read(k)[1] for k in range(start, end)])
    with pytest.raises(AuditInputError, match=r"key 37 of the original .* is missing"):
        audit(synthetic_faces / "original", tmp_path / "short", PixelProjection(), out_dir=tmp_path / "out")
    with pytest.raises(AuditInputError, match=r"key 37 is not in the original"):
        audit(tmp_path / "short", synthetic_faces / "original", PixelProjection(), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_audit_names_a_record_whose_label_changed(layout_a_shard, tmp_path):
    shard_dir, groups = layout_a_shard
    with FaceShardWriter(tmp_path / "relabelled") as writer:  # identities 2 and 3 images, swapped sizes
        writer.add_identity(groups[0] + groups[1][:1])
        writer.add_identity(groups[1][1:])
        writer.add_identity(groups[2])
    with pytest.raises(AuditInputError, match=r"key 3: label 0, but the original .* labels it 1"):
        audit(shard_dir, tmp_path / "relabelled", PixelProjection(), out_dir=tmp_path / "out")


# ----------------------------------------------------------------------------- command line


def test_cli_audit_end_to_end_with_a_random_mbf(few_faces, tmp_path):
    from facemae_plugin.models.backbones import get_backbone

    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), tmp_path / "attacker.pt")
    released = tmp_path / "released"
    blurred_copy(few_faces, released, sigma=3)
    result = facemae("audit", "--original", few_faces, "--released", released,
                     "--model", tmp_path / "attacker.pt", "--network", "mbf", "--batch-size", 18,
                     "--device", "cpu", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    summary, last = result.stdout.strip().splitlines()[-2:]
    suite = json.loads(last)
    assert summary.startswith("audit: 18 released vs 18 originals; worst case: instance")
    out_dir = tmp_path / "released.private" / "audit"  # the default report folder: beside the release, private
    assert not (released / "audit").exists() and os.stat(out_dir.parent).st_mode & 0o777 == 0o700
    with open(out_dir / "leakage.json") as f:
        assert json.load(f) == suite
    assert list(suite["attackers"]) == ["pixels", "verbatim", "attacker"]  # the model-free attackers always run
    for name, entry in suite["attackers"].items():
        with open(out_dir / name / "audit.json") as f:
            report = json.load(f)
        assert report["attacker"] == name and entry["report"] == str(out_dir / name / "audit.json")
        assert all(entry[key] == report[key] for key in ("instance_rank1", "reid_rank1", "tar_at_far"))
        assert report["queries"] == 18 and report["impostor_pairs"] == 18 * 15
        for png in ("similarity_histogram.png", "leak_examples.png"):
            image = cv2.imread(os.fspath(out_dir / name / png))
            assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert suite["attackers"]["attacker"]["kind"] == "recogniser" and suite["attackers"]["pixels"]["kind"] == "pixels"
    with open(out_dir / "attacker" / "audit.json") as f:
        assert json.load(f)["dim"] == 512
    for threat, metric in THREATS.items():
        worst = suite["worst_case"][threat]
        assert worst["value"] == max(entry[metric] for entry in suite["attackers"].values())
        assert suite["attackers"][worst["attacker"]][metric] == worst["value"]
    assert sorted(os.listdir(out_dir)) == ["attacker", "leakage.json", "pixels", "verbatim"]


def test_cli_audit_mismatched_shards_is_one_error_line(synthetic_faces, tmp_path):
    from facemae_plugin.models.backbones import get_backbone

    with FaceShardWriter(tmp_path / "other") as writer:  # keys 1, 2 only
        writer.add_identity([np.zeros((112, 112, 3), np.uint8)] * 2)
    torch.save(get_backbone("mbf").state_dict(), tmp_path / "model.pt")
    result = facemae("audit", "--original", synthetic_faces / "original", "--released", tmp_path / "other",
                     "--model", tmp_path / "model.pt", "--network", "mbf", "--quiet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("facemae audit: error:")
    assert "key 3 of the original" in lines[0] and "is missing" in lines[0]


def test_cli_audit_help():
    out = facemae("audit", "--help").stdout
    assert out.startswith("usage: facemae audit") and "--original" in out and "--json" in out


def test_a_copy_of_the_source_earlier_in_the_gallery_counts_as_the_source(tmp_path):
    from facemae_plugin.evaluation.attackers import PixelAttacker

    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    with FaceShardWriter(tmp_path / "ds") as writer:
        writer.add_identity([faces[0], faces[1]])
        writer.add_identity([faces[2], faces[0]])  # the first photo again, filed under a later key
    with FaceShard(tmp_path / "ds") as shard:
        payloads = [shard.read(key)[1] for key in shard.image_keys]
        images = [torch.from_numpy(shard.decode(k).copy()).permute(2, 0, 1).float() / 127.5 - 1
                  for k in shard.image_keys]  # [3, H, W] each
        pixels = PixelAttacker()(torch.stack(images)).double().numpy()
    assert payloads[0] == payloads[3]
    _, order = brute_force_ranking(unit_rows(pixels), unit_rows(pixels))
    assert order[3, 0] == 0  # the plain ranking puts the earlier copy first: a miss by key
    report = audit(tmp_path / "ds", tmp_path / "ds", PixelAttacker(), options=AuditOptions(plots=False),
                   out_dir=tmp_path / "audit")
    assert report["instance_rank1"] == 1.0
