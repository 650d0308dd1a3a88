"""`facemae release`: convert + audit + card, never a finished-looking folder without its card, calibration."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from facemae_plugin.convert import convert
from facemae_plugin.data.synthetic import make_synthetic_dataset, write_identity_shard
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.models.mae import create_facemae
from facemae_plugin.publish.calibrate import BISECTION_STEPS, VALUE_DECIMALS, CalibrationError, upper_bound
from facemae_plugin.publish.release import Attacker, ReleaseError, ReleaseOptions, release_dataset
from facemae_plugin.privatizers.methods import STRENGTHS, make_privatizer
from tests.helpers import IN_PROCESS, facemae
from tests.oracles import originals_shown


def quiet(**changes):
    """Release options for a test: no progress bars, conversion in this process."""
    return ReleaseOptions(**{"convert": IN_PROCESS, "progress": False, **changes})


def tree_hashes(folder):
    """sha256 of every file under ``folder``: what "the input is unchanged" means."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                hashes[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A shard to release (with its held-out .bin), another shard of other people, a random mbf attacker."""
    root = tmp_path_factory.mktemp("release")
    make_synthetic_dataset(root / "ds", identities=8, images_per_identity=3, holdout_identities=3, num_pairs=20,
                           progress=False)
    write_identity_shard(root / "other", 0, range(100, 106), 3, progress=False)
    torch.manual_seed(0)
    (root / "attacker").mkdir()
    torch.save(get_backbone("mbf").state_dict(), root / "attacker" / "model.pt")  # named "attacker" on the card
    return root


def text_of(release):
    return (release / "RELEASE.md").read_text()


def attackers_of(world):
    return [Attacker(str(world / "attacker" / "model.pt"), "mbf")]


PUBLISHED_FILES = {"train.rec", "train.idx", "property", "facemae_provenance.json", "RELEASE.json", "RELEASE.md"}


def published_files(out):
    return set(tree_hashes(out))


def test_cli_release_writes_the_shard_its_audit_and_a_card_with_the_audits_figures(world, tmp_path):
    before = tree_hashes(world / "ds")
    out = tmp_path / "released"
    result = facemae("release", world / "ds", out, "--method", "blur", "--sigma", 4, "--attacker",
                     world / "attacker" / "model.pt", "--attacker-network", "mbf", "--val",
                     world / "ds" / "holdout.bin", "--device", "cpu", "--workers", 0, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout.strip().splitlines()[-1])
    with open(out / "RELEASE.json") as f:
        assert json.load(f) == card
    private = tmp_path / "released.private"
    assert str(private) in result.stdout and "released.private" not in json.dumps(card) + text_of(out)
    assert os.stat(private).st_mode & 0o777 == 0o700
    with open(private / "audit" / "attacker" / "audit.json") as f:
        report = json.load(f)
    names = ["pixels", "verbatim", "attacker", "reapply", "reapply-attacker"]
    assert [a["name"] for a in card["attackers"]] == names
    attacker = card["attackers"][2]
    for key, value in attacker["leakage"].items():
        assert report[key] == value, key
    # the release holds the shard, its card and one aggregate figure per attacker; nothing else
    figures = {f"figures/{name}-similarity.png" for name in names}
    assert published_files(out) == PUBLISHED_FILES | figures
    assert {path for a in card["attackers"] for path in a["plots"].values()} == figures
    for threat, entry in card["worst_case"].items():  # the card leads with the largest figure of each threat
        values = {a["name"]: a["leakage"][entry["metric"]] for a in card["attackers"]}
        assert entry["value"] == max(values.values()) and values[entry["attacker"]] == entry["value"]
    # blur is deterministic: re-applied with the card's parameters it gives the release's bytes
    assert card["attackers"][3]["leakage"]["instance_rank1"] == 1.0 == card["worst_case"]["instance"]["value"]
    # ... and searched by the recogniser too, which knows each released face's very bytes among the gallery
    assert card["attackers"][4]["leakage"]["instance_rank1"] == 1.0
    assert "reapply-attacker: knows the method" in text_of(out) and "searches with attacker" in text_of(out)
    # The released shard is what `facemae convert` makes with the same settings, byte for byte.
    convert(world / "ds", tmp_path / "converted", make_privatizer("blur", sigma=4.0), IN_PROCESS, progress=False)
    assert tree_hashes(tmp_path / "converted")["train.rec"] == tree_hashes(out)["train.rec"]
    with FaceShard(world / "ds") as shard:
        assert card["source"] == {"path": "ds", **shard.fingerprint()}  # its name, not where it lies
    assert card["method"] == {"method": "blur", "sigma": 4.0, "k": 1}
    assert attacker["sha256"] == hashlib.sha256((world / "attacker" / "model.pt").read_bytes()).hexdigest()
    assert list(attacker["verification"]) == ["holdout"] and attacker["verification"]["holdout"]["pairs"] == 20
    text = (out / "RELEASE.md").read_text()
    assert f"{report['instance_rank1'] * 100:.2f}%" in text and "facemae release" in text
    assert text.index("## Worst case") < text.index("## What was released")
    assert f"**100.00%** rank-1, by the **{card['worst_case']['instance']['attacker']}** attacker" in text
    assert not os.path.exists(f"{out}.partial")
    # the originals are shown in the private folder (the oracle sees them there) and nowhere in the release
    assert {file for file, _, _ in originals_shown(private, world / "ds")} >= {"samples.png"}
    assert originals_shown(out, world / "ds") == []
    assert tree_hashes(world / "ds") == before


