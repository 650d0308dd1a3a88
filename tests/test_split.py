"""Splitting a shard by identity: disjoint parts, every image once, bytes unchanged, seeded."""
import functools

import numpy as np
import pytest

from facemae_plugin.core.errors import OutputError
from facemae_plugin.formats.recordio import unpack
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.data.split import SplitError, split_by_identity

from tests import helpers
from tests.conftest import write_layout_a, write_layout_b
from tests.helpers import last_json

# every call must succeed unless it passes check=False
facemae = functools.partial(helpers.facemae, check=True)


def payloads_by_label(path):
    """``{label: [payload bytes]}`` read record by record through the raw index."""
    with FaceShard(path) as shard:
        out = {}
        for key in shard.image_keys:
            header, payload = unpack(shard.reader.read_idx(int(key)))
            out.setdefault(int(header.label), []).append(payload)
        return out


def test_parts_are_disjoint_cover_every_image_and_keep_bytes(tmp_path):
    write_layout_a(tmp_path / "in", [2, 3, 1, 4, 2, 3])
    source = payloads_by_label(tmp_path / "in")
    result = split_by_identity(tmp_path / "in", tmp_path / "a", tmp_path / "b", fraction=0.5, seed=3,
                               progress=False)
    a, b = result["a"]["original_labels"], result["b"]["original_labels"]
    assert len(a) == 3 and sorted(a + b) == list(range(6)) and not set(a) & set(b)
    for name, labels in (("a", a), ("b", b)):
        part = payloads_by_label(tmp_path / name)
        assert [part[new] for new in range(len(labels))] == [source[old] for old in labels]
        with FaceShard(tmp_path / name) as shard:
            assert shard.layout == "A" and shard.property[0] == len(labels)
            assert [shard.identity_ranges()[i][1] - shard.identity_ranges()[i][0] for i in range(len(labels))] \
                == [len(source[old]) for old in labels]


def test_layout_b_input_is_grouped_by_label_and_the_seed_decides(tmp_path):
    (tmp_path / "in").mkdir()
    write_layout_b(tmp_path / "in", [4, 4, 7, 0, 7, 2])
    first = split_by_identity(tmp_path / "in", tmp_path / "a", tmp_path / "b", fraction=0.5, seed=0,
                              progress=False)
    again = split_by_identity(tmp_path / "in", tmp_path / "a2", tmp_path / "b2", fraction=0.5, seed=0,
                              progress=False)
    assert first["a"]["original_labels"] == again["a"]["original_labels"]
    assert sorted(first["a"]["original_labels"] + first["b"]["original_labels"]) == [0, 2, 4, 7]
    assert first["a"]["images"] + first["b"]["images"] == 6
    assert (tmp_path / "a" / "train.rec").read_bytes() == (tmp_path / "a2" / "train.rec").read_bytes()
    # another seed draws another part A (numpy's draw without replacement, the rule's oracle), and the
    # shard holds exactly those identities
    other_seed = next(seed for seed in range(1, 50) if sorted(np.random.default_rng(seed).choice(
        [0, 2, 4, 7], size=2, replace=False).tolist()) != first["a"]["original_labels"])
    other = split_by_identity(tmp_path / "in", tmp_path / "a3", tmp_path / "b3", fraction=0.5, seed=other_seed,
                              progress=False)
    expected = sorted(np.random.default_rng(other_seed).choice([0, 2, 4, 7], size=2, replace=False).tolist())
    assert other["a"]["original_labels"] == expected != first["a"]["original_labels"]
    sizes = {0: 1, 2: 1, 4: 2, 7: 2}  # images per label in the input
    with FaceShard(tmp_path / "a3") as part:
        assert len(part) == sum(sizes[label] for label in expected) and part.property[0] == 2


def test_bad_fraction_and_existing_output_are_refused(tmp_path):
    write_layout_a(tmp_path / "in", [2, 2])
    with pytest.raises(SplitError, match="leaves a part empty"):
        split_by_identity(tmp_path / "in", tmp_path / "a", tmp_path / "b", fraction=0.9, progress=False)
    split_by_identity(tmp_path / "in", tmp_path / "a", tmp_path / "b", progress=False)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        split_by_identity(tmp_path / "in", tmp_path / "a", tmp_path / "b", progress=False)


def test_cli_split_reports_both_parts(tmp_path):
    write_layout_a(tmp_path / "in", [2, 3, 2, 2])
    out = facemae("split", tmp_path / "in", tmp_path / "a", tmp_path / "b", "--fraction", "0.25", "--json",
                  "--quiet")
    result = last_json(out.stdout)
    assert result["a"]["identities"] == 1 and result["b"]["identities"] == 3
    bad = facemae("split", tmp_path / "in", tmp_path / "a", tmp_path / "b", check=False)
    assert bad.returncode == 2 and "--overwrite" in bad.stderr.strip().splitlines()[-1]
