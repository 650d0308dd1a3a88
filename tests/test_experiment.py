"""The protocol behind `facemae demo` and the privacy-utility benchmark: splits, resumable steps, report."""
import json
import os

import numpy as np
import pytest

from facemae_plugin.publish.calibrate import CalibrationError

from facemae_plugin.data import faces as synth
from facemae_plugin.formats.binfile import load_bin
from facemae_plugin.protocol.demo import run_demo
from facemae_plugin.protocol.experiment import Experiment
from facemae_plugin.protocol.spec import ProtocolError, check_variant, merge_protocol, slug, variant_inputs
from facemae_plugin.models.mae import FaceMAE
from facemae_plugin.formats.recordio import decode_image
from facemae_plugin.formats.shard import FaceShard
from tests.helpers import TOY

def test_protocol_overrides_nest_and_unknown_keys_are_named():
    p = merge_protocol({"teacher": {"num_epoch": 9}, "seed": 3})
    assert p.teacher.num_epoch == 9 and p.teacher.network == "mbf" and p.seed == 3
    with pytest.raises(ProtocolError, match="protocol.teacher: unknown key 'epochs'"):
        merge_protocol({"teacher": {"epochs": 9}})
    with pytest.raises(ProtocolError, match="protocol.data must be a dict"):
        merge_protocol({"data": 5})


def test_a_work_dir_refuses_a_second_protocol(tmp_path):
    Experiment(tmp_path, TOY, progress=False)
    Experiment(tmp_path, TOY, progress=False)  # the same protocol reopens
    with pytest.raises(ProtocolError, match="differs in seed"):
        Experiment(tmp_path, {**TOY, "seed": 1}, progress=False)


def test_a_work_dir_from_before_a_new_protocol_key_still_opens_at_its_default(tmp_path):
    Experiment(tmp_path, TOY, progress=False)
    stored = json.loads((tmp_path / "protocol.json").read_text())
    del stored["data"]["detail"]  # as written before the key existed
    (tmp_path / "protocol.json").write_text(json.dumps(stored))
    Experiment(tmp_path, TOY, progress=False)
    with pytest.raises(ProtocolError, match="differs in data"):
        Experiment(tmp_path, {**TOY, "data": {**TOY["data"], "detail": 0.5}}, progress=False)


def test_pretrain_overrides_train_their_own_model_with_their_settings(tmp_path):
    experiment = Experiment(tmp_path, TOY, progress=False)
    plain = experiment.facemae(irm=False)
    swept = experiment.facemae(irm=False, overrides={"w_visible": 0.0})
    assert os.path.dirname(plain["checkpoint"]) != os.path.dirname(swept["checkpoint"])
    assert os.path.isfile(tmp_path / "steps" / "facemae_no_irm-w_visible0.0.done.json")
    assert FaceMAE.from_checkpoint(plain["checkpoint"]).extra_config["w_visible"] == 1.0
    assert FaceMAE.from_checkpoint(swept["checkpoint"]).extra_config["w_visible"] == 0.0


def test_a_variant_without_its_own_ratio_releases_at_its_models_training_ratio(tmp_path):
    experiment = Experiment(tmp_path, TOY, progress=False)
    trained_at_half = dict(name="x", method="facemae", irm=False, pretrain={"mask_ratio": 0.5, "output": "paste"})
    stage = experiment.privatizer(trained_at_half, seed=0)
    assert (stage.mask_ratio, stage.output) == (0.5, "paste")
    stage = experiment.privatizer({**trained_at_half, "mask_ratio": 0.9, "output": "full"}, seed=0)
    assert (stage.mask_ratio, stage.output) == (0.9, "full")
    assert experiment.privatizer(dict(name="m", method="masked"), seed=0).mask_ratio == 0.75


def test_pretrain_overrides_are_checked_before_anything_runs():
    good = dict(name="x", method="facemae", pretrain={"irm_weight": 0.3})
    assert check_variant(good) is good
    with pytest.raises(ProtocolError, match=r"x.pretrain: unknown key 'irm'"):
        check_variant(dict(name="x", method="facemae", pretrain={"irm": 0.3}))
    with pytest.raises(ProtocolError, match="variant x: method blur takes no pretrain"):
        check_variant(dict(name="x", method="blur", pretrain={"irm_weight": 0.3}))