def test_a_release_whose_audit_fails_is_left_partial_and_a_rerun_finishes_it(world, tmp_path, monkeypatch):
    out = tmp_path / "released"
    args = (world / "ds", out, make_privatizer("pixelate", block_size=8), attackers_of(world))

    def failing_audit(*_, **__):
        raise OSError("disk full")

    monkeypatch.setattr("facemae_plugin.evaluation.suite.audit", failing_audit)
    with pytest.raises(OSError, match="disk full"):
        release_dataset(*args, quiet())
    partial = tmp_path / "released.partial"
    assert not out.exists() and (partial / "train.rec").is_file() and not (partial / "RELEASE.md").exists()
    monkeypatch.undo()

    def no_second_conversion(*_, **__):
        raise AssertionError("the finished conversion should have been kept")

    monkeypatch.setattr("facemae_plugin.convert.convert", no_second_conversion)
    card = release_dataset(*args, quiet())
    assert (out / "RELEASE.md").is_file() and not partial.exists() and card["method"]["method"] == "pixelate"


def test_an_existing_release_is_refused_without_overwrite(world, tmp_path):
    (tmp_path / "released").mkdir()
    result = facemae("release", world / "ds", tmp_path / "released", "--method", "blur", "--attacker",
                     world / "attacker" / "model.pt", "--attacker-network", "mbf", "--quiet")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "exists; pass --overwrite" in result.stderr and os.listdir(tmp_path / "released") == []


def test_releases_that_could_not_be_audited_are_refused_before_any_work(world, tmp_path):
    attackers = attackers_of(world)
    with pytest.raises(ReleaseError, match="--k 2: a release is audited record by record"):
        release_dataset(world / "ds", tmp_path / "a", make_privatizer("blur", k=2), attackers, quiet())
    with pytest.raises(ReleaseError, match="--training-set .*ds is the shard being released"):
        release_dataset(world / "ds", tmp_path / "b", make_privatizer("blur"), attackers,
                        quiet(training_set=world / "ds"))
    assert os.listdir(tmp_path) == []


def facemae_checkpoint(path, trained_on):
    torch.manual_seed(0)
    model = create_facemae("tiny", patch_size=16)
    return model.save_checkpoint(path, extra_config={"data": trained_on})


def test_a_reconstructor_trained_on_the_release_or_another_set_is_refused(world, tmp_path):
    with FaceShard(world / "ds") as ds, FaceShard(world / "other") as other:
        own, elsewhere = ds.fingerprint(), other.fingerprint()
    attackers = attackers_of(world)
    own_model = make_privatizer("facemae", checkpoint=facemae_checkpoint(tmp_path / "own.pt", own))
    with pytest.raises(ReleaseError, match="trained on .*ds itself"):
        release_dataset(world / "ds", tmp_path / "a", own_model, attackers, quiet())
    other_model = make_privatizer("facemae", checkpoint=facemae_checkpoint(tmp_path / "other.pt", elsewhere))
    write_identity_shard(tmp_path / "third", 0, range(200, 203), 2, progress=False)
    with pytest.raises(ReleaseError, match="other.pt: this reconstructor was trained on other data .* than .*third"):
        release_dataset(world / "ds", tmp_path / "b", other_model, attackers, quiet(training_set=tmp_path / "third"))
    assert sorted(os.listdir(tmp_path)) == ["other.pt", "own.pt", "third"]  # nothing written


