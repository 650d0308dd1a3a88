"""A release as a Hugging Face Hub dataset folder: Parquet under ``data/``, a ``README.md`` card, Croissant.

``HubMetadata``: what only the publisher knows (licence, source datasets, contact), from a small YAML
file and flags, checked before any work. ``write_hub_folder`` adds to a finished release (its shard
and card already made): ``data/train-*.parquet`` (``convert.parquet``), ``README.md`` (YAML front matter
the Hub reads, then the Hub's dataset card sections, its risks led by the measured worst case) and
``croissant.json`` (``publish.croissant``). The RecordIO shard stays for arcface_torch.
``hub_from_release`` does the same for a release made without ``--hub``, into a new folder.
"""
import json
import os
import shutil
from dataclasses import dataclass, field, fields
from typing import Optional

from ..core.errors import InputError, UsageError
from ..core.files import atomic_file, refuse_existing, refuse_overlap, replace_dir, temp_name
from ..convert.parquet import DEFAULT_ROWS_PER_FILE, LAYOUT_NAME, SPLIT_GLOB, write_parquet_files
from ..formats.shard import FaceShard
from .card import CARD_VERSION, THREAT_WORDS, leakage_table_lines, method_text, percent, worst_case_lines, write_card
from .croissant import TAGS, write_croissant
from .private import CARD_JSON, CROISSANT_JSON, HUB_CARD, HUB_DATA_DIR, PUBLISHED

REQUIRED = ("license", "source_datasets", "contact")
FLAGS = {"license": "--hub-license", "source_datasets": "--hub-source-dataset", "contact": "--hub-contact",
         "license_name": "license_name in --hub-metadata", "license_link": "license_link in --hub-metadata"}
# The Hub's size_categories, from its dataset card metadata (the Hub checks them online only).
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
TASK_CATEGORIES = ("image-classification", "image-feature-extraction")
GATED_PROMPT = ("These faces were made from photos of real people. By requesting access you agree not to "
                "attempt to identify or re-identify anyone in this dataset, nor to link its images to any "
                "other photo, and to use it only to train or evaluate face recognition.")
GATED_AGREEMENT = "I agree not to attempt to identify or re-identify any person in this dataset"


@dataclass(frozen=True)
class HubMetadata:
    """What the publisher supplies for the Hub card: ``license`` (a Hub licence id, or ``other`` with
    ``license_name`` and ``license_link``), ``source_datasets`` (what the photos came from), ``contact``,
    and optionally ``pretty_name``, ``citation`` (BibTeX) and ``annotations_creators``."""

    license: Optional[str] = None
    source_datasets: tuple = ()
    contact: Optional[str] = None
    pretty_name: Optional[str] = None
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    citation: Optional[str] = None
    annotations_creators: tuple = field(default=("found",))

    @classmethod
    def load(cls, path=None, **given):
        """From the YAML file ``path`` (if any), then the non-empty ``given`` values over it; checked."""
        values = _read_yaml(path) if path else {}
        values.update({key: value for key, value in given.items() if value not in (None, (), [])})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{path}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        for name in ("source_datasets", "annotations_creators"):
            if isinstance(values.get(name), str):
                values[name] = (values[name],)
            if name in values:
                values[name] = tuple(str(v) for v in values[name])
        metadata = cls(**values)
        metadata.check(path)
        return metadata

    def check(self, path=None):
        where = f"{path}: " if path else ""
        missing = [name for name in REQUIRED if not getattr(self, name)]
        if self.license == "other":
            missing += [name for name in ("license_name", "license_link") if not getattr(self, name)]
        if missing:
            raise UsageError(f"{where}the Hub card needs {', '.join(missing)} (give them in --hub-metadata "
                             f"FILE.yaml or as {', '.join(FLAGS[name] for name in missing)})")


def _read_yaml(path):
    try:
        import yaml
    except ImportError:
        raise UsageError("--hub needs PyYAML and pyarrow: pip install 'facemae-plugin[hub]'") from None
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: not a readable YAML file ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a YAML mapping of field: value, got {type(values).__name__}")
    return values


def size_category(count):
    """The Hub's size category of ``count`` records."""
    for bound, name in SIZE_CATEGORIES:
        if count < bound:
            return name
    return "n>1B"


