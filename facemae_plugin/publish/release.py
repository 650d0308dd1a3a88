"""``facemae release``: a privatized shard that carries its measured leakage.

    convert IN_DIR  ->  audit the release against IN_DIR with each attacker  ->  verify each attacker
    on the ``.bin`` sets  ->  sample sheet  ->  the card (``card``), written last

Everything is made in ``OUT_DIR.partial`` beside ``OUT_DIR`` and renamed to ``OUT_DIR`` once the
card is in it, so a folder named ``OUT_DIR`` is always a finished, audited release. A rerun of a
stopped release resumes its conversion there (a finished conversion with the same provenance is
kept; the audits run again).
"""
import json
import os
import shutil
from dataclasses import dataclass

from ..core.errors import FaceMAEError
from ..core.files import OutputError, refuse_link, refuse_overlap, replace_dir, sha256_file, write_json
from ..convert.layout import read_json_or_none
from ..formats.shard import PROVENANCE_NAME, REC_NAME, FaceShard, lineage_problem
from .calibrate import calibrate
from .card import CARD_JSON, CARD_MD, attacker_entry, build_card, write_card

PARTIAL_SUFFIX = ".partial"
AUDIT_DIR = "audit"
SAMPLES_PNG = "samples.png"
SAMPLE_FACES = 8
RELEASE_FILES = (AUDIT_DIR, SAMPLES_PNG, CARD_JSON, CARD_MD)  # what a release adds to a conversion's folder


class ReleaseError(FaceMAEError):
    """A release that cannot be made as asked; the message names the file or option."""


@dataclass
class Attacker:
    """A recogniser that tries to re-identify the released faces: ``model.pt`` (with its network) or ``.onnx``."""

    model: str
    network: str = None


def release_dataset(in_dir, out_dir, privatizer, attackers, val_bins=(), training_set=None, quality=95,
                    batch_size=64, workers=None, device="cpu", overwrite=False, progress=True, command=None,
                    precision="fp32", search="auto", seed=0, target_leakage=None, privatizer_at=None,
                    converted=None, embedding_cache=None, compile=True):
    """Convert, audit and card ``in_dir`` into ``out_dir``; returns the card (also ``OUT_DIR/RELEASE.json``).

    ``attackers``: ``Attacker`` list (at least one). ``val_bins``: ``.bin`` sets each attacker is
    verified on. ``training_set``: the shard a FaceMAE reconstructor was trained on, for the
    look-alike audit (``evaluation.lookalikes``). ``target_leakage``: release at the weakest
    setting whose rank-1 instance leakage under the first attacker is at most this
    (``calibrate``); ``privatizer_at(value)`` builds the method at a setting, ``privatizer`` is
    then only checked. ``converted``: a finished ``facemae convert`` of ``in_dir`` with this very
    privatizer and settings, published instead of converting again (its provenance must match).
    ``embedding_cache``: as ``evaluation.audit.audit`` takes it. ``precision`` and ``compile``: how the
    attackers run (``evaluation.embed.load_embedder``).
    """
    from ..convert import convert
    from ..evaluation.samples import save_release_samples, spread_keys

    in_dir, out_dir = os.path.abspath(os.fspath(in_dir)), os.path.abspath(os.fspath(out_dir))
    staging = out_dir + PARTIAL_SUFFIX
    source = check_release_output(in_dir, out_dir, staging, overwrite)
    if privatizer.k != 1:
        raise ReleaseError(f"--k {privatizer.k}: a release is audited record by record against its source, so it "
                           "holds one image per original (--k 1)")
    trained = training_set_entry(training_set, source)
    reconstructor = reconstructor_entry(privatizer, source, trained)
    loaded = load_attackers(attackers, device, precision, compile)
    val_sets = load_val_sets(val_bins)
    calibration = None
    if target_leakage is not None:
        name, attacker, embedder, _ = loaded[0]
        calibration = calibrate(in_dir, os.path.dirname(out_dir), provenance_method(privatizer), privatizer_at,
                                embedder, name, target_leakage, seed=seed, device=device, batch_size=batch_size,
                                convert_settings=dict(quality=quality, batch_size=batch_size, workers=workers),
                                progress=progress, model=attacker.model)
        privatizer = privatizer_at(calibration["value"])

    provenance = convert_into(in_dir, staging, privatizer, overwrite, dict(
        quality=quality, batch_size=batch_size, workers=workers, progress=progress), convert, converted)
    entries = [audit_attacker(in_dir, staging, out_dir, attacker, val_sets, dict(
        batch_size=batch_size, device=device, progress=progress, search=search, seed=seed,
        training_set=training_set, embedding_cache=embedding_cache)) for attacker in loaded]
    save_release_samples(os.path.join(staging, SAMPLES_PNG), [("original", in_dir), ("released", staging)],
                         spread_keys(in_dir, SAMPLE_FACES))
    with FaceShard(staging) as released:
        released_entry = {"path": out_dir, "images": len(released), "idx_sha256": released.idx_sha256}
    if calibration is not None:  # the whole release, audited by the calibration's attacker
        calibration["released_instance_rank1"] = entries[0]["leakage"]["instance_rank1"]
    card = build_card(source, released_entry, provenance, reconstructor, entries, trained, calibration,
                      SAMPLES_PNG, command)
    write_card(staging, card)  # last: a folder with a card holds a finished release
    replace_dir(staging, out_dir)
    return card