def test_a_facemae_release_names_its_reconstructor_and_the_look_alikes_of_its_training_set(world, tmp_path):
    with FaceShard(world / "other") as other:
        trained_on = other.fingerprint()
    checkpoint = facemae_checkpoint(tmp_path / "facemae.pt", trained_on)
    card = release_dataset(world / "ds", tmp_path / "released", make_privatizer("facemae", checkpoint=checkpoint,
                                                                              output="paste"),
                           attackers_of(world), quiet(training_set=world / "other"))
    assert card["reconstructor"]["trained_on"] == trained_on
    assert card["reconstructor"]["sha256"] == hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    with open(tmp_path / "released.private" / "audit" / "attacker" / "audit.json") as f:
        lookalikes = json.load(f)["training_set"]
    recogniser = next(a for a in card["attackers"] if a["kind"] == "recogniser")
    assert {k: lookalikes[k] for k in recogniser["training_set"]} == recogniser["training_set"]
    assert all(a["training_set"] is None for a in card["attackers"] if a["kind"] != "recogniser")
    assert "Look-alikes of the 6 identities" in (tmp_path / "released" / "RELEASE.md").read_text()
    # the training set also trained the adaptive attacker, audited like the others, then removed
    adaptive = next(a for a in card["attackers"] if a["kind"] == "adaptive")
    with open(tmp_path / "released.private" / "audit" / "adaptive" / "audit.json") as f:
        assert json.load(f)["instance_rank1"] == adaptive["leakage"]["instance_rank1"]
    assert card["adaptive"] == "trained" and card["worst_case"]["instance"]["value"] >= \
        adaptive["leakage"]["instance_rank1"]
    assert not os.path.exists(tmp_path / "released" / ".adaptive")
    assert not os.path.exists(tmp_path / "released.private" / ".adaptive")


def test_the_adaptive_attacker_skipped_or_without_a_training_set_is_said_on_the_card(world, tmp_path):
    skipped = release_dataset(world / "ds", tmp_path / "skipped", make_privatizer("blur", sigma=3.0), [],
                              quiet(training_set=world / "other", adaptive=False))
    alone = release_dataset(world / "ds", tmp_path / "alone", make_privatizer("blur", sigma=3.0), [], quiet())
    for card, folder, said in ((skipped, "skipped", "skipped at the publisher's request"),
                               (alone, "alone", "no --attacker-set or --training-set")):
        assert all(a["kind"] != "adaptive" for a in card["attackers"])
        assert said in (tmp_path / folder / "RELEASE.md").read_text()
    assert (skipped["adaptive"], alone["adaptive"]) == ("skipped", "no training set")


@pytest.mark.slow
def test_adaptive_attackers_fine_tuned_from_each_recogniser_are_audited_and_on_the_card(world, tmp_path):
    out = tmp_path / "released"
    card = release_dataset(world / "ds", out, make_privatizer("blur", sigma=3.0), attackers_of(world),
                           quiet(training_set=world / "other", adaptive_from_attackers=True, reapply=False))
    by_name = {a["name"]: a for a in card["attackers"]}
    assert list(by_name) == ["pixels", "verbatim", "attacker", "adaptive", "adaptive-attacker"]
    assert {name: a["started_from"] for name, a in by_name.items()} == {
        "pixels": None, "verbatim": None, "attacker": None, "adaptive": None, "adaptive-attacker": "attacker"}
    for name in ("adaptive", "adaptive-attacker"):
        assert by_name[name]["kind"] == "adaptive"
        with open(tmp_path / "released.private" / "audit" / name / "audit.json") as f:
            assert json.load(f)["mean_source_cosine"] == by_name[name]["leakage"]["mean_source_cosine"]
    # both train with the recipe's seed on the same pairs: only the start tells them apart
    assert by_name["adaptive"]["leakage"]["mean_source_cosine"] != \
        by_name["adaptive-attacker"]["leakage"]["mean_source_cosine"]
    for threat, entry in card["worst_case"].items():
        assert entry["value"] == max(a["leakage"][entry["metric"]] for a in card["attackers"])
    text = text_of(out)
    assert "- adaptive-attacker: the attacker recogniser fine-tuned for 3 epochs on the training set" in text
    assert "- adaptive: a face recogniser trained from random weights for 3 epochs on the training set" in text
    assert not os.path.exists(out / ".adaptive")