def front_matter(card, metadata, parquet):
    """The YAML front matter as a dict: licence, names, categories, the Parquet config, features, gating."""
    images = card["released"]["images"]
    values = {"license": metadata.license}
    if metadata.license == "other":
        values.update(license_name=metadata.license_name, license_link=metadata.license_link)
    values.update({
        "pretty_name": metadata.pretty_name or card["released"]["name"],
        "task_categories": list(TASK_CATEGORIES), "tags": list(TAGS),
        "size_categories": [size_category(images)],
        "annotations_creators": list(metadata.annotations_creators),
        "source_datasets": list(metadata.source_datasets),
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": f"{HUB_DATA_DIR}/{SPLIT_GLOB}"}]}],
        "dataset_info": {
            "features": [{"name": "image", "dtype": "image"}, {"name": "label", "dtype": "int64"},
                         {"name": "key", "dtype": "int64"}, {"name": "recordio_header", "dtype": "binary"}],
            "splits": [{"name": "train", "num_bytes": parquet["bytes"], "num_examples": images}],
            "download_size": parquet["bytes"], "dataset_size": parquet["bytes"]},
        "extra_gated_prompt": GATED_PROMPT,
        "extra_gated_fields": {GATED_AGREEMENT: "checkbox"},
    })
    return values


