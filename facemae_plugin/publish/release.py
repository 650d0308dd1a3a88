"""``facemae release``: a privatized shard that carries its measured leakage.

    convert IN_DIR  ->  audit the release against IN_DIR with every attacker (the pixel attacker,
    the verbatim matcher, each recogniser, ``adaptive``, ``reapply``)  ->  verify each recogniser on
    the ``.bin`` sets  ->  sample sheets  ->  the card (``card``), led by the worst case, written last

The release is made in ``OUT_DIR.partial`` beside ``OUT_DIR`` and renamed to ``OUT_DIR`` once the
card is in it, so a folder named ``OUT_DIR`` is always a finished, audited release. A rerun of a
stopped release resumes its conversion there (a finished conversion with the same provenance is
kept; the audits run again). What shows an original (audits, sample sheets, the attackers' work)
is made in ``OUT_DIR.private`` (``private``); the release holds only ``private.PUBLISHED``. Nothing
in the release names a path of the publisher's machine or a secret seed (``convert.secret``).
"""
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional

from ..core.errors import FaceMAEError
from ..core.files import OutputError, private_path, refuse_link, refuse_overlap, replace_dir, sha256_file
from ..convert.layout import read_json_or_none
from ..convert.settings import ConvertSettings
from ..formats.shard import PROVENANCE_NAME, REC_NAME, FaceShard, lineage_problem
from .calibrate import CalibrationOptions, calibrate
from .card import attacker_entry, build_card, public_paths, write_card
from .hub import write_hub_folder
from .adaptive import ADAPTIVE, ADAPTIVE_DIR, RECIPE as ADAPTIVE_RECIPE, train_adaptive_attackers
from .private import FIGURES_DIR, SHARD_FILES, private_workspace, sweep
from .reapply import reapply_attackers

PARTIAL_SUFFIX = ".partial"
AUDIT_DIR = "audit"  # in OUT_DIR.private: every attacker's audit.json, plots and leak examples
REAPPLY_DIR = ".reapply"  # in OUT_DIR.private: the reapply attacker's gallery while the audits run
SAMPLES_PNG = "samples.png"  # in OUT_DIR.private: originals above their released versions
SAMPLE_FACES = 8


class ReleaseError(FaceMAEError):
    """A release that cannot be made as asked; the message names the file or option."""


@dataclass(frozen=True)
class ReleaseOptions:
    """How a release is made and judged, besides its source, output, method and attackers; built
    once where the request arrives (the command line, the demo) and passed whole.

    ``convert``: how it is encoded (its batch size also embeds). ``val_bins``: ``.bin`` sets each
    recogniser is verified on. ``training_set``: the shard a FaceMAE reconstructor was trained on
    (other people than the release's), for the look-alike audit (``evaluation.lookalikes``) and,
    unless ``adaptive`` is False, to train the adaptive attacker on (``publish.adaptive``;
    calibration runs without it); ``adaptive_from_attackers``: also fine-tune each recogniser attacker
    into an adaptive one on that set (``publish.adaptive``). ``attacker_set``: other people's faces
    that neither the release nor a FaceMAE reconstructor holds, which the adaptive attackers train on
    instead of ``training_set``: their privatized faces are of unseen people, as the released ones
    are, where reconstructions of the reconstructor's own training faces are another distribution.
    ``target_reid``: with it, that setting's worst-case re-identification is bounded too.
    ``target_leakage``: release at the weakest setting whose
    worst-case rank-1 instance leakage is at most this (``calibrate``). ``seed``: the audit's and
    the calibration's draws (impostor samples, the calibration subset), not the privatizer's.
    ``precision`` and ``compile``: how the recognisers run (``evaluation.embed.load_embedder``);
    ``search``: the audit's (``evaluation.audit``). ``command``: the command line the card records.
    """

    convert: ConvertSettings = field(default_factory=ConvertSettings)
    val_bins: tuple = ()
    training_set: Optional[str] = None
    attacker_set: Optional[str] = None
    target_leakage: Optional[float] = None
    target_reid: Optional[float] = None
    reapply: bool = True
    adaptive: bool = True
    adaptive_from_attackers: bool = False
    adaptive_epochs: int = ADAPTIVE_RECIPE["num_epoch"]
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    search: str = "auto"
    compile: bool = True
    overwrite: bool = False
    progress: bool = True
    command: Optional[str] = None
    hub: Optional[object] = None  # ``publish.hub.HubMetadata``: also make the release a Hub dataset folder

    @property
    def audit(self):
        """The ``AuditOptions`` every attacker's audit of the release runs with."""
        from ..evaluation.audit import AuditOptions

        return AuditOptions(batch_size=self.convert.batch_size, device=self.device, search=self.search,
                            seed=self.seed, progress=self.progress)


