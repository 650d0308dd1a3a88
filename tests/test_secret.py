"""Secret seeds: drawn unless given, kept beside the output, never inside it; a resume reads them back."""
import json
import os
import stat

import pytest

from facemae_plugin.convert import convert
from facemae_plugin.convert.secret import SecretError, publisher_seed, secret_path
from facemae_plugin.data.synthetic import make_synthetic_dataset
from facemae_plugin.privatizers.methods import make_privatizer
from tests.helpers import IN_PROCESS, facemae


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def files_holding(folder, needle):
    """Every file under ``folder`` whose bytes contain ``needle``."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.join(root, n) for n in names if needle.encode() in read_bytes(os.path.join(root, n))]
    return found


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("secret")
    make_synthetic_dataset(root / "ds", identities=6, images_per_identity=3, holdout_identities=2, num_pairs=10,
                           progress=False)
    return root / "ds"


def test_conversions_without_a_seed_differ_and_keep_it_beside_the_output_alone(ds, tmp_path):
    for name in ("a", "b"):
        result = facemae("convert", ds, tmp_path / name, "--method", "noise", "--workers", 0, "--quiet")
        assert result.returncode == 0, result.stderr
    assert read_bytes(tmp_path / "a" / "train.rec") != read_bytes(tmp_path / "b" / "train.rec")
    for name in ("a", "b"):
        secret = tmp_path / f"{name}.secret.json"
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600 and str(secret) == secret_path(tmp_path / name)
        seed = json.loads(secret.read_text())["seed"]
        with open(tmp_path / name / "facemae_provenance.json") as f:
            provenance = json.load(f)
        assert provenance["privatizer"]["seed"] == "secret" and provenance["source"]["name"] == "ds"
        assert files_holding(tmp_path / name, str(seed)) == []
        assert files_holding(tmp_path / name, str(ds)) == []  # nor where the source lies


def test_a_resumed_conversion_reads_its_secret_back(ds, tmp_path):
    out = tmp_path / "out"
    first = facemae("convert", ds, out, "--method", "masked", "--num-shards", 2, "--shard", 0, "--workers", 0,
                    "--quiet")
    assert first.returncode == 0, first.stderr
    assert not (out / "train.rec").exists()
    rest = facemae("convert", ds, out, "--method", "masked", "--num-shards", 2, "--workers", 0, "--quiet", "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout.strip().splitlines()[-1])["shards_skipped"] == [0]
    seed = json.loads((tmp_path / "out.secret.json").read_text())["seed"]
    whole = make_privatizer("masked", patch_size=8, seed=seed)  # the same secret, in one uninterrupted run
    convert(ds, tmp_path / "whole", whole, IN_PROCESS, progress=False)
    assert read_bytes(out / "train.rec") == read_bytes(tmp_path / "whole" / "train.rec")


def test_an_explicit_seed_is_published_and_gives_the_bytes_it_always_gave(ds, tmp_path):
    result = facemae("convert", ds, tmp_path / "given", "--method", "noise", "--seed", 0, "--workers", 0, "--quiet")
    assert result.returncode == 0, result.stderr
    convert(ds, tmp_path / "library", make_privatizer("noise", seed=0), IN_PROCESS, progress=False)
    assert read_bytes(tmp_path / "given" / "train.rec") == read_bytes(tmp_path / "library" / "train.rec")
    with open(tmp_path / "given" / "facemae_provenance.json") as f:
        assert json.load(f)["privatizer"]["seed"] == 0
    assert not (tmp_path / "given.secret.json").exists()


def test_a_deterministic_method_needs_no_secret(ds, tmp_path):
    result = facemae("convert", ds, tmp_path / "blur", "--method", "blur", "--workers", 0, "--quiet")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "blur.secret.json").exists()


def test_a_release_without_a_seed_publishes_no_seed_and_no_path_of_this_machine(ds, tmp_path):
    out = tmp_path / "released"
    result = facemae("release", ds, out, "--method", "noise", "--noise-std", 40, "--workers", 0, "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    seed = json.loads((tmp_path / "released.secret.json").read_text())["seed"]
    assert files_holding(out, str(seed)) == [] and files_holding(out, str(tmp_path)) == []
    card = json.loads((out / "RELEASE.json").read_text())
    assert card["seed"] == "secret" and card["method"]["seed"] == "secret"
    assert [a["name"] for a in card["attackers"]] == ["pixels", "verbatim", "reapply"]
    assert "Seed: secret" in (out / "RELEASE.md").read_text()

    given = facemae("release", ds, tmp_path / "given", "--method", "noise", "--seed", 5, "--workers", 0, "--quiet")
    assert given.returncode == 0, given.stderr
    card = json.loads((tmp_path / "given" / "RELEASE.json").read_text())
    assert card["seed"] == "published" and card["method"]["seed"] == 5
    # the published seed hands the reapply attacker the release's very bytes
    reapply = next(a for a in card["attackers"] if a["name"] == "reapply")
    assert reapply["leakage"]["instance_rank1"] == 1.0
    assert "regenerates this release byte for byte" in (tmp_path / "given" / "RELEASE.md").read_text()


def test_the_secret_is_drawn_once_and_a_damaged_one_is_named(tmp_path):
    seed, public = publisher_seed(tmp_path / "out")
    assert not public and publisher_seed(tmp_path / "out") == (seed, False)
    assert publisher_seed(tmp_path / "other", seed=3) == (3, True)
    assert not os.path.exists(secret_path(tmp_path / "other"))
    with open(secret_path(tmp_path / "bad"), "w") as f:
        f.write('{"seed": -1}')
    with pytest.raises(SecretError, match=r"bad\.secret\.json: seed -1 is not"):
        publisher_seed(tmp_path / "bad")
    result = facemae("convert", tmp_path / "nowhere", tmp_path / "bad", "--method", "noise", "--quiet")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "bad.secret.json: seed -1" in result.stderr


def test_a_refused_command_leaves_no_secret_but_a_started_one_keeps_it(ds, tmp_path):
    refused = facemae("convert", ds, tmp_path / "out", "--method", "facemae", "--checkpoint", tmp_path / "none.pt",
                      "--quiet")
    assert refused.returncode == 2 and os.listdir(tmp_path) == []
    started = facemae("convert", ds, tmp_path / "out", "--method", "noise", "--num-shards", 2, "--shard", 0,
                      "--workers", 0, "--quiet")
    assert started.returncode == 0, started.stderr
    again = facemae("convert", ds, tmp_path / "out", "--method", "noise", "--num-shards", 2, "--quality", 101,
                    "--quiet")
    assert again.returncode == 2 and (tmp_path / "out.secret.json").is_file()  # shard 0 needs it to resume


def test_a_stopped_release_whose_secret_is_gone_is_refused_and_started_again_with_overwrite(ds, tmp_path):
    out, partial = tmp_path / "released", tmp_path / "released.partial"
    started = facemae("convert", ds, partial, "--method", "noise", "--workers", 0, "--quiet")  # a finished conversion
    assert started.returncode == 0, started.stderr
    before = (partial / "train.rec").read_bytes()
    args = ("release", ds, out, "--method", "noise", "--workers", 0, "--no-reapply", "--quiet")
    refused = facemae(*args)  # no released.secret.json: a new secret would not regenerate what is there
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "the secret of" in lines[0] and "--overwrite" in lines[0]
    assert not out.exists() and not (tmp_path / "released.secret.json").exists()
    assert (partial / "train.rec").read_bytes() == before  # nothing of it touched
    again = facemae(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    seed = json.loads((tmp_path / "released.secret.json").read_text())["seed"]
    regenerated = tmp_path / "regenerated"
    convert(ds, regenerated, make_privatizer("noise", std=25.0, seed=seed), IN_PROCESS, progress=False)
    assert (regenerated / "train.rec").read_bytes() == (out / "train.rec").read_bytes() != before


def test_a_stopped_conversion_whose_secret_is_gone_is_refused_and_started_again_with_overwrite(ds, tmp_path):
    out = tmp_path / "out"
    args = ("convert", ds, out, "--method", "noise", "--workers", 0, "--num-shards", 2, "--quiet")
    assert facemae(*args, "--shard", 0).returncode == 0  # shard 0 done, shard 1 not yet
    done = sorted(p.name for p in (out / "shards").iterdir())
    os.remove(tmp_path / "out.secret.json")
    refused = facemae(*args, "--shard", 1)  # a new secret would not match shard 0
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "the secret of" in lines[0] and "--overwrite" in lines[0]
    assert sorted(p.name for p in (out / "shards").iterdir()) == done and not (tmp_path / "out.secret.json").exists()
    again = facemae(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    seed = json.loads((tmp_path / "out.secret.json").read_text())["seed"]
    regenerated = tmp_path / "regenerated"
    convert(ds, regenerated, make_privatizer("noise", std=25.0, seed=seed), IN_PROCESS, progress=False)
    assert (regenerated / "train.rec").read_bytes() == (out / "train.rec").read_bytes()

