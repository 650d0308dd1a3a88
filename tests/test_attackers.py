"""The attacker suite: the pixel attacker against numpy, re-identification, the worst case, reapply."""
import json

import cv2
import numpy as np
import pytest
import torch

from facemae_plugin.convert import convert
from facemae_plugin.data.synthetic import make_synthetic_dataset
from facemae_plugin.evaluation.attackers import (PIXEL_SIDE, THREATS, VERBATIM, PixelAttacker, VerbatimAttacker,
                                                 unique_names, worst_case)
from facemae_plugin.evaluation.audit import AuditOptions, audit
from facemae_plugin.evaluation.retrieval import without_source
from facemae_plugin.evaluation.suite import SuiteAttacker, audit_suite, model_free_attackers, pixel_attacker
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.publish.reapply import REAPPLY, attacker_privatizer, reapply_attackers
from facemae_plugin.privatizers.methods import make_privatizer
from tests.helpers import IN_PROCESS
from tests.oracles import brute_force_metrics, brute_force_ranking, unit_rows, visible_patch_matcher


def numpy_pixel_vectors(shard):
    """What the pixel attacker searches, from the JPEG bytes: BT.601 grey of the RGB pixels in arcface_torch's
    [-1, 1] scale, block means to 28x28, each row minus its mean."""
    rows, labels = [], []
    block = 112 // PIXEL_SIDE
    for key in shard.image_keys:
        label, payload = shard.read(key)
        rgb = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        x = rgb.astype(np.float64) / 127.5 - 1.0  # [112, 112, 3]
        grey = x @ np.array([0.299, 0.587, 0.114])  # [112, 112]
        small = grey.reshape(PIXEL_SIDE, block, PIXEL_SIDE, block).mean(axis=(1, 3)).ravel()
        rows.append(small - small.mean())
        labels.append(label)
    return np.array(rows), np.array(labels)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The synthetic set of the leakage table (100 identities x 15, seed 3) and its blur-s6 release."""
    root = tmp_path_factory.mktemp("attackers")
    make_synthetic_dataset(root / "ds", identities=100, images_per_identity=15, holdout_identities=2, num_pairs=10,
                           seed=3, progress=False)
    convert(root / "ds", root / "blur6", make_privatizer("blur", sigma=6.0), IN_PROCESS, progress=False)
    return root


def test_the_pixel_attacker_equals_a_numpy_brute_force_search(tmp_path):
    make_synthetic_dataset(tmp_path / "ds", identities=12, images_per_identity=5, holdout_identities=2, num_pairs=10,
                           progress=False)
    convert(tmp_path / "ds", tmp_path / "blur", make_privatizer("blur", sigma=12.0), IN_PROCESS, progress=False)
    report = audit(tmp_path / "ds", tmp_path / "blur", PixelAttacker(),
                   options=AuditOptions(batch_size=16, plots=False), out_dir=tmp_path / "audit")
    with FaceShard(tmp_path / "ds") as original, FaceShard(tmp_path / "blur") as released:
        gallery, gallery_labels = numpy_pixel_vectors(original)
        query, query_labels = numpy_pixel_vectors(released)
        keys = original.image_keys
    want = brute_force_metrics(query, gallery, keys, keys, query_labels, gallery_labels, (1, 5), 1e-3)
    for name, value in want.items():
        assert report[name] == pytest.approx(value, abs=1e-5), name
    assert report["dim"] == PIXEL_SIDE ** 2 and report["attacker"] == "attacker"
    assert 0 < report["reid_rank1"] < 1 and report["instance_rank1"] > report["reid_rank1"]  # neither is trivial


def test_blur_sigma_6_gives_the_pixel_attacker_almost_every_source(faces, tmp_path):
    summary = audit_suite(faces / "ds", faces / "blur6", model_free_attackers(), tmp_path,
                          options=AuditOptions(plots=False))
    figures = summary["attackers"]
    assert figures["pixels"]["instance_rank1"] >= 0.95
    # the suite's worst case is the larger of the two attackers' figures, per threat, named
    for threat, metric in (("instance", "instance_rank1"), ("reidentification", "reid_rank1")):
        leader = max(("pixels", VERBATIM), key=lambda name: figures[name][metric])
        assert figures["pixels"][metric] != figures[VERBATIM][metric], metric  # the choice is not a tie
        assert summary["worst_case"][threat] == {"attacker": leader, "metric": metric,
                                                 "value": figures[leader][metric]}


def test_reidentification_holds_the_source_out_of_the_ranking():
    top = np.array([[4, 2, 7], [1, 3, 5], [6, 0, 9]])  # [Q, depth] best first
    source = np.array([2, 8, 6])  # second in row 0, absent from row 1, first in row 2
    assert without_source(top, source, 2).tolist() == [[4, 7], [1, 3], [0, 9]]


def test_the_worst_case_is_the_largest_figure_of_each_threat_and_names_its_attacker():
    leakage = {"pixels": {"instance_rank1": 0.9, "reid_rank1": 0.1},
               "teacher": {"instance_rank1": 0.9, "reid_rank1": 0.4},
               "reapply": {"instance_rank1": 0.5, "reid_rank1": None}}
    worst = worst_case(leakage)
    for threat, metric in THREATS.items():
        values = [f[metric] for f in leakage.values() if f[metric] is not None]
        assert worst[threat]["value"] == max(values) and worst[threat]["metric"] == metric
    assert worst["instance"]["attacker"] == "pixels"  # a tie goes to the attacker that ran first
    assert worst["reidentification"]["attacker"] == "teacher"
    assert worst_case({"pixels": {"instance_rank1": None, "reid_rank1": None}})["instance"]["attacker"] is None


def test_attacker_names_are_made_unique_in_order():
    assert unique_names(["pixels", "teacher", "teacher", "pixels"]) == ["pixels", "teacher", "teacher-2", "pixels-2"]


def test_reapply_finds_every_source_of_a_deterministic_method_and_draws_its_own_seed_for_a_secret_one(faces, tmp_path):
    blur = make_privatizer("blur", sigma=6.0)
    (attacker,) = reapply_attackers(faces / "ds", tmp_path / "unused", blur, IN_PROCESS, released=faces / "blur6")
    assert attacker.gallery == faces / "blur6" and not (tmp_path / "unused").exists()  # the same bytes, not redone
    report = audit(attacker.gallery, faces / "blur6", attacker.embedder, options=AuditOptions(plots=False),
                   out_dir=tmp_path / "a")
    assert report["instance_rank1"] == 1.0

    noise = make_privatizer("noise", std=40.0).with_seed(123, public=False)
    own = attacker_privatizer(noise)
    assert own.seed != noise.seed and own.provenance() == noise.provenance()  # all it knows is what was published
    assert attacker_privatizer(make_privatizer("noise", std=40.0, seed=5)).seed == 5  # a published seed is used
    convert(faces / "ds", tmp_path / "noise", noise, IN_PROCESS, progress=False)
    torch.manual_seed(0)
    recogniser = SuiteAttacker("teacher", get_backbone("mbf").eval(), "recogniser")
    attacker, searcher = reapply_attackers(faces / "ds", tmp_path / "guess", noise, IN_PROCESS,
                                           released=tmp_path / "noise", searchers=[pixel_attacker(), recogniser])
    assert attacker.name == REAPPLY and attacker.gallery == tmp_path / "guess"
    # each recogniser searches the same gallery: one conversion
    assert (searcher.name, searcher.kind, searcher.gallery, searcher.embedder) == \
        (f"{REAPPLY}-teacher", REAPPLY, tmp_path / "guess", recogniser.embedder)
    with open(tmp_path / "guess" / "train.rec", "rb") as a, open(tmp_path / "noise" / "train.rec", "rb") as b:
        assert a.read() != b.read()
    summary = audit_suite(faces / "ds", tmp_path / "noise", [pixel_attacker(), attacker], tmp_path / "suite",
                          options=AuditOptions(plots=False))
    with open(tmp_path / "suite" / "leakage.json") as f:
        assert json.load(f) == summary
    # the reapply attacker is the pixel attacker searching the attacker's own privatization of the originals
    with FaceShard(tmp_path / "guess") as gallery_shard, FaceShard(tmp_path / "noise") as released:
        gallery, gallery_labels = numpy_pixel_vectors(gallery_shard)
        query, query_labels = numpy_pixel_vectors(released)
        keys = gallery_shard.image_keys
    _, order = brute_force_ranking(unit_rows(query), unit_rows(gallery))  # same keys, same order
    rows = np.arange(len(keys))
    instance = np.mean(order[:, 0] == rows)
    best_other = np.where(order[:, 0] == rows, order[:, 1], order[:, 0])  # the source held out
    reid = np.mean(gallery_labels[best_other] == query_labels)  # every person here has 15 photos
    assert summary["attackers"][REAPPLY]["instance_rank1"] == pytest.approx(instance, abs=1e-9)
    assert summary["attackers"][REAPPLY]["reid_rank1"] == pytest.approx(reid, abs=1e-9)


# A protocol small enough for a test, in fp32: emulated bf16 (a CPU without avx512_bf16) trains several times slower.
SMALL = dict(
    data=dict(train_identities=12, train_images_per_identity=6, release_identities=8, release_images_per_identity=4,
              holdout_identities=4, holdout_images_per_identity=4, num_pairs=20, attacker_identities=0),
    teacher=dict(num_epoch=3, batch_size=16, warmup_epoch=0),
    facemae=dict(num_epoch=1, batch_size=8, warmup_epoch=0),
    recogniser=dict(num_epoch=3, batch_size=16, warmup_epoch=0),
    num_workers=0, mixed_precision=False,
)


@pytest.mark.slow
def test_the_adaptive_attacker_sees_through_blur_better_than_the_teacher(tmp_path):
    from facemae_plugin.protocol.experiment import Experiment

    experiment = Experiment(tmp_path, SMALL, progress=False)
    blur = {"name": "blur s8", "method": "blur", "sigma": 8.0}
    teacher = experiment.audit(blur, 0)
    adaptive = experiment.audit(blur, 0, attacker="adaptive")
    assert adaptive["instance_rank1"] >= teacher["instance_rank1"]
    # it trained on split A beside A's blurred twin: twice the images, under A's labels
    with FaceShard(tmp_path / "adaptive" / "adaptive-blur_s8" / "data" / "train") as pairs, \
            FaceShard(experiment.splits["train"]) as train:
        assert len(pairs) == 2 * len(train) and len(pairs.identity_keys) == len(train.identity_keys)


# ----------------------------------------------------------------------------- what a method keeps verbatim


def masks_of(privatizer, shard_dir):
    """``{key: [L] mask}`` the privatizer drew for each record: what the oracle may look at."""
    with FaceShard(shard_dir) as shard:
        keys = [int(k) for k in shard.image_keys]
    side = 112 // privatizer.patch_size
    return dict(zip(keys, privatizer.masks(torch.tensor(keys), side * side).numpy()))


@pytest.mark.slow
def test_a_release_card_reports_what_masked_and_paste_keep_as_a_brute_force_patch_matcher_finds(faces, tmp_path):
    from facemae_plugin.models.mae import create_facemae
    from facemae_plugin.publish.release import ReleaseOptions, release_dataset

    torch.manual_seed(0)
    checkpoint = create_facemae("tiny", patch_size=8).save_checkpoint(tmp_path / "facemae.pt")
    options = ReleaseOptions(convert=IN_PROCESS, progress=False, reapply=False)
    cards, oracles = {}, {}
    for name, privatizer in (("masked", make_privatizer("masked", mask_ratio=0.9, seed=11)),
                             ("paste", make_privatizer("facemae", checkpoint=checkpoint, mask_ratio=0.75,
                                                       output="paste", seed=11))):
        cards[name] = release_dataset(faces / "ds", tmp_path / name, privatizer, [], options)
        same_masks = make_privatizer("masked", mask_ratio=privatizer.mask_ratio, seed=11)
        oracles[name] = visible_patch_matcher(faces / "ds", tmp_path / name, masks_of(same_masks, faces / "ds"), 8,
                                              every=5)
    worst = {name: card["worst_case"]["instance"] for name, card in cards.items()}
    assert abs(worst["masked"]["value"] - oracles["masked"]) <= 0.02 and worst["masked"]["attacker"] == VERBATIM
    assert worst["paste"]["value"] >= oracles["paste"] >= 0.9
    # the thumbnail alone averages the visible patches with the grey fill and misses many sources
    pixels = next(a for a in cards["masked"]["attackers"] if a["name"] == "pixels")
    assert pixels["leakage"]["instance_rank1"] < oracles["masked"] - 0.2


def test_the_verbatim_attacker_embeds_flat_cells_as_zero_and_textured_cells_at_unit_length():
    rng = np.random.default_rng(0)
    image = torch.zeros(1, 3, 8, 8)  # grey everywhere: [1, 3, H, W]
    image[0, :, :4, :4] = torch.from_numpy(rng.uniform(-1, 1, (3, 4, 4))).float()  # one textured cell
    vector = VerbatimAttacker()(image).reshape(4, 16)  # [cells, 4 * 4], row-major cells
    grey = (image[0].double().numpy() * np.array([0.299, 0.587, 0.114])[:, None, None]).sum(0)[:4, :4].ravel()
    want = (grey - grey.mean()) / np.linalg.norm(grey - grey.mean())
    np.testing.assert_allclose(vector[0].double().numpy(), want, atol=1e-6)
    assert torch.count_nonzero(vector[1:]) == 0