@dataclass
class Attacker:
    """A recogniser that tries to re-identify the released faces: ``model.pt`` (with its network) or ``.onnx``."""

    model: str
    network: str = None


def release_dataset(in_dir, out_dir, privatizer, attackers, options=ReleaseOptions(), privatizer_at=None,
                    converted=None, embedding_cache=None):
    """Convert, audit and card ``in_dir`` into ``out_dir``; returns the card (also ``OUT_DIR/RELEASE.json``).

    ``attackers``: ``Attacker`` recognisers (the pixel attacker always runs, ``reapply`` unless
    ``options.reapply`` is False); ``options``: ``ReleaseOptions``. With ``options.target_leakage``,
    ``privatizer_at(value)`` builds the method at a setting and ``privatizer`` is only checked.
    ``converted``: a finished ``facemae convert`` of ``in_dir`` with this very privatizer and
    settings, published instead of converting again (its provenance must match).
    ``embedding_cache``: as ``evaluation.audit.audit`` takes it.
    """
    from ..convert import convert
    from ..evaluation.samples import save_release_samples, spread_keys

    in_dir, out_dir = os.path.abspath(os.fspath(in_dir)), os.path.abspath(os.fspath(out_dir))
    staging, private = out_dir + PARTIAL_SUFFIX, private_path(out_dir)
    source = check_release_output(in_dir, out_dir, staging, private, options.overwrite)
    if privatizer.k != 1:
        raise ReleaseError(f"--k {privatizer.k}: a release is audited record by record against its source, so it "
                           "holds one image per original (--k 1)")
    trained = training_set_entry(options.training_set, source)
    reconstructor = reconstructor_entry(privatizer, source, trained)
    adaptive_data = adaptive_data_entry(options, source, trained, reconstructor)
    check_adaptive_starts(attackers, adaptive_data, options)
    suite, recognisers = load_attackers(attackers, options.device, options.precision, options.compile)
    val_sets = load_val_sets(options.val_bins)
    calibration = None
    with private_workspace(private, staging):  # the audits run again on a resume: nothing earlier is kept
        if options.target_leakage is not None:
            calibration = calibrate(in_dir, private, provenance_method(privatizer), privatizer_at, suite,
                                    CalibrationOptions(options.target_leakage, options.convert, seed=options.seed,
                                                       device=options.device, progress=options.progress,
                                                       reapply=options.reapply, target_reid=options.target_reid))
            privatizer = privatizer_at(calibration["value"])

    provenance = convert_into(in_dir, staging, privatizer, options, convert, converted)
    adaptive, started_from = [], {}
    if adaptive_data is not None and options.adaptive:
        adaptive, started_from = adaptive_attackers(options.attacker_set or options.training_set, private,
                                                    privatizer, recognisers, options)
    summary = audit_release(in_dir, staging, private, privatizer, suite, options, embedding_cache, adaptive)
    sweep(staging, keep=SHARD_FILES)  # no lock, scratch or file of a stopped run is published
    figures = publish_figures(summary["reports"], staging)
    entries = [attacker_entry(name, recognisers.get(name), entry, summary["reports"][name],
                              verify_attacker(recognisers.get(name), val_sets, options),
                              figures[name], started_from.get(name))
               for name, entry in summary["attackers"].items()]
    save_release_samples(os.path.join(private, SAMPLES_PNG), [("original", in_dir), ("released", staging)],
                         spread_keys(in_dir, SAMPLE_FACES))
    with FaceShard(staging) as released:
        released_entry = {"name": os.path.basename(out_dir), "images": len(released), "idx_sha256": released.idx_sha256}
    if calibration is not None:  # the whole release, audited by every attacker
        calibration["released_instance_rank1"] = summary["worst_case"]["instance"]["value"]
        calibration["released_reid_rank1"] = summary["worst_case"]["reidentification"]["value"]
        refuse_above_target(calibration, summary["worst_case"], staging)
    card = build_card(source, released_entry, provenance, reconstructor, summary["worst_case"], entries, trained,
                      calibration, options.command, seed_public=privatizer.seed_public,
                      reapply=options.reapply, adaptive=adaptive_state(adaptive_data, options.adaptive))
    card["adaptive_data"] = adaptive_data if options.adaptive else None
    card = public_paths(card, staging, out_dir)
    if options.hub is not None:
        card["hub"] = write_hub_folder(staging, card, options.hub, progress=options.progress)
    write_card(staging, card)  # last: a folder with a card is a finished release
    replace_dir(staging, out_dir)
    return card


# ----------------------------------------------------------------------------- checks, before any work


