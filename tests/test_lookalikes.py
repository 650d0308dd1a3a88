"""Look-alikes of a reconstructor's training set: numpy brute force, a planted leak, the command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from facemae_plugin.evaluation.audit import AuditInputError, AuditOptions, audit
from facemae_plugin.evaluation.lookalikes import (FLAG_Z, TOP_IDENTITIES, centre_impostor_scores, identity_centres,
                                                training_set_leakage)
from facemae_plugin.formats.shard import FaceShard, FaceShardWriter
from tests.conftest import smooth_image
from tests.helpers import PixelProjection
from tests.oracles import unit_rows


def brute_force_leakage(released, original, train, train_labels, far):
    """Every figure from full numpy matrices: centres, all impostor pairs, a threshold sweep, McNemar."""
    train = unit_rows(train)
    labels = np.unique(train_labels)
    centres = unit_rows(np.stack([train[train_labels == c].sum(0) for c in labels]))
    scores = train @ centres.T  # [N, C]
    impostors = scores[train_labels[:, None] != labels[None, :]]
    # The loosest threshold meeting the FAR: the sweep's TAR of a genuine score at t is 1 just above t.
    threshold = min(t for t in np.unique(np.concatenate([[-np.inf], impostors])) if np.mean(impostors > t) <= far)
    nearest = {name: unit_rows(x) @ centres.T for name, x in (("released", released), ("original", original))}
    above = {name: s.max(1) > threshold for name, s in nearest.items()}
    gained = np.sum(above["released"] & ~above["original"])
    lost = np.sum(above["original"] & ~above["released"])
    hits = np.bincount(nearest["released"].argmax(1)[above["released"]], minlength=len(labels))
    return {"threshold": threshold, "released_fraction": above["released"].mean(),
            "original_fraction": above["original"].mean(), "gained": gained, "lost": lost,
            "z": (gained - lost) / np.sqrt(gained + lost) if gained + lost else 0.0,
            "hits": sorted(((int(hits[i]), int(labels[i])) for i in np.flatnonzero(hits)), key=lambda h: (-h[0], h[1]))}


def clustered(rng, labels, centres, noise):
    return unit_rows(centres[labels] + noise * rng.normal(size=(len(labels), centres.shape[1])))


def test_leakage_equals_the_numpy_reference_with_a_planted_leak():
    rng = np.random.default_rng(0)
    a_centres, b_centres = rng.normal(size=(15, 64)), rng.normal(size=(12, 64))
    train_labels = np.repeat(np.arange(15) * 7 + 3, 6)  # labels need not be 0..C-1
    train = clustered(rng, np.repeat(np.arange(15), 6), a_centres, 0.5)
    b_labels = np.repeat(np.arange(12), 5)
    original = clustered(rng, b_labels, b_centres, 0.5)
    released = clustered(rng, b_labels, b_centres, 0.5)  # the same people, other noise
    planted = rng.choice(len(released), size=20, replace=False)
    released[planted] = clustered(rng, rng.integers(15, size=20), a_centres, 0.5)  # faces of A in B's release
    got, released_scores, original_scores = training_set_leakage(
        released.astype(np.float32), original.astype(np.float32), train.astype(np.float32), train_labels,
        far_target=1e-2)
    want = brute_force_leakage(released, original, train, train_labels, 1e-2)
    assert got["threshold"] == pytest.approx(want["threshold"], abs=1e-6)
    assert got["released_fraction"] == want["released_fraction"]
    assert got["original_fraction"] == want["original_fraction"]
    assert (got["records_gained"], got["records_lost"]) == (want["gained"], want["lost"])
    assert got["mcnemar_z"] == pytest.approx(want["z"]) and got["impostors_exhaustive"]
    assert got["impostor_pairs"] == 90 * 14
    assert [(h["released"], h["label"]) for h in got["top_identities"]] == want["hits"][:TOP_IDENTITIES]
    assert got["flagged"] and want["z"] > FLAG_Z  # the planted faces are found
    assert np.allclose(released_scores, (unit_rows(released) @ identity_centres(train, train_labels)[0].T).max(1),
                       atol=1e-6)
    clean, _, _ = training_set_leakage(original.astype(np.float32), original.astype(np.float32),
                                       train.astype(np.float32), train_labels, far_target=1e-2)
    assert not clean["flagged"] and clean["mcnemar_z"] == 0.0


def test_original_rows_pair_released_images_with_their_sources_in_any_order():
    rng = np.random.default_rng(1)
    train_labels = np.repeat(np.arange(8), 4)
    train = clustered(rng, train_labels, rng.normal(size=(8, 16)), 0.5).astype(np.float32)
    original = unit_rows(rng.normal(size=(30, 16))).astype(np.float32)
    order = rng.permutation(30)
    direct, _, _ = training_set_leakage(original[order], original[order], train, train_labels)
    indexed, _, indexed_original = training_set_leakage(original[order], original, train, train_labels,
                                                        original_rows=order)
    assert direct == indexed and indexed["mcnemar_z"] == 0.0
    want = (original[order] @ identity_centres(train, train_labels)[0].T).max(1)
    assert np.allclose(indexed_original, want, atol=1e-6)


def test_sampled_impostors_are_deterministic_and_never_the_own_identity():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(40), 5)
    train = clustered(rng, labels, rng.normal(size=(40, 32)), 0.05).astype(np.float32)  # own centre ~1
    centres, centre_labels = identity_centres(train, labels)
    first, exhaustive = centre_impostor_scores(train, labels, centres, centre_labels, max_pairs=390, seed=4)
    again, _ = centre_impostor_scores(train, labels, centres, centre_labels, max_pairs=390, seed=4)
    assert not exhaustive and len(first) == 10 * 39 and np.array_equal(first, again)
    assert first.max() < 0.9  # every own-centre score is above 0.99: none was kept


# ----------------------------------------------------------------------------- shards


def write_people(out_dir, seed, identities, images_per_identity):
    """A shard whose identities a pixel attacker tells apart: each is one smooth face plus small noise."""
    rng = np.random.default_rng(seed)
    with FaceShardWriter(out_dir) as writer:
        for _ in range(identities):
            face = smooth_image(rng).astype(np.int16)
            writer.add_identity([np.clip(face + rng.integers(-12, 13, face.shape), 0, 255).astype(np.uint8)
                                 for _ in range(images_per_identity)])


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """A (the reconstructor's training identities) and B (to release): different people."""
    root = tmp_path_factory.mktemp("lookalikes")
    write_people(root / "a", 0, 12, 4)
    write_people(root / "b", 1, 12, 4)
    return root


def planted_release(b_dir, a_dir, out_dir, every):
    """B record by record, every ``every``-th image replaced by an image of A (same keys and labels)."""
    a, b = FaceShard(a_dir), FaceShard(b_dir)
    a_keys = list(a.image_keys)
    with FaceShardWriter(out_dir) as writer:
        for start, end in b.identity_ranges().values():
            writer.add_identity([a.read(a_keys[k % len(a_keys)])[1] if k % every == 0 else b.read(k)[1]
                                 for k in range(start, end)])


def test_a_planted_leak_is_flagged_and_the_plain_release_is_not(splits, tmp_path):
    planted_release(splits / "b", splits / "a", tmp_path / "planted", every=3)
    attacker = PixelProjection()
    plain = audit(splits / "b", splits / "b", attacker, out_dir=tmp_path / "plain", training_set=splits / "a")
    leaked = audit(splits / "b", tmp_path / "planted", attacker, out_dir=tmp_path / "leaked",
                   training_set=splits / "a")
    assert not plain["training_set"]["flagged"] and plain["training_set"]["mcnemar_z"] == 0.0
    found = leaked["training_set"]
    assert found["flagged"] and found["released_fraction"] > found["original_fraction"]
    assert found["records_gained"] >= 12  # 16 planted A faces; a few may sit under the threshold
    assert os.path.isfile(tmp_path / "leaked" / "training_set_histogram.png")
    with open(tmp_path / "leaked" / "audit.json") as f:
        assert json.load(f)["training_set"]["records_gained"] == found["records_gained"]
    assert [name for name in os.listdir(tmp_path / "leaked") if name.startswith(".")] == []  # scratch removed


def test_the_original_as_its_own_training_set_is_refused(splits, tmp_path):
    with pytest.raises(AuditInputError, match="--training-set .* is the shard being released"):
        audit(splits / "b", splits / "b", PixelProjection(), out_dir=tmp_path / "out", training_set=splits / "b")


def test_cli_audit_with_a_training_set(splits, tmp_path):
    import torch

    from facemae_plugin.models.backbones import get_backbone

    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), tmp_path / "model.pt")
    result = subprocess.run(
        [sys.executable, "-m", "facemae_plugin.cli", "audit", "--original", splits / "b", "--released", splits / "b",
         "--model", tmp_path / "model.pt", "--network", "mbf", "--out", tmp_path / "out", "--training-set",
         splits / "a", "--quiet", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary, last = result.stdout.strip().splitlines()[-2:]
    suite = json.loads(last)
    assert "look-alikes of the 12 training identities" in summary and "not flagged" in summary
    with open(suite["attackers"][tmp_path.name]["report"]) as f:  # model.pt is named by its folder
        report = json.load(f)
    with open(suite["attackers"]["pixels"]["report"]) as f:
        assert json.load(f)["training_set"] is None  # look-alikes need a recogniser's similarity
    assert report["training_set"]["training_images"] == 48 and report["training_set"]["impostor_pairs"] == 48 * 11


def test_an_embedding_cache_gives_the_same_figures_and_embeds_the_shared_shards_once(splits, tmp_path, monkeypatch):
    import torch

    from facemae_plugin.evaluation import audit as audit_module
    from facemae_plugin.models.backbones import get_backbone

    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), tmp_path / "model.pt")
    model = load_mbf(tmp_path / "model.pt")
    planted_release(splits / "b", splits / "a", tmp_path / "planted", every=3)
    plain = audit(splits / "b", tmp_path / "planted", model, options=AuditOptions(plots=False),
                  out_dir=tmp_path / "plain", training_set=splits / "a")
    embedded = []
    real = audit_module.embed_shard
    monkeypatch.setattr(audit_module, "embed_shard", lambda shard, *a, **k: embedded.append(shard.rec_path) or
                        real(shard, *a, **k))
    given = dict(training_set=splits / "a", embedding_cache=tmp_path / "cache", model=str(tmp_path / "model.pt"))
    first = audit(splits / "b", tmp_path / "planted", model, AuditOptions(plots=False), out_dir=tmp_path / "first",
                  **given)
    second = audit(splits / "b", splits / "b", model, AuditOptions(plots=False), out_dir=tmp_path / "second", **given)
    assert len(embedded) == 4  # first: original, released, training set; second: its release only
    figures = ("instance_rank1", "identity_rank1", "tar_at_far", "mean_source_cosine")
    assert {k: first[k] for k in figures} == {k: plain[k] for k in figures}
    assert first["training_set"] == {**plain["training_set"]}
    assert second["instance_rank1"] == 1.0


def load_mbf(path):
    from facemae_plugin.evaluation.embed import load_embedder

    return load_embedder(path, "mbf")
