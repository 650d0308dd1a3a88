"""``croissant.json``: a release's Croissant 1.1 metadata (JSON-LD) with its Responsible-AI fields.

Core: the dataset's names, licence and creator; ``distribution``, every published data file with its
sha256 and the Parquet files as one file set; one record set (image, label) read from the Parquet.
RAI: how the data was collected and processed (the method and its settings, the seed as ``secret``
where it is), that faces are biometric data, the measured leakage of each attacker, worst case first,
intended uses, social impact, maintenance and whether the images are synthetic. Everything comes from
the release card, whose paths are already public: nothing names the publisher's machine or the secret.
"""
import os

from ..convert.parquet import SPLIT_GLOB
from ..core.files import atomic_file, json_text, sha256_file
from .card import THREAT_WORDS, method_text, percent
from .private import CROISSANT_JSON, HUB_DATA_DIR, SHARD_FILES

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "containedIn": "cr:containedIn", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract", "field": "cr:field", "fileObject": "cr:fileObject", "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet", "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path",
    "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated",
    "replace": "cr:replace", "samplingRate": "cr:samplingRate", "separator": "cr:separator", "source": "cr:source",
    "subField": "cr:subField", "transform": "cr:transform",
}
ENCODINGS = {".parquet": "application/x-parquet", ".rec": "application/octet-stream",
             ".idx": "text/plain", ".json": "application/json", "": "text/plain"}
TAGS = ("face-recognition", "privacy", "biometrics", "facemae", "insightface", "arcface")  # and the Hub card's
# FaceMAE draws new pixels with a model; the other methods edit the photo's own pixels.
SYNTHETIC_METHODS = ("facemae",)


def croissant(card, metadata, files):
    """The Croissant document as a dict; ``files``: ``{path in the release: (sha256, bytes)}`` of its data files."""
    name = metadata.pretty_name or card["released"]["name"]
    doc = {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": CONFORMS_TO, "name": name,
        "description": (f"Face images for face recognition, each made from one photo of a real person by "
                        f"{method_text(card)}; its measured linkage to the source photos is in "
                        f"rai:dataLimitations, worst case first."),
        "license": metadata.license_link or metadata.license, "version": "1.0.0",
        "creator": {"@type": "sc:Person", "name": metadata.contact}, "keywords": list(TAGS),
        "isBasedOn": list(metadata.source_datasets), "isLiveDataset": False,
        "distribution": [_file_object(path, *facts) for path, facts in sorted(files.items())] + [
            {"@type": "cr:FileSet", "@id": "parquet-files", "name": "parquet-files",
             "encodingFormat": ENCODINGS[".parquet"], "includes": f"{HUB_DATA_DIR}/{SPLIT_GLOB}"}],
        "recordSet": [_record_set()],
    }
    if metadata.citation:
        doc["citeAs"] = metadata.citation.strip()
    doc.update(rai_fields(card, metadata))
    return doc


def _file_id(path):
    return path.replace("/", "-")


def _file_object(path, sha256, size):
    ext = os.path.splitext(path)[1]
    return {"@type": "cr:FileObject", "@id": _file_id(path), "name": _file_id(path), "contentUrl": path,
            "encodingFormat": ENCODINGS.get(ext, "application/octet-stream"), "sha256": sha256,
            "contentSize": f"{size} B"}


def _record_set():
    def field(name, data_type, column, transform=None):
        source = {"fileSet": {"@id": "parquet-files"}, "extract": {"column": column}}
        if transform:
            source["transform"] = {"jsonPath": transform}
        return {"@type": "cr:Field", "@id": f"faces/{name}", "name": name, "dataType": data_type, "source": source}

    return {"@type": "cr:RecordSet", "@id": "faces", "name": "faces",
            "description": "One released face per record: its JPEG image and its identity label.",
            "field": [field("image", "sc:ImageObject", "image", transform="bytes"),
                      field("label", "sc:Integer", "label")]}