def check_release_output(in_dir, out_dir, staging, private, overwrite):
    """Refuse an ``OUT_DIR`` that exists (without ``overwrite``) or overlaps the input; returns the source entry."""
    with FaceShard(in_dir) as shard:
        for folder in (out_dir, staging, private):
            refuse_overlap(folder, [shard.directory, shard.rec_path, shard.idx_path], output_is_dir=True)
        source = {"path": in_dir, **shard.fingerprint()}
    for path in (out_dir, staging, private):
        refuse_link(path)
    if os.path.lexists(out_dir) and not overwrite:
        raise OutputError(f"{out_dir}: exists; pass --overwrite to replace it with a new release")
    return source


def refuse_above_target(calibration, worst_case, staging):
    """A calibrated release is published only if the whole of it meets the targets under every attacker,
    the adaptive one included: that one is trained after calibration, on the chosen setting."""
    for threat, flag, target in (("instance", "--target-leakage", calibration["target"]),
                                 ("reidentification", "--target-reid", calibration.get("target_reid"))):
        worst = worst_case[threat]
        if target is None or worst["value"] is None or worst["value"] <= target:
            continue
        words = "instance" if threat == "instance" else "re-identification"
        raise ReleaseError(
            f"{flag} {target:g}: calibrated to {calibration['param']}={calibration['value']:g} against "
            f"{', '.join(calibration['attackers'])}, the whole release leaks {worst['value'] * 100:.2f}% rank-1 "
            f"{words} under the {worst['attacker']} attacker; no release written (the work is kept in {staging}); "
            "ask for a lower target")


def check_adaptive_starts(attackers, adaptive_data, options):
    """``--adaptive-from-attackers`` needs faces to train on (``adaptive_data_entry``) and recognisers it can
    fine-tune (``model.pt``)."""
    if not options.adaptive_from_attackers:
        return
    if adaptive_data is None or not options.adaptive:
        raise ReleaseError("--adaptive-from-attackers: the adaptive attackers train on --attacker-set C_DIR or "
                           "--training-set A_DIR (and not with --no-adaptive)")
    for attacker in attackers:
        if attacker.network is None:
            raise ReleaseError(f"--adaptive-from-attackers: {attacker.model} is an ONNX model; only a model.pt "
                               "with its --attacker-network can be fine-tuned")


def shard_entry(path):
    """``{"path", **fingerprint}`` of the shard at ``path``: how the card and the lineage checks name it."""
    with FaceShard(path) as shard:
        return {"path": os.path.abspath(os.fspath(path)), **shard.fingerprint()}


def training_set_entry(training_set, source):
    """The ``--training-set`` on the card; it must be another shard than the one released."""
    if training_set is None:
        return None
    entry = shard_entry(training_set)
    problem = lineage_problem(source, training_set=entry)
    if problem is not None:
        raise ReleaseError(f"--training-set {problem}; give the shard the reconstructor was trained on")
    return entry


def adaptive_data_entry(options, source, trained, reconstructor):
    """What the adaptive attackers train on, for the card: ``--attacker-set`` (checked to hold other
    people than the release and the reconstructor), else ``--training-set``, else None; ``seen_by_
    reconstructor`` says whether a FaceMAE model learnt from those very faces."""
    if options.attacker_set is None:
        if trained is None:
            return None
        return {"set": "training set", "name": os.path.basename(trained["path"]),
                "seen_by_reconstructor": reconstructor is not None, "epochs": options.adaptive_epochs}
    entry = shard_entry(options.attacker_set)
    problem = lineage_problem(source, training_set=entry)
    learnt = ((reconstructor or {}).get("trained_on") or {}).get("idx_sha256")
    if problem is None and learnt == entry["idx_sha256"]:
        problem = f"{entry['path']} is what the reconstructor was trained on, not people it never saw"
    if problem is not None:
        raise ReleaseError(f"--attacker-set {problem}; give faces of other people")
    return {"set": "attacker set", "name": os.path.basename(entry["path"]), "idx_sha256": entry["idx_sha256"],
            "images": entry["images"], "identities": entry["identities"], "seen_by_reconstructor": False,
            "epochs": options.adaptive_epochs}


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
    """``(suite, recognisers)``: the model-free attackers and every recogniser loaded (named uniquely) before any
    work, as ``SuiteAttacker``s; ``recognisers`` maps a name to ``(Attacker, embedder, sha256)``."""
    from ..evaluation.suite import load_suite

    suite = load_suite([(a.model, a.network) for a in attackers], device, precision, compile)
    recognisers = {loaded.name: (attacker, loaded.embedder, sha256_file(attacker.model))
                   for loaded, attacker in zip([s for s in suite if s.kind == "recogniser"], attackers)}
    return suite, recognisers


def load_val_sets(val_bins):
    from ..formats.binfile import load_bin

    return [(os.path.abspath(os.fspath(path)), *load_bin(os.fspath(path))) for path in val_bins]