@pytest.mark.parametrize("variant,message", [
    (dict(name="v", method="bogus"), r"variant v: unknown method 'bogus'; expected one of original, facemae"),
    (dict(name="v", method="facemae", output="half"), r"variant v: output 'half', expected full or paste"),
    (dict(name="v", method="facemae", pretrain={"output": "half"}), r"variant v: output 'half'"),
    (dict(name="v", method="facemae", mask_ratio=1.5), r"variant v: mask_ratio 1.5, expected a number in \[0, 1\)"),
    (dict(name="v", method="blur", sigma=-1), r"variant v: blur sigma \(pixels\) must be a number in \(0, inf\), got -1"),
    (dict(name="v", method="pixelate", sigma=3), r"variant v: method pixelate takes no sigma"),
    (dict(name="v", method="masked", mask_ratio="0.75"), r"variant v: .*mask_ratio"),
])
def test_every_variant_value_is_checked_before_anything_runs(variant, message):
    with pytest.raises(ProtocolError, match=message):
        check_variant(variant)


def test_a_finished_step_made_from_other_inputs_runs_again(tmp_path):
    experiment = Experiment(tmp_path, TOY, progress=False)
    calls = []

    def build():
        calls.append(1)
        return {"n": len(calls)}

    assert experiment.run_step("x", build, {"sigma": 3})["n"] == 1
    assert experiment.run_step("x", build, {"sigma": 3})["n"] == 1  # reused
    assert experiment.run_step("x", build, {"sigma": 6})["n"] == 2  # edited without renaming: redone
    assert json.loads((tmp_path / "steps" / "x.done.json").read_text())["inputs"] == {"sigma": 6}


def test_editing_a_variant_without_renaming_it_releases_it_again(tmp_path):
    experiment = Experiment(tmp_path, TOY, progress=False)
    light = experiment.release(dict(name="blur", method="blur", sigma=1.0), seed=0)
    before = (tmp_path / "released" / "blur" / "train.rec").read_bytes()
    heavy = experiment.release(dict(name="blur", method="blur", sigma=4.0), seed=0)
    assert light["released"] == heavy["released"]
    assert (tmp_path / "released" / "blur" / "train.rec").read_bytes() != before
    assert not experiment.row_finished(dict(name="blur", method="blur", sigma=1.0), seed=0)


def test_a_finished_release_needs_neither_its_checkpoint_nor_its_model(tmp_path, monkeypatch):
    experiment = Experiment(tmp_path, TOY, progress=False)
    variant = dict(name="FaceMAE full", method="facemae")
    experiment.data()
    marker = {"released": str(tmp_path / "released" / "x"), "method": "facemae", "images_per_s": 1.0,
              "inputs": variant_inputs(variant, 0)}
    (tmp_path / "steps" / "release-facemae_full-s0.done.json").write_text(json.dumps(marker))
    monkeypatch.setattr(Experiment, "facemae", lambda *a, **k: pytest.fail("the finished release trained FaceMAE"))
    assert experiment.release(variant, 0)["released"] == marker["released"]


def test_slug_makes_file_names():
    assert slug("FaceMAE no-IRM full 0.75") == "facemae_no_irm_full_0.75"


def mean_abs_difference(encoded, bgr):
    return float(np.abs(decode_image(encoded, iscolor=1).astype(np.float64) - bgr).mean())


def test_splits_hold_disjoint_identities_rendered_from_the_seed(tmp_path):
    experiment = Experiment(tmp_path, TOY, progress=False)
    result = experiment.data()
    assert result["identities"] == {"train": [0, 6], "release": [6, 11], "holdout": [11, 15], "attacker": [15, 18]}
    with FaceShard(experiment.path("data", "attacker")) as attacker:  # split C: the adaptive attackers' people
        assert len(attacker) == 9 and attacker.property[0] == 3 and result["classes"]["attacker"] == 3
        first_c = attacker.read(attacker.image_keys[0])[1]
        assert mean_abs_difference(first_c, synth.identity_images(0, 15, 3)[0]) < 6  # identity 15, JPEG-close
        assert mean_abs_difference(first_c, synth.identity_images(0, 0, 3)[0]) > 20
    assert experiment.adaptive_split == "attacker"
    no_c = Experiment(tmp_path / "no_c", {**TOY, "data": {**TOY["data"], "attacker_identities": 0}}, progress=False)
    assert "attacker" not in no_c.data() and no_c.adaptive_split == "train"
    with FaceShard(experiment.path("data", "release")) as release, \
            FaceShard(experiment.path("data", "train")) as train:
        assert len(release) == 15 and release.property[0] == 5 and len(train) == 24 and train.property[0] == 6
        first_b = synth.identity_images(0, 6, 3)[0]  # split B's label 0 is synthetic identity 6
        label, payload = release.read(release.image_keys[0])
        assert label == 0 and mean_abs_difference(payload, first_b) < 4  # JPEG-close to identity 6's face
        assert mean_abs_difference(train.read(train.image_keys[0])[1], first_b) > 20  # not identity 0's
    images, issame = load_bin(experiment.holdout_bin)
    assert len(images) == 40 and len(issame) == 20


