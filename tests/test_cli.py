"""The `facemae` command line as a user runs it: real subprocesses, summaries, JSON, errors."""
import functools
import os
import re
import subprocess
import sys

import pytest

from facemae_plugin.formats.binfile import load_bin
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.cli import build_parser
from tests import helpers
from tests.helpers import last_json

# every call must succeed unless it passes check=False
facemae = functools.partial(helpers.facemae, check=True)

VERBS = sorted(build_parser()._subparsers._group_actions[0].choices)
CLI_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "cli.md")


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_itself(verb):
    out = facemae(verb, "--help").stdout
    assert out.startswith(f"usage: facemae {verb}") and "--json" in out


def test_the_cli_doc_lists_every_verb_and_no_other():
    with open(CLI_DOC) as f:
        listed = set(re.findall(r"^facemae ([a-z0-9-]+) ", f.read(), flags=re.M))
    assert listed == set(VERBS)


def test_synth_then_inspect(tmp_path):
    out_dir = tmp_path / "synth"
    result = facemae("synth", out_dir, "--identities", 6, "--images-per-identity", 4,
                     "--holdout-identities", 5, "--pairs", 40, "--json", "--quiet")
    summary = last_json(result.stdout)
    assert summary["images"] == 24 and summary["pairs"] == 40
    assert "synth: 24 images of 6 identities" in result.stdout

    shard = FaceShard(out_dir)
    assert shard.layout == "A" and len(shard) == 24 and len(shard.identity_ranges()) == 6
    images, issame = load_bin(out_dir / "holdout.bin")
    assert len(images) == 80 and issame.sum() == 20

    info = last_json(facemae("inspect", out_dir, "--json", "--quiet").stdout)
    assert (info["layout"], info["images"], info["identities"]) == ("A", 24, 6)
    assert info["label_range"] == [0, 5] and info["image_size"] == [112, 112]
    assert info["first_keys"] == [1, 2, 3, 4, 5]

    bin_result = facemae("inspect", out_dir / "holdout.bin", "--json")
    assert "raw-pixel cosine" in bin_result.stdout
    bin_info = last_json(bin_result.stdout)
    assert bin_info["pairs"] == 40 and 0.0 <= bin_info["raw_pixel_accuracy"] <= 1.0


def test_synth_is_deterministic(tmp_path):
    for name, detail in (("a", 0), ("b", 0), ("fine", 1), ("fine_again", 1)):
        facemae("synth", tmp_path / name, "--identities", 3, "--images-per-identity", 3,
                "--holdout-identities", 3, "--pairs", 10, "--detail", detail, "--quiet")
    for file in ("train.rec", "train.idx", "property", "holdout.bin"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
        assert (tmp_path / "fine" / file).read_bytes() == (tmp_path / "fine_again" / file).read_bytes(), file
    assert (tmp_path / "fine" / "train.rec").read_bytes() != (tmp_path / "a" / "train.rec").read_bytes()


def test_synth_refuses_a_detail_outside_0_1_in_one_line(tmp_path):
    result = facemae("synth", tmp_path / "out", "--detail", 2, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "facemae synth: error: detail must be a number in [0, 1], got 2.0"
    assert not (tmp_path / "out" / "train.rec").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"\x00" * 16)
    (tmp_path / "train.idx").write_text("0\t0\n")
    result = facemae("inspect", tmp_path, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("facemae inspect: error: ") and "wrong magic 0x00000000 at offset 0" in lines[0]


def test_missing_path_is_one_line(tmp_path):
    result = facemae("inspect", tmp_path / "nowhere", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_converter_scripts_run_the_same_verbs(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "converters", "rec2folder.py")
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: facemae rec2folder" in result.stdout
