"""`facemae release --hub`: a folder the Hub's own readers load (datasets, huggingface_hub's card parser),
Croissant's validator accepts and iterates, and that names no path of this machine nor the secret."""
import hashlib
import json
import os

import pytest

from facemae_plugin.core.errors import UsageError
from facemae_plugin.formats.shard import FaceShard
from facemae_plugin.publish.hub import HubMetadata, size_category
from tests.helpers import facemae, last_json

datasets = pytest.importorskip("datasets")
mlc = pytest.importorskip("mlcroissant")
huggingface_hub = pytest.importorskip("huggingface_hub")

HUB_FLAGS = ("--hub", "--hub-license", "cc-by-nc-4.0", "--hub-contact", "data-team@example.org",
             "--hub-source-dataset", "synthetic-faces", "--hub-pretty-name", "Private faces")
# The Hub's task categories for images, from its dataset card metadata specification.
HUB_IMAGE_TASKS = {"image-classification", "image-feature-extraction", "image-segmentation", "object-detection",
                   "image-to-text", "image-to-image", "text-to-image", "zero-shot-image-classification"}


@pytest.fixture(scope="module")
def hub_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    facemae("synth", root / "ds", "--identities", 12, "--images-per-identity", 5, "--holdout-identities", 2,
            "--pairs", 10, "--quiet", check=True)
    result = facemae("release", root / "ds", root / "rel", "--method", "noise", "--noise-std", 30, "--quiet",
                     "--json", *HUB_FLAGS, check=True)
    return root, last_json(result.stdout)


def released_records(folder):
    """``[(label, payload)]`` of the released shard in key order."""
    with FaceShard(folder) as shard:
        return [shard.read(k) for k in sorted(int(k) for k in shard.image_keys)]


def test_datasets_loads_the_release_with_its_labels_and_bytes(hub_release, tmp_path):
    root, card = hub_release
    loaded = datasets.load_dataset(str(root / "rel"), split="train", cache_dir=str(tmp_path))
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    order = sorted(range(raw.num_rows), key=lambda i: raw["key"][i])
    records = released_records(root / "rel")
    assert raw.num_rows == card["released"]["images"] == len(records)
    assert [raw["label"][i] for i in order] == [label for label, _ in records]
    assert [raw["image"][i]["bytes"] for i in order] == [payload for _, payload in records]