def test_the_adaptive_attacker_learns_on_split_c_and_on_split_a_only_when_asked(tmp_path):
    experiment = Experiment(tmp_path, TOY, progress=False)
    blur = {"name": "blur s8", "method": "blur", "sigma": 8.0}
    unseen, seen = experiment.adaptive(blur, 0), experiment.adaptive(blur, 0, split="train")
    assert (unseen["split"], seen["split"]) == ("attacker", "train") and unseen["model"] != seen["model"]
    for name, split in (("adaptive-blur_s8", "attacker"), ("adaptive-blur_s8-on-train", "train")):
        # each learnt from its split beside that split's blurred twin: twice the images, the split's labels
        with FaceShard(tmp_path / "adaptive" / name / "data" / "train") as pairs, \
                FaceShard(experiment.splits[split]) as source:
            assert len(pairs) == 2 * len(source) and len(pairs.identity_keys) == len(source.identity_keys)
    # its step names the split, so an attacker trained on A before the protocol had a split C trains again
    marker = json.loads((tmp_path / "steps" / "train-adaptive-blur_s8.done.json").read_text())
    assert marker["inputs"]["split"] == "attacker"


def test_data_detail_reaches_every_split(tmp_path):
    experiment = Experiment(tmp_path, {**TOY, "data": {**TOY["data"], "detail": 1.0}}, progress=False)
    experiment.data()
    with FaceShard(experiment.path("data", "release")) as release, \
            FaceShard(experiment.path("data", "train")) as train:
        detailed, plain = synth.identity_images(0, 6, 1, detail=1.0)[0], synth.identity_images(0, 6, 1)[0]
        payload = release.read(release.image_keys[0])[1]
        assert mean_abs_difference(payload, detailed) < 4 < mean_abs_difference(payload, plain)
        first_a = synth.identity_images(0, 0, 1, detail=1.0)[0]
        assert mean_abs_difference(train.read(train.image_keys[0])[1], first_a) < 4
    images, _ = load_bin(experiment.holdout_bin)
    holdout_faces = [synth.identity_images(0, i, 4, detail=1.0) for i in range(11, 15)]
    assert min(mean_abs_difference(images[0], face) for faces in holdout_faces for face in faces) < 4