def render_hub_readme(card, metadata, parquet):
    """``README.md``: front matter, then the Hub's dataset card sections filled from the release card."""
    import yaml

    head = yaml.safe_dump(front_matter(card, metadata, parquet), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{head}---\n\n" + "\n".join(_body_lines(card, metadata)) + "\n"


def _body_lines(card, metadata):
    name = metadata.pretty_name or card["released"]["name"]
    worst = card["worst_case"]
    lines = [f"# Dataset Card for {name}", "",
             f"Face images for training face recognition, each made from one photo of a real person by "
             f"{method_text(card, bold=True)} so that it is harder to link back to that photo. How often it still "
             f"can be was measured and is stated below, worst case first.", ""]
    lines += worst_case_lines(card)
    lines += ["", "## Dataset Details", "", "### Dataset Description", "",
              f"- **Curated by:** {metadata.contact}",
              f"- **License:** {metadata.license_name or metadata.license}"
              + (f" ({metadata.license_link})" if metadata.license_link else ""),
              f"- **Source datasets:** {', '.join(metadata.source_datasets)}",
              f"- **Made with:** facemae-plugin {card['facemae_plugin']}: `{card['command']}`",
              f"- **Size:** {card['released']['images']} images of {card['source']['identities']} identities", "",
              "## Uses", "", "### Direct Use", "",
              "Training and evaluating face recognition models (the `label` is the identity; InsightFace's "
              "arcface_torch trains on the RecordIO shard `train.rec`/`train.idx` of this folder as it is).", "",
              "### Out-of-Scope Use", "",
              "Identifying, re-identifying, tracking or profiling any person; linking these images to other photos "
              "or to the source dataset; inferring sensitive attributes (ethnicity, health, sexual orientation, "
              "political or religious views) from faces; surveillance of any kind.", "",
              "## Dataset Structure", "",
              f"One split, `train`, in `{HUB_DATA_DIR}/{SPLIT_GLOB}`: `image` (the JPEG bytes, a `datasets` Image), "
              "`label` (int64 identity), `key` (the record key in `train.rec`) and `recordio_header` (the record's "
              "header bytes, so `facemae parquet2rec` rebuilds the shard byte for byte). The same records as an "
              "InsightFace shard: `train.rec`, `train.idx`, `property`. `RELEASE.md` / `RELEASE.json` hold the "
              "full release card; `croissant.json` the Croissant metadata with its Responsible-AI fields.", "",
              "## Dataset Creation", "", "### Curation Rationale", "",
              "To let face recognition be trained on faces that do not give away the photos they were made from.", "",
              "### Source Data", "", "#### Data Collection and Processing", "",
              f"Every image of the source shard ({card['source']['images']} images of "
              f"{card['source']['identities']} identities, `.idx` sha256 `{card['source']['idx_sha256']}`) was "
              f"replaced by its version under {method_text(card, bold=True)}, JPEG quality "
              f"{card['jpeg_quality']}; keys and labels are those of the source. The seed is {card['seed']}.", "",
              "#### Who are the source data producers?", "",
              f"The people photographed in {', '.join(metadata.source_datasets)}; see that dataset's own card.", "",
              "### Annotations", "",
              f"Identity labels come from the source dataset ({', '.join(metadata.annotations_creators)}); nothing "
              "was annotated anew.", "",
              "## Personal and Sensitive Information", "",
              "Faces are biometric data (special-category personal data under the GDPR, Art. 9). Every image here was "
              "made from a photo of a real, identifiable person; the method reduces, but does not remove, what "
              "links it to that photo and person. "
              f"At worst {percent(worst['instance']['value'])} of the images still find their own source photo "
              f"({worst['instance']['attacker']} attacker) and {percent(worst['reidentification']['value'])} find "
              f"another photo of their person ({worst['reidentification']['attacker']} attacker).", "",
              "## Bias, Risks, and Limitations", "",
              f"- **Linkage:** {THREAT_WORDS['instance']}: {percent(worst['instance']['value'])} at worst, by the "
              f"{worst['instance']['attacker']} attacker; {THREAT_WORDS['reidentification']}: "
              f"{percent(worst['reidentification']['value'])} at worst, by the "
              f"{worst['reidentification']['attacker']} attacker. Measured against the attackers below only; a "
              "stronger attacker may find more.",
              "- **People stay recognisable:** a set that trains recognisers keeps its people recognisable, so "
              "re-identification of a person from other photos of them is expected.",
              "- **Bias:** the source dataset's demographic make-up is inherited; the method has not been measured "
              "for unequal leakage across groups.", ""]
    lines += leakage_table_lines(card)
    lines += ["", "### Recommendations", "",
              "Keep this dataset gated; do not combine it with the source dataset; read `RELEASE.md` for every "
              "attacker and figure before use.", "", "## Citation", ""]
    lines += ["```bibtex", metadata.citation.strip(), "```"] if metadata.citation else ["Not given by the publisher."]
    lines += ["", "## Dataset Card Contact", "", metadata.contact]
    return lines


def hub_from_release(release_dir, out_dir, metadata, rows_per_file=DEFAULT_ROWS_PER_FILE, overwrite=False,
                     progress=True):
    """A finished release made without ``--hub``, copied into ``out_dir`` as a Hub dataset folder: its
    published files (``private.PUBLISHED``, nothing else of the folder), then ``write_hub_folder``; the
    release is not touched. Returns the card (with ``hub``)."""
    release_dir, out_dir = os.path.abspath(os.fspath(release_dir)), os.path.abspath(os.fspath(out_dir))
    card = _read_card(release_dir)
    refuse_overlap(out_dir, [release_dir], output_is_dir=True)
    refuse_existing(out_dir, overwrite, what="output folder")
    tmp = temp_name(out_dir)
    os.makedirs(tmp)
    try:
        for name in PUBLISHED:
            source = os.path.join(release_dir, name)
            if os.path.isdir(source) and not os.path.islink(source):
                shutil.copytree(source, os.path.join(tmp, name), symlinks=False)
            elif os.path.isfile(source):
                shutil.copyfile(source, os.path.join(tmp, name))
        card["hub"] = write_hub_folder(tmp, card, metadata, rows_per_file, progress)
        write_card(tmp, card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    return card


def _read_card(release_dir):
    path = os.path.join(release_dir, CARD_JSON)
    try:
        with open(path, "rb") as f:
            card = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a finished release's card ({type(exc).__name__}); make one with "
                         "facemae release") from None
    if not isinstance(card, dict) or card.get("card_version") != CARD_VERSION:
        found = card.get("card_version") if isinstance(card, dict) else None
        raise InputError(f"{path}: card_version {found}, expected {CARD_VERSION}; release again with this version "
                         "(an older release folder may hold original faces)")
    return card


def write_hub_folder(folder, card, metadata, rows_per_file=DEFAULT_ROWS_PER_FILE, progress=True):
    """Add ``data/``, ``README.md`` and ``croissant.json`` to the release folder ``folder``; returns what the
    card records of them (the Parquet files, the card and the Croissant file, by path in the release)."""
    data_dir = os.path.join(folder, HUB_DATA_DIR)
    os.makedirs(data_dir, exist_ok=True)
    with FaceShard(folder) as shard:
        written = write_parquet_files(shard, data_dir, rows_per_file, overwrite=True, progress=progress)
    parquet = {"files": [os.path.join(HUB_DATA_DIR, name) for name in written["files"]]}
    parquet["bytes"] = sum(os.path.getsize(os.path.join(folder, p)) for p in parquet["files"]
                           if os.path.basename(p) != LAYOUT_NAME)
    with atomic_file(os.path.join(folder, HUB_CARD)) as f:
        f.write(render_hub_readme(card, metadata, parquet).encode())
    write_croissant(folder, card, metadata, parquet["files"])
    return {"parquet": parquet["files"], "card": HUB_CARD, "croissant": CROISSANT_JSON}