def test_croissant_validates_and_iterates_the_released_records(hub_release):
    root, card = hub_release
    dataset = mlc.Dataset(jsonld=str(root / "rel" / "croissant.json"))  # raises on a validation error
    rows = list(dataset.records("faces"))
    records = released_records(root / "rel")
    assert len(rows) == len(records)
    assert sorted(int(r["faces/label"]) for r in rows) == sorted(label for label, _ in records)
    assert {r["faces/image"].size for r in rows} == {(112, 112)}

    doc = json.loads((root / "rel" / "croissant.json").read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    for entry in doc["distribution"]:
        if entry["@type"] == "cr:FileObject":
            data = (root / "rel" / entry["contentUrl"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry["contentUrl"]
    worst = card["worst_case"]["instance"]
    assert f"{worst['value'] * 100:.2f}%" in doc["rai:dataLimitations"][0]
    assert worst["attacker"] in doc["rai:dataLimitations"][0]
    listed = [line.split(" attacker")[0] for line in doc["rai:dataLimitations"][2:-1]]
    assert sorted(listed) == sorted(a["name"] for a in card["attackers"])
    for field in ("rai:dataCollection", "rai:dataPreprocessingProtocol", "rai:personalSensitiveInformation",
                  "rai:dataUseCases", "rai:dataSocialImpact", "rai:dataReleaseMaintenancePlan", "rai:hasSyntheticData"):
        assert doc[field] not in (None, "", []), field


def test_the_hub_card_front_matter_parses_and_holds_the_hubs_values(hub_release):
    root, card = hub_release
    hub_card = huggingface_hub.DatasetCard.load(root / "rel" / "README.md")
    data = hub_card.data
    assert data.license == "cc-by-nc-4.0" and data.pretty_name == "Private faces"
    assert data.size_categories == ["n<1K"]  # 60 images
    assert set(data.task_categories) <= HUB_IMAGE_TASKS
    assert data.configs[0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert "extra_gated_fields" in data.to_dict() and "re-identify" in data.extra_gated_prompt
    assert data.dataset_info["splits"][0]["num_examples"] == card["released"]["images"]
    risks = hub_card.text.split("## Bias, Risks, and Limitations")[1]
    worst = card["worst_case"]["instance"]
    assert f"{worst['value'] * 100:.2f}% at worst, by the {worst['attacker']} attacker" in risks.splitlines()[2]


def test_the_hub_folder_names_no_local_path_nor_the_secret(hub_release):
    root, card = hub_release
    secret = json.loads((root / "rel.secret.json").read_text())
    seed_values = {str(v) for v in secret.values() if isinstance(v, int)}
    assert seed_values
    for name in ("README.md", "croissant.json", "RELEASE.json"):
        text = (root / "rel" / name).read_text()
        assert str(root) not in text and os.path.expanduser("~") + "/" not in text, name
        assert not any(seed in text for seed in seed_values), name
    assert card["hub"]["croissant"] == "croissant.json"
    published = sorted(os.listdir(root / "rel"))
    assert published == sorted(["train.rec", "train.idx", "property", "facemae_provenance.json", "RELEASE.json",
                                "RELEASE.md", "figures", "data", "README.md", "croissant.json"])


def test_missing_hub_fields_are_one_line_before_any_work(tmp_path, synth_dir):
    result = facemae("release", synth_dir, tmp_path / "rel", "--method", "blur", "--quiet", "--hub",
                     "--hub-license", "other", "--hub-contact", "x@example.org")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "source_datasets, license_name, license_link" in result.stderr
    assert os.listdir(tmp_path) == []


def tree(folder):
    """``{relative path: sha256}`` of every file below ``folder``."""
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


def test_a_finished_release_becomes_a_hub_folder_and_stays_as_it_was(tmp_path, synth_dir):
    facemae("release", synth_dir, tmp_path / "rel", "--method", "blur", "--quiet", check=True)
    (tmp_path / "rel" / "samples.png").write_bytes(b"an original face, left here by hand")
    before = tree(tmp_path / "rel")
    result = facemae("hub", tmp_path / "rel", tmp_path / "hub", "--quiet", "--json", *HUB_FLAGS[1:], check=True)
    assert tree(tmp_path / "rel") == before  # the release is not touched
    assert "samples.png" not in os.listdir(tmp_path / "hub")  # only the published files are copied
    assert last_json(result.stdout)["croissant"] == "croissant.json"
    loaded = datasets.load_dataset(str(tmp_path / "hub"), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(zip(loaded["key"], loaded["label"])) == [(k, label) for k, (label, _) in zip(
        sorted(int(k) for k in FaceShard(tmp_path / "rel").image_keys), released_records(tmp_path / "rel"))]
    card = json.loads((tmp_path / "hub" / "RELEASE.json").read_text())
    assert card["worst_case"] == json.loads((tmp_path / "rel" / "RELEASE.json").read_text())["worst_case"]
    assert (tmp_path / "hub" / "RELEASE.md").read_text() == (tmp_path / "rel" / "RELEASE.md").read_text()
    card["card_version"] = 3  # an older release folder may hold original faces: refused
    (tmp_path / "rel" / "RELEASE.json").write_text(json.dumps(card))
    refused = facemae("hub", tmp_path / "rel", tmp_path / "hub2", "--quiet", *HUB_FLAGS[1:])
    assert refused.returncode == 2 and "card_version 3, expected 4" in refused.stderr
    assert not (tmp_path / "hub2").exists()


def test_hub_metadata_from_yaml(tmp_path):
    path = tmp_path / "hub.yaml"
    path.write_text("license: other\nlicense_name: research-only\nlicense_link: LICENSE.md\n"
                    "source_datasets: casia-webface\ncontact: me@example.org\n")
    metadata = HubMetadata.load(path, contact="override@example.org")
    assert metadata.source_datasets == ("casia-webface",) and metadata.contact == "override@example.org"
    path.write_text("license: mit\nsource_dataset: x\ncontact: me\n")
    with pytest.raises(UsageError, match="unknown field.*source_dataset"):
        HubMetadata.load(path)
    path.write_text("- a list\n")
    with pytest.raises(UsageError, match="expected a YAML mapping"):
        HubMetadata.load(path)


@pytest.mark.parametrize("count, category", [(1, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"),
                                             (490_623, "100K<n<1M"), (5_179_510, "1M<n<10M")])
def test_size_category(count, category):
    assert size_category(count) == category