@pytest.mark.slow
def test_demo_runs_every_step_writes_its_report_and_reuses_steps(tmp_path, capsys):
    protocol = {**TOY, "facemae": {**TOY["facemae"], "num_epoch": 3}}
    report = run_demo(tmp_path, protocol, progress=False)
    first = capsys.readouterr()
    with open(tmp_path / "steps" / "facemae.done.json") as f:
        losses = [epoch["loss"] for epoch in json.load(f)["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0]  # FaceMAE learnt to reconstruct
    assert "[teacher] running" in first.err and "[teacher]" not in first.out  # step lines are progress
    assert [r["variant"] for r in report["rows"]] == ["original", "blur s3", "FaceMAE full 0.75"]
    for r in report["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["instance_rank1"] <= 1.0
        assert r["error"] == pytest.approx(1.0 - r["accuracy"])
    for path in (report["samples_png"], report["roc_png"], report["audit"], report["tradeoff_png"],
                 report["card"], tmp_path / "report.json"):
        assert os.path.isfile(path)
    for r in report["rows"]:  # each row is judged by the worst of the model-free attackers and the teacher
        assert r["worst_instance_rank1"] == max(r["instance_rank1"], r["pixels_instance_rank1"],
                                                r["verbatim_instance_rank1"])
    # The published release is the protocol's FaceMAE release made again with a secret seed, kept beside it.
    seed = json.loads((tmp_path / "release.secret.json").read_text())["seed"]
    with open(tmp_path / "released" / "facemae_full_0.75-s0" / "train.rec", "rb") as f, \
            open(tmp_path / "release" / "train.rec", "rb") as g:
        assert f.read() != g.read()
    with open(tmp_path / "release" / "RELEASE.json") as f:
        card = json.load(f)
    assert card["seed"] == "secret" and str(seed) not in json.dumps(card)
    # the adaptive attacker learns the method on split C, people FaceMAE never saw; reapply searches with
    # pixels and the teacher
    assert [a["name"] for a in card["attackers"]] == ["pixels", "verbatim", "teacher", "adaptive", "reapply",
                                                      "reapply-teacher"]
    assert card["adaptive"] == "trained"
    assert card["adaptive_data"] == {"set": "attacker set", "name": "attacker", "seen_by_reconstructor": False,
                                     "idx_sha256": FaceShard(tmp_path / "data" / "attacker").idx_sha256,
                                     "images": 9, "identities": 3, "epochs": 3}
    assert card["attackers"][2]["training_set"] is not None
    assert card["worst_case"]["instance"]["value"] == max(a["leakage"]["instance_rank1"] for a in card["attackers"])
    assert report["card_worst_case"] == card["worst_case"]
    with open(tmp_path / "report.json") as f:
        assert json.load(f)["rows"] == report["rows"]
    with FaceShard(tmp_path / "data" / "release") as original, \
            FaceShard(tmp_path / "released" / "facemae_full_0.75-s0") as released:
        assert list(released.image_keys) == list(original.image_keys)
        assert np.array_equal(released.labels(), original.labels())
    facemae_steps = {f"{step}-facemae_full_0.75-s0" for step in ("release", "recogniser", "verify", "audit",
                                                                  "audit-pixels", "audit-verbatim")}
    original_steps = {"recogniser-original-s0", "verify-original-s0", "audit-original", "audit-pixels-original",
                      "audit-verbatim-original"}
    blur_steps = {"release-blur_s3", "recogniser-blur_s3-s0", "verify-blur_s3-s0", "audit-blur_s3",
                  "audit-pixels-blur_s3", "audit-verbatim-blur_s3"}
    expected = ({"data", "teacher", "facemae", "release-masked_0.75-s0", "publish"} | facemae_steps | original_steps
                | blur_steps)
    assert set(report["steps"]) == expected
    capsys.readouterr()
    again = run_demo(tmp_path, protocol, progress=False)
    second = capsys.readouterr().err
    assert "running" not in second and "[teacher] reusing finished step" in second  # every step reused
    assert again["rows"] == report["rows"]


def test_a_variant_with_a_target_leakage_releases_at_its_calibrated_setting(tmp_path):
    from facemae_plugin.privatizers.methods import STRENGTHS

    experiment = Experiment(tmp_path, TOY, progress=False)
    # masking keeps its visible patches verbatim: no mask ratio hides them from the verbatim attacker
    masked = {"name": "masked to 0.9", "method": "masked", "target_leakage": 0.9}
    with pytest.raises(ProtocolError, match="give one of them, not both"):
        check_variant({**masked, "mask_ratio": 0.5})
    with pytest.raises(ProtocolError, match="expected a fraction"):
        check_variant({**masked, "target_leakage": 2})
    with pytest.raises(CalibrationError, match="mask_ratio=0.95 leaks .* under the verbatim attacker"):
        experiment.release(masked, 0)
    # on these few faces every baseline leaks all sources at its strongest: a target of 1 takes the weakest
    variant = {"name": "noise to 1", "method": "noise", "target_leakage": 1.0}
    released = experiment.release(variant, 0)["released"]
    with open(tmp_path / "steps" / "calibrate-noise_to_1-s0.done.json") as f:
        calibration = json.load(f)
    with open(os.path.join(released, "facemae_provenance.json")) as f:
        assert json.load(f)["privatizer"]["std"] == calibration["value"]
    points = {p["value"]: p["instance_rank1"] for p in calibration["points"]}
    strength = STRENGTHS["noise"]  # measured strongest first, then the weakest, which meets the target
    assert calibration["value"] == strength.weakest and sorted(points) == [strength.weakest, strength.strongest]
    assert calibration["attackers"] == ["pixels", "verbatim", "teacher"]  # the protocol's seeds: no reapply
    assert all(p["instance_rank1"] == max(p["by_attacker"].values()) for p in calibration["points"])
    assert experiment.calibrated(variant, 0) == {"name": "noise to 1", "method": "noise",
                                                 "std": calibration["value"]}


def test_where_the_time_went_counts_each_steps_own_time_once(tmp_path, monkeypatch):
    """A step that runs another first (a verify its recogniser) is charged only for its own work."""
    import types

    from facemae_plugin.protocol import store as store_module

    clock = iter([0.0, 1.0, 4.0, 10.0, 20.0, 26.0])  # verify starts, recogniser runs 1-4, verify ends; audit
    monkeypatch.setattr(store_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    store = store_module.StepStore(tmp_path / "work", progress=False)

    def verify():
        store.run_step("recogniser-original-s0", dict)
        return {}

    store.run_step("verify-original-s0", verify)
    store.run_step("audit-pixels-original", dict)
    store.run_step("recogniser-original-s0", dict)  # reused: no time this run
    assert store.own_seconds == {"recogniser-original-s0": 3.0, "verify-original-s0": 7.0,
                                 "audit-pixels-original": 6.0}
    assert store_module.time_by_kind(store) == {"verify": (1, 7.0), "audit": (1, 6.0), "recogniser": (1, 3.0)}
    lines = store_module.where_the_time_went(store).splitlines()
    assert "0.3 min in steps, 1 reused" in lines[0] and [line.split()[0] for line in lines[1:]] == \
        ["verify", "audit", "recogniser"]