def rai_fields(card, metadata):
    """The Responsible-AI part: collection, processing, sensitive data, leakage (worst case first), uses."""
    method = method_text(card)
    worst = card["worst_case"]
    attackers = sorted(card["attackers"], key=lambda a: -(a["leakage"]["instance_rank1"] or 0))
    limitations = [f"Worst case over the attackers run: {THREAT_WORDS[t]}: {percent(worst[t]['value'])} rank-1, by "
                   f"the {worst[t]['attacker']} attacker." for t in ("instance", "reidentification")]
    limitations += [f"{a['name']} attacker ({a['kind']}): instance rank-1 {percent(a['leakage']['instance_rank1'])}, "
                    f"re-identification rank-1 {percent(a['leakage']['reid_rank1'])}." for a in attackers]
    limitations.append("Measured against these attackers only; a stronger attacker may link more. A set that trains "
                       "face recognition keeps its people recognisable.")
    source = card["source"]
    return {
        "rai:dataCollection": (f"Derived from the source dataset(s) {', '.join(metadata.source_datasets)}: "
                               f"{source['images']} photos of {source['identities']} people, each replaced by its "
                               f"version under {method}. No new photos were taken."),
        "rai:dataCollectionType": ["Secondary Data analysis", "Software Collection"],
        "rai:dataCollectionRawData": (f"The source shard, .idx sha256 {source['idx_sha256']} (layout "
                                      f"{source['layout']}); it is not part of this dataset."),
        "rai:dataPreprocessingProtocol": [
            f"Method: {method}; JPEG quality {card['jpeg_quality']}; seed {card['seed']}.",
            f"Made by facemae-plugin {card['facemae_plugin']}: {card['command']}",
            *([f"Reconstructor sha256 {card['reconstructor']['sha256']}."] if card["reconstructor"] else []),
            "Keys and identity labels are those of the source; only the image bytes changed."],
        "rai:dataAnnotationProtocol": (f"Identity labels come from the source dataset "
                                       f"({', '.join(metadata.annotations_creators)}); nothing was annotated anew."),
        "rai:personalSensitiveInformation": [
            "Faces are biometric data (special-category personal data under the GDPR, Art. 9).",
            "Every image was made from a photo of a real, identifiable person; the method reduces, but does not "
            "remove, what links it to that photo and person (see rai:dataLimitations)."],
        "rai:dataLimitations": limitations,
        "rai:dataBiases": ["The source dataset's demographic make-up is inherited; leakage has not been measured "
                           "per demographic group."],
        "rai:dataUseCases": ["Training and evaluating face recognition models.",
                             "Out of scope: identifying, re-identifying, tracking or profiling any person; linking "
                             "images to other photos or to the source dataset; surveillance."],
        "rai:dataSocialImpact": ("Lets face recognition be trained without publishing the source photos; misuse "
                                 "for identification would harm the people photographed, hence gated access."),
        "rai:dataReleaseMaintenancePlan": (f"Maintained by {metadata.contact}; a new release is a new folder with its "
                                           f"own card and measured leakage."),
        "rai:hasSyntheticData": card["method"]["method"] in SYNTHETIC_METHODS,
    }


def data_files(folder, parquet_files):
    """``{path in the release: (sha256, bytes)}`` of the shard files present and the Parquet files."""
    paths = [name for name in SHARD_FILES if os.path.isfile(os.path.join(folder, name))] + list(parquet_files)
    return {path: (sha256_file(os.path.join(folder, path)), os.path.getsize(os.path.join(folder, path)))
            for path in paths}


def write_croissant(folder, card, metadata, parquet_files):
    """``croissant.json`` in ``folder``, written whole; returns its path."""
    files = data_files(folder, parquet_files)
    doc = croissant(card, metadata, files)
    path = os.path.join(folder, CROISSANT_JSON)
    with atomic_file(path) as f:
        f.write(json_text(doc, sort_keys=False).encode())
    return path