def test_adaptive_attackers_from_attackers_need_a_training_set_and_model_pts(world, tmp_path):
    result = facemae("release", world / "ds", tmp_path / "a", "--method", "blur", "--attacker",
                     world / "attacker" / "model.pt", "--attacker-network", "mbf", "--adaptive-from-attackers",
                     "--quiet", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert ("--adaptive-from-attackers: the adaptive attackers train on --attacker-set C_DIR or --training-set"
            in result.stderr)
    onnx = [Attacker(str(tmp_path / "attacker.onnx"))]
    with pytest.raises(ReleaseError, match="attacker.onnx is an ONNX model; only a model.pt"):
        release_dataset(world / "ds", tmp_path / "b", make_privatizer("blur"), onnx,
                        quiet(training_set=world / "other", adaptive_from_attackers=True))
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """15 identities x 3 images: enough faces that heavy privatization hides most of them from a random mbf."""
    root = tmp_path_factory.mktemp("crowd")
    write_identity_shard(root / "ds", 0, range(15), 3, progress=False)
    torch.manual_seed(0)
    torch.save(get_backbone("mbf").state_dict(), root / "model.pt")
    return root


SECRET_SEED = 11  # what a publisher keeps: the reapply attacker must draw its own


def privatizer_factory(method, tmp_path):
    if method == "facemae":
        checkpoint = facemae_checkpoint(tmp_path / "facemae.pt", None)
        return lambda value: make_privatizer("facemae", checkpoint=checkpoint, output="full",
                                             mask_ratio=value).with_seed(SECRET_SEED, public=False)
    if method == "masked":
        return lambda value: make_privatizer("masked", mask_ratio=value, patch_size=16).with_seed(SECRET_SEED,
                                                                                                  public=False)
    return lambda value: make_privatizer("blur", sigma=value)


@pytest.mark.slow
# Blur keeps each photo's pose and lighting, which is what the pixel attacker finds its source by: even its
# strongest setting leaks more here than FaceMAE's target, so blur is held to a higher one; and re-applied it
# gives the release's very bytes, so it is calibrated without the reapply attacker. (masked keeps its visible
# patches: the verbatim attacker defeats every mask ratio, tests/test_experiment.py.)
@pytest.mark.parametrize("method, target, reapply", [("facemae", 0.4, True), ("blur", 0.99, False)])
def test_calibration_brackets_the_worst_case_within_one_bisection_step(crowd, tmp_path, method, target, reapply):
    at = privatizer_factory(method, tmp_path)
    card = release_dataset(crowd / "ds", tmp_path / "released", at(STRENGTHS[method].weakest),
                           [Attacker(str(crowd / "model.pt"), "mbf")],
                           quiet(target_leakage=target, reapply=reapply), privatizer_at=at)
    calibration = card["calibration"]
    # model.pt is named by its folder; reapply searches with the pixels and with that recogniser
    assert calibration["attackers"] == ["pixels", "verbatim", crowd.name] + (
        ["reapply", f"reapply-{crowd.name}"] if reapply else [])
    for point in calibration["points"]:  # each point is judged by its worst attacker
        assert point["instance_rank1"] == max(point["by_attacker"].values())
        assert point["by_attacker"][point["attacker"]] == point["instance_rank1"]
        # a point is judged by the upper bound of its worst rate over the calibration queries
        assert point["instance_upper"] == pytest.approx(upper_bound(round(point["instance_rank1"] * 45), 45))
    points = {p["value"]: p["instance_upper"] for p in calibration["points"]}
    chosen = calibration["value"]
    assert points[chosen] <= target and card["method"][calibration["param"]] == pytest.approx(chosen)
    assert "95% confidence" in text_of(tmp_path / "released")
    strength = STRENGTHS[method]
    step = (strength.strongest - strength.weakest) / 2 ** BISECTION_STEPS
    weaker = [v for v, leak in points.items() if v < chosen and leak > target]
    # midpoints are rounded to VALUE_DECIMALS: each of the steps may move the bracket by half a unit
    assert chosen == strength.weakest or chosen - max(weaker) <= step + BISECTION_STEPS * 0.5 * 10 ** -VALUE_DECIMALS
    assert calibration["identities"] == 15 and calibration["images"] == 45
    assert calibration["released_instance_rank1"] == card["worst_case"]["instance"]["value"]
    assert card["reapply"] == ("run" if reapply else "skipped")


@pytest.mark.slow
def test_a_calibrated_release_that_an_attacker_outside_calibration_defeats_is_refused(crowd, tmp_path, monkeypatch):
    from facemae_plugin.publish import release as release_module

    real_audit = release_module.audit_release

    def audit_with_a_stronger_attacker(*args, **kwargs):
        # what the adaptive attacker does to a release: it runs after calibration, on the chosen setting
        summary = real_audit(*args, **kwargs)
        summary["worst_case"]["instance"] = {"value": 0.9, "attacker": "adaptive"}
        return summary

    monkeypatch.setattr(release_module, "audit_release", audit_with_a_stronger_attacker)
    at = privatizer_factory("facemae", tmp_path)
    with pytest.raises(ReleaseError) as error:
        release_dataset(crowd / "ds", tmp_path / "released", at(0.0), [Attacker(str(crowd / "model.pt"), "mbf")],
                        quiet(target_leakage=0.4, reapply=False), privatizer_at=at)
    message = str(error.value)
    assert "--target-leakage 0.4: calibrated to mask_ratio=" in message and "no release written" in message
    assert "leaks 90.00% rank-1 instance under the adaptive attacker" in message and "\n" not in message
    assert not os.path.exists(tmp_path / "released")


def test_an_unreachable_target_stops_with_one_line_and_writes_nothing(crowd, tmp_path):
    result = facemae("release", crowd / "ds", tmp_path / "released", "--method", "blur", "--target-leakage", 0,
                     "--attacker", crowd / "model.pt", "--attacker-network", "mbf", "--workers", 0, "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "even the strongest setting sigma=16 leaks" in lines[0] and "no release written" in lines[0]
    assert "under the reapply attacker" in lines[0]  # blur re-applied with the card's sigma gives the same bytes
    assert os.listdir(tmp_path) == []


def test_a_target_outside_zero_to_one_is_refused_before_any_work(crowd, tmp_path):
    at = privatizer_factory("blur", tmp_path)
    with pytest.raises(CalibrationError, match="must be a fraction"):
        release_dataset(crowd / "ds", tmp_path / "released", at(1.0), [Attacker(str(crowd / "model.pt"), "mbf")],
                        quiet(target_leakage=1.5), privatizer_at=at)
    assert os.listdir(tmp_path) == []


def test_a_finished_conversion_is_published_without_converting_again(world, tmp_path, monkeypatch):
    convert(world / "ds", tmp_path / "converted", make_privatizer("blur", sigma=4.0), IN_PROCESS, progress=False)
    attackers = attackers_of(world)
    with pytest.raises(ReleaseError, match="differs in privatizer"):
        release_dataset(world / "ds", tmp_path / "other", make_privatizer("blur", sigma=5.0), attackers, quiet(),
                        converted=tmp_path / "converted")

    def no_conversion(*_, **__):
        raise AssertionError("the given conversion should have been published")

    monkeypatch.setattr("facemae_plugin.convert.convert", no_conversion)
    release_dataset(world / "ds", tmp_path / "released", make_privatizer("blur", sigma=4.0), attackers, quiet(),
                    converted=tmp_path / "converted")
    assert tree_hashes(tmp_path / "released")["train.rec"] == tree_hashes(tmp_path / "converted")["train.rec"]
    assert (tmp_path / "released" / "RELEASE.md").is_file()


def run_until(args, ready, timeout=300):
    """Start ``facemae *args``, SIGKILL it (the whole process group) once ``ready()`` holds; whether it did."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "facemae_plugin.cli", *map(str, args)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    caught = process.poll() is None
    if caught:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return caught


@pytest.mark.slow
def test_a_release_killed_at_any_step_then_resumed_publishes_exactly_the_published_files(world, tmp_path):
    out, partial, private = tmp_path / "released", tmp_path / "released.partial", tmp_path / "released.private"
    args = ("release", world / "ds", out, "--method", "noise", "--attacker", world / "attacker" / "model.pt",
            "--attacker-network", "mbf", "--workers", 0, "--quiet")
    steps = {"converting": lambda: partial.exists(),
             "auditing": lambda: (private / "audit" / "attacker").exists(),
             "writing the card": lambda: (partial / "figures").exists()}
    caught = [name for name, ready in steps.items() if run_until(args, ready)]
    assert "converting" in caught and "auditing" in caught, caught  # the others may finish before the poll sees them
    # what a stopped run of any version may have left in the staging folder: scratch, a lock, original faces
    (partial / "audit" / "attacker" / ".embeddings-1").mkdir(parents=True, exist_ok=True)
    np.save(partial / "audit" / "attacker" / ".embeddings-1" / "original.npy", np.ones((2, 3)))
    for name in (".facemae.lock", "samples.png", "train.rec.tmp-1-abc"):
        (partial / name).write_bytes(b"left over")
    result = facemae(*args)
    assert result.returncode == 0, result.stderr
    names = ["pixels", "verbatim", "attacker", "reapply", "reapply-attacker"]
    assert published_files(out) == PUBLISHED_FILES | {f"figures/{name}-similarity.png" for name in names}
    assert not partial.exists() and os.stat(private).st_mode & 0o777 == 0o700
    assert originals_shown(out, world / "ds") == []
    assert sorted(os.listdir(private)) == ["audit", "samples.png"]


@pytest.mark.parametrize("hits, n", [(0, 45), (12, 45), (44, 45), (45, 45), (30, 1500), (1480, 1500)])
def test_the_calibration_bound_is_the_clopper_pearson_upper_bound(hits, n):
    stats = pytest.importorskip("scipy.stats")
    want = 1.0 if hits == n else stats.beta.ppf(0.95, hits + 1, n - hits)
    assert upper_bound(hits, n) == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_the_adaptive_attacker_trains_on_unseen_people_when_given_them_and_the_card_says_on_what(world, tmp_path,
                                                                                                  monkeypatch):
    import facemae_plugin.train.recognise as recognise

    with FaceShard(world / "other") as other:
        trained_on = other.fingerprint()
    checkpoint = facemae_checkpoint(tmp_path / "facemae.pt", trained_on)
    privatizer = make_privatizer("facemae", checkpoint=checkpoint)
    write_identity_shard(tmp_path / "unseen", 0, range(300, 306), 3, progress=False)
    trainings, train = [], recognise.train_recogniser
    monkeypatch.setattr(recognise, "train_recogniser", lambda cfg, **kw: trainings.append(cfg) or train(cfg, **kw))
    card = release_dataset(world / "ds", tmp_path / "released", privatizer, [],
                           quiet(training_set=world / "other", attacker_set=tmp_path / "unseen", reapply=False,
                                 adaptive_epochs=2))
    with FaceShard(tmp_path / "unseen") as unseen:
        assert card["adaptive_data"] == {"set": "attacker set", "name": "unseen", "idx_sha256": unseen.idx_sha256,
                                         "images": 18, "identities": 6, "seen_by_reconstructor": False, "epochs": 2}
        assert [(cfg.num_epoch, cfg.num_image) for cfg in trainings] == [(2, 2 * len(unseen))]  # it and its twin
    assert "for 2 epochs on `unseen`, people neither released nor seen" in text_of(tmp_path / "released")
    # trained on the reconstructor's own faces, the card says this attacker may understate
    seen = release_dataset(world / "ds", tmp_path / "seen", privatizer, [],
                           quiet(training_set=world / "other", reapply=False))
    assert seen["adaptive_data"]["seen_by_reconstructor"] and "may understate" in text_of(tmp_path / "seen")
    for given, said in ((world / "other", "is what the reconstructor was trained on"),
                        (world / "ds", "is the shard being released")):
        with pytest.raises(ReleaseError, match=f"--attacker-set .*{said}"):
            release_dataset(world / "ds", tmp_path / "refused", privatizer, [],
                            quiet(training_set=world / "other", attacker_set=given))
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.private").exists()


def test_a_reidentification_target_is_bounded_beside_the_instance_target(crowd, tmp_path):
    at = privatizer_factory("facemae", tmp_path)
    # no setting keeps the 95% upper bound of re-identification at 0 on 45 faces: refused, naming that threat
    with pytest.raises(CalibrationError, match=r"--target-leakage 0.4 --target-reid 0: even the strongest setting "
                                               r"mask_ratio=0.95 leaks up to .*% rank-1 re-identification"):
        release_dataset(crowd / "ds", tmp_path / "released", at(0.0), [],
                        quiet(target_leakage=0.4, target_reid=0.0, reapply=False), privatizer_at=at)
    assert not (tmp_path / "released").exists() and not (tmp_path / "released.private").exists()
    alone = facemae("release", crowd / "ds", tmp_path / "cli", "--method", "blur", "--target-reid", 0.5, "--quiet")
    assert alone.returncode == 2 and "--target-reid" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1