# ----------------------------------------------------------------------------- checks, before any work


def check_release_output(in_dir, out_dir, staging, overwrite):
    """Refuse an ``OUT_DIR`` that exists (without ``overwrite``) or overlaps the input; returns the source entry."""
    with FaceShard(in_dir) as shard:
        refuse_overlap(out_dir, [shard.directory, shard.rec_path, shard.idx_path], output_is_dir=True)
        refuse_overlap(staging, [shard.directory, shard.rec_path, shard.idx_path], output_is_dir=True)
        source = {"path": in_dir, **shard.fingerprint()}
    for path in (out_dir, staging):
        refuse_link(path)
    if os.path.lexists(out_dir) and not overwrite:
        raise OutputError(f"{out_dir}: exists; pass --overwrite to replace it with a new release")
    return source


def training_set_entry(training_set, source):
    """The ``--training-set`` on the card; it must be another shard than the one released."""
    if training_set is None:
        return None
    with FaceShard(training_set) as shard:
        entry = {"path": os.path.abspath(os.fspath(training_set)), **shard.fingerprint()}
    problem = lineage_problem(source, training_set=entry)
    if problem is not None:
        raise ReleaseError(f"--training-set {problem}; give the shard the reconstructor was trained on")
    return entry


def provenance_method(privatizer):
    return privatizer.provenance()["method"]


def reconstructor_entry(privatizer, source, training_set):
    """A FaceMAE release's model on the card; refused when trained on the very people it releases."""
    if provenance_method(privatizer) != "facemae":
        return None
    trained_on = privatizer.model.extra_config.get("data")
    checkpoint = privatizer.checkpoint or {"path": None, "sha256": None}
    problem = lineage_problem(source, trained_on, training_set)
    if problem is not None:
        raise ReleaseError(f"{checkpoint['path']}: this reconstructor was {problem}")
    return {"checkpoint": checkpoint["path"], "sha256": checkpoint["sha256"], "trained_on": trained_on}


def load_attackers(attackers, device, precision, compile=True):
    """``[(name, attacker, embedder, sha256)]``: every model loaded (and named uniquely) before any work."""
    from ..evaluation.embed import load_embedder

    if not attackers:
        raise ReleaseError("a release needs at least one attacker (--attacker model.pt) to measure its leakage")
    loaded, names = [], set()
    for attacker in attackers:
        stem = attacker_stem(attacker.model)
        name, n = stem, 2
        while name in names:
            name, n = f"{stem}-{n}", n + 1
        names.add(name)
        embedder = load_embedder(attacker.model, attacker.network, device=device, precision=precision,
                                 compile=compile)
        loaded.append((name, attacker, embedder, sha256_file(attacker.model)))
    return loaded