# ----------------------------------------------------------------------------- steps


def convert_into(in_dir, staging, privatizer, options, convert, converted=None):
    """The conversion in ``staging``: resumed, or kept when finished with the same provenance; returns it.

    ``options.overwrite`` lets the conversion replace shards of another conversion left in ``staging``;
    ``converted`` is a finished conversion to copy instead (see ``release_dataset``).
    """
    from ..convert import Conversion

    job = Conversion(in_dir, staging, privatizer, options.convert, progress=False)
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
        sweep(staging, keep=SHARD_FILES)
    convert(in_dir, staging, privatizer, options.convert, overwrite=finished or options.overwrite,
            progress=options.progress)
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


def adaptive_state(adaptive_data, adaptive):
    """What the card says of the adaptive attacker (``adaptive_data``: ``adaptive_data_entry``)."""
    if adaptive_data is None:
        return "no training set"
    return "trained" if adaptive else "skipped"


def adaptive_attackers(training_set, private, privatizer, recognisers, options):
    """The adaptive attackers of this release (``ReleaseOptions``), trained in ``private/.adaptive``: one
    from random weights, then with ``options.adaptive_from_attackers`` one fine-tuned from each of
    ``recognisers`` (``load_attackers``' map), named ``adaptive-<its name>``. Returns ``(SuiteAttacker``s,
    ``{name: the recogniser it started from}``)."""
    from ..evaluation.embed import load_embedder
    from ..evaluation.suite import SuiteAttacker

    started_from = {f"{ADAPTIVE}-{name}": name for name in recognisers} if options.adaptive_from_attackers else {}
    names = [ADAPTIVE, *started_from]
    starts = [None] + [(recognisers[name][0].model, recognisers[name][0].network) for name in started_from.values()]
    models = train_adaptive_attackers(training_set, os.path.join(private, ADAPTIVE_DIR), privatizer, options.convert,
                                      options.device, options.progress, starts=starts,
                                      recipe={"num_epoch": options.adaptive_epochs})
    # model=None: the files go with .adaptive before the card, so nothing names or caches them
    suite = [SuiteAttacker(name, load_embedder(model, network, device=options.device, precision=options.precision,
                                               compile=options.compile), ADAPTIVE, model=None)
             for name, (model, network) in zip(names, models)]
    return suite, started_from


def audit_release(in_dir, staging, private, privatizer, suite, options, embedding_cache=None, adaptive=()):
    """Every attacker's audit of the release in ``staging`` (``evaluation.suite``), the ``adaptive``
    ``SuiteAttacker``s too, written under ``private/audit``: the suite's record, with each attacker's
    ``audit.json`` under ``reports``."""
    from ..evaluation.suite import audit_suite

    attackers = list(suite) + list(adaptive or ())
    gallery = os.path.join(private, REAPPLY_DIR)
    if options.reapply:
        attackers += reapply_attackers(in_dir, gallery, privatizer, options.convert, released=staging,
                                       searchers=suite)
    try:
        summary = audit_suite(in_dir, staging, attackers, os.path.join(private, AUDIT_DIR), options.audit,
                              training_set=options.training_set, embedding_cache=embedding_cache)
    finally:
        shutil.rmtree(gallery, ignore_errors=True)
        shutil.rmtree(os.path.join(private, ADAPTIVE_DIR), ignore_errors=True)
    reports = {}
    for name, entry in summary["attackers"].items():
        with open(entry["report"]) as f:
            reports[name] = json.load(f)
    return {**summary, "reports": reports}


PUBLIC_PLOTS = {"histogram": "similarity", "training_set": "training-set"}  # aggregates: no face in them


def publish_figures(reports, staging):
    """Each attacker's aggregate plots copied into ``staging/figures`` as ``<attacker>-<plot>.png``;
    returns ``{attacker: {plot: path relative to the release}}``. Leak examples stay private."""
    os.makedirs(os.path.join(staging, FIGURES_DIR))  # the staging holds the shard alone here (``sweep``)
    figures = {}
    for name, report in reports.items():
        figures[name] = {}
        for plot, stem in PUBLIC_PLOTS.items():
            if plot in report["plots"]:
                figures[name][plot] = os.path.join(FIGURES_DIR, f"{name}-{stem}.png")
                shutil.copyfile(report["plots"][plot], os.path.join(staging, figures[name][plot]))
    return figures


def verify_attacker(recogniser, val_sets, options):
    """A recogniser's accuracy on each ``.bin`` set; none for the attackers that are not recognisers."""
    from ..evaluation.bin_report import verify_loaded

    if recogniser is None:
        return []
    _, embedder, _ = recogniser
    return [verify_loaded(embedder, path, images, issame, options.convert.batch_size, options.device,
                          progress=options.progress)
            for path, images, issame in val_sets]
