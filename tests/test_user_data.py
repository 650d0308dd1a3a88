"""The benchmark on a user's own shards: the data block's forms, disjoint people, given models, same numbers."""
import hashlib
import json
import os
import shutil

import pytest
import torch

from facemae_plugin.data.synthetic import write_identity_shard
from facemae_plugin.formats.shard import FaceShard, FaceShardWriter
from facemae_plugin.data.split import split_by_identity
from facemae_plugin.models.backbones import get_backbone
from facemae_plugin.protocol.benchmark import run_benchmark
from facemae_plugin.protocol.experiment import Experiment
from facemae_plugin.protocol.spec import ProtocolError
from tests.helpers import TOY


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards of different synthetic people (train, release, the attackers' split C) and one held-out
    .bin, as a user would have them."""
    root = tmp_path_factory.mktemp("user")
    synthetic = Experiment(root / "made", TOY, progress=False)
    synthetic.data()
    for name in ("train", "release", "attacker"):
        shutil.copytree(root / "made" / "data" / name, root / name)
    shutil.copy(root / "made" / "data" / "holdout.bin", root / "lfw.bin")
    return root


def user_protocol(shards, **data):
    return {**TOY, "data": {"train": str(shards / "train"), "release": str(shards / "release"),
                            "attacker": str(shards / "attacker"), "val": [str(shards / "lfw.bin")], **data}}


def test_the_data_block_takes_one_form_and_names_its_verification_sets(shards, tmp_path):
    with pytest.raises(ProtocolError, match="give train and release, or source .*not train"):
        Experiment(tmp_path / "a", {**TOY, "data": {"train": str(shards / "train")}}, progress=False).data()
    with pytest.raises(ProtocolError, match="protocol.data.val: name the verification sets"):
        Experiment(tmp_path / "b", user_protocol(shards, val=None), progress=False).data()
    with pytest.raises(ProtocolError, match="two sets are named lfw"):
        Experiment(tmp_path / "c", user_protocol(shards, val=[str(shards / "lfw.bin")] * 2), progress=False).data()
    with pytest.raises(ProtocolError, match="nope.bin not found"):
        Experiment(tmp_path / "d", user_protocol(shards, val=[str(tmp_path / "nope.bin")]), progress=False).data()
    with pytest.raises(ProtocolError, match="fraction must be in"):
        Experiment(tmp_path / "e", {**TOY, "data": {"source": str(shards / "train"), "fraction": 1.0,
                                                     "val": [str(shards / "lfw.bin")]}}, progress=False).data()
    done = Experiment(tmp_path / "f", user_protocol(shards), progress=False).data()
    assert done["val"] == {"lfw": str(shards / "lfw.bin")}
    assert done["classes"] == {"train": 6, "release": 5, "attacker": 3}
    assert done["train"] == str(shards / "train") and not os.path.exists(tmp_path / "f" / "data")  # nothing copied
    assert done["attacker"] == str(shards / "attacker")
    with pytest.raises(ProtocolError, match="release .*release and attacker .*release are the same shard; the "
                                            "attacker split must hold other people"):
        Experiment(tmp_path / "g", user_protocol(shards, attacker=str(shards / "release")), progress=False).data()
    write_identity_shard(tmp_path / "two_of_train", 0, range(2), 4, progress=False)  # train's first two people
    with pytest.raises(ProtocolError, match="2 identities of the attacker .*two_of_train also appear in train"):
        Experiment(tmp_path / "i", user_protocol(shards, attacker=str(tmp_path / "two_of_train")),
                   progress=False).data()
    with pytest.raises(ProtocolError, match="protocol.data.attacker: a shard of split C goes with train"):
        Experiment(tmp_path / "h", {**TOY, "data": {**TOY["data"], "attacker": str(shards / "attacker")}},
                   progress=False).data()


def test_a_release_sharing_people_with_train_is_refused_with_the_overlap_count(shards, tmp_path):
    with FaceShard(shards / "train") as train, FaceShard(shards / "release") as release:
        with FaceShardWriter(tmp_path / "mixed") as writer:  # release identities 0 and 1 carry one train image each
            for label, (start, end) in release.identity_ranges().items():
                images = [release.read(k)[1] for k in range(start, end)]
                writer.add_identity(images + ([train.read(train.image_keys[label])[1]] if label < 2 else []))
    protocol = user_protocol(shards, release=str(tmp_path / "mixed"))
    with pytest.raises(ProtocolError, match=r"2 identities of the release .* also appear in train .*\(2 identical"):
        Experiment(tmp_path / "w", protocol, progress=False).data()
    with pytest.raises(ProtocolError, match="are the same shard"):
        Experiment(tmp_path / "v", user_protocol(shards, release=str(shards / "train")), progress=False).data()


def test_a_source_folder_is_split_by_identity_with_the_split_rule(shards, tmp_path):
    write_identity_shard(tmp_path / "source", 0, range(50, 60), 3, progress=False)
    protocol = {**TOY, "data": {"source": str(tmp_path / "source"), "fraction": 0.4, "val": [str(shards / "lfw.bin")]}}
    done = Experiment(tmp_path / "w", protocol, progress=False).data()
    split_by_identity(tmp_path / "source", tmp_path / "a", tmp_path / "b", 0.4, seed=TOY.get("seed", 0),
                      progress=False)
    for name, part in (("train", "a"), ("release", "b")):
        assert file_hash(os.path.join(done[name], "train.rec")) == file_hash(tmp_path / part / "train.rec")
    assert done["classes"] == {"train": 4, "release": 6}


def test_a_given_teacher_is_checked_against_the_data_it_was_trained_on(shards, tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "teacher" / "model.pt"
    model.parent.mkdir()
    torch.save(get_backbone("mbf").state_dict(), model)
    with FaceShard(shards / "release") as release:
        (model.parent / "summary.json").write_text(json.dumps({"data": release.fingerprint()}))
    protocol = {**user_protocol(shards), "teacher": {**TOY["teacher"], "checkpoint": str(model)}}
    with pytest.raises(ProtocolError, match="was trained on .* itself"):
        Experiment(tmp_path / "w", protocol, progress=False).teacher()
    with FaceShard(shards / "train") as train:
        (model.parent / "summary.json").write_text(json.dumps({"data": train.fingerprint()}))
    done = Experiment(tmp_path / "x", protocol, progress=False).teacher()
    assert done["model"] == str(model) and done["given"] and list(done["val_accuracy"]) == ["lfw"]
    assert not os.path.exists(tmp_path / "x" / "teacher")  # nothing trained


def test_a_user_folder_that_changed_under_finished_steps_is_refused(shards, tmp_path):
    shutil.copytree(shards / "release", tmp_path / "release")
    protocol = user_protocol(shards, release=str(tmp_path / "release"))
    Experiment(tmp_path / "w", protocol, progress=False).data()
    shutil.rmtree(tmp_path / "release")
    write_identity_shard(tmp_path / "release", 0, range(70, 73), 2, progress=False)
    with pytest.raises(ProtocolError, match="changed since the steps"):
        Experiment(tmp_path / "w", protocol, progress=False).data()


VARIANTS = """variants = [
    dict(name="original", method="original"),
    dict(name="FaceMAE full 0.75", method="facemae", output="full", mask_ratio=0.75),
    dict(name="blur s6", method="blur", sigma=6.0),
]
"""


@pytest.mark.slow
def test_the_user_data_path_gives_the_synthetic_paths_numbers(shards, tmp_path):
    (tmp_path / "synthetic.py").write_text(f"protocol = {TOY!r}\n" + VARIANTS)
    (tmp_path / "user.py").write_text(f"protocol = {user_protocol(shards)!r}\n" + VARIANTS)
    synthetic = run_benchmark(tmp_path / "synthetic.py", tmp_path / "s", progress=False)
    user = run_benchmark(tmp_path / "user.py", tmp_path / "u", progress=False)
    figures = ("accuracy", "tar_at_far", "instance_rank1", "identity_rank1", "source_tar_at_far",
               "informed_instance_rank1", "informed_identity_rank1", "lookalike_excess", "reid_rank1",
               "pixels_instance_rank1", "pixels_reid_rank1", "worst_instance_rank1", "worst_reid_rank1")
    for ours, theirs in zip(user["rows"], synthetic["rows"]):
        assert {k: ours[k] for k in figures} == {k: theirs[k] for k in figures}, ours["variant"]
        assert ours["acc_lfw"] == theirs["acc_holdout"] == ours["accuracy"]
    assert all(row["lookalike_excess"] is not None for row in user["rows"])
    assert "look-alikes of split A" in (tmp_path / "u" / "results" / "results.md").read_text()