def attacker_stem(model):
    """An attacker's name from its file: ``work_dirs/teacher/model.pt`` (arcface_torch's naming) -> ``teacher``."""
    stem = os.path.splitext(os.path.basename(model))[0]
    if stem == "model":
        stem = os.path.basename(os.path.dirname(os.path.abspath(model))) or stem
    return stem or "attacker"


def load_val_sets(val_bins):
    from ..formats.binfile import load_bin

    return [(os.path.abspath(os.fspath(path)), *load_bin(os.fspath(path))) for path in val_bins]


# ----------------------------------------------------------------------------- steps


def convert_into(in_dir, staging, privatizer, overwrite, settings, convert, converted=None):
    """The conversion in ``staging``: resumed, or kept when finished with the same provenance; returns it.

    ``overwrite`` lets the conversion replace shards of another conversion left in ``staging``;
    ``converted`` is a finished conversion to copy instead (see ``release_dataset``).
    """
    from ..convert import Conversion

    job = Conversion(in_dir, staging, privatizer, settings["quality"], settings["batch_size"], settings["workers"],
                     progress=False)
    expected = job.provenance()
    job.shard.close()
    finished = os.path.isfile(os.path.join(staging, REC_NAME))
    expected_json = json.loads(json.dumps(expected))
    if finished and read_json_or_none(os.path.join(staging, PROVENANCE_NAME)) == expected_json:
        return expected
    if converted is not None and not finished:
        copy_conversion(converted, staging, expected_json)
        return expected
    if finished:  # another method or setting: the release files of that attempt go with it
        for name in RELEASE_FILES:
            path = os.path.join(staging, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
    convert(in_dir, staging, privatizer, overwrite=finished or overwrite, **settings)
    return expected


def copy_conversion(converted, staging, expected):
    """The shard files of a finished conversion into ``staging``, ``train.rec`` last (under a temporary name)."""
    from ..core.files import atomic_path
    from ..formats.shard import IDX_NAME, PROPERTY_NAME

    found = read_json_or_none(os.path.join(converted, PROVENANCE_NAME))
    if found != expected:
        differ = sorted(k for k in set(expected) | set(found or {}) if (found or {}).get(k) != expected.get(k))
        raise ReleaseError(f"{converted}: not a conversion of this source with these settings (its "
                           f"{PROVENANCE_NAME} differs in {', '.join(differ) or 'everything'})")
    os.makedirs(staging, exist_ok=True)
    for name in (IDX_NAME, PROPERTY_NAME, PROVENANCE_NAME, REC_NAME):
        source = os.path.join(converted, name)
        if os.path.isfile(source):
            with atomic_path(os.path.join(staging, name)) as tmp:
                shutil.copyfile(source, tmp)


def audit_attacker(in_dir, staging, out_dir, loaded, val_sets, options):
    """One attacker's audit of the release in ``staging`` and its verification: its card entry."""
    from ..evaluation.audit import audit
    from ..evaluation.bin_report import verify_loaded

    name, attacker, embedder, digest = loaded
    audit_dir = os.path.join(staging, AUDIT_DIR, name)
    report = audit(in_dir, staging, embedder, out_dir=audit_dir, model=attacker.model, **options)
    verification = [verify_loaded(embedder, path, images, issame, options["batch_size"], options["device"],
                                  progress=options["progress"]) for path, images, issame in val_sets]
    relocate_audit(os.path.join(audit_dir, "audit.json"), staging, out_dir)
    return attacker_entry(name, attacker.model, digest, attacker.network, embedder.precision, verification, report,
                          os.path.join(AUDIT_DIR, name))


def relocate_audit(path, staging, final):
    """``audit.json`` names the paths it will have once ``staging`` becomes ``final``."""
    with open(path) as f:
        report = json.load(f)

    def moved(value):
        inside = isinstance(value, str) and (value == staging or value.startswith(staging + os.sep))
        return final + value[len(staging):] if inside else value

    for key in ("released", "report"):
        report[key] = moved(report[key])
    report["plots"] = {kind: moved(p) for kind, p in report["plots"].items()}
    if report.get("training_set"):
        report["training_set"]["dir"] = moved(report["training_set"]["dir"])
    write_json(path, report, sort_keys=False)
