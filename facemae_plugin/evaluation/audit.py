"""`facemae audit`: how much a released shard leaks its originals, measured by face retrieval.

The released shard holds the same keys and labels as the original (a reconstruction, blur...
of it, record by record). An attacker's recogniser embeds both (image + flip, as
arcface_torch evaluates); every released image queries the whole original gallery
(`retrieval.evaluate_retrieval`). Written to ``out_dir``:

  audit.json                  the metrics, the inputs, the most/least leaking records
  similarity_histogram.png    source-pair vs impostor cosines, with the TAR@FAR threshold
  leak_examples.png           original | released of the most and least leaking records
  training_set_histogram.png  with a training set: nearest identity-centre cosines (``lookalikes``)
"""
import functools
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import FaceMAEError
from ..core.files import make_private_dir, private_path, sha256_file, write_json
from ..data.dataset import normalise
from ..formats.shard import PROVENANCE_NAME, FaceShard, lineage_problem
from .embed import embed_for_search, embedding_job, passes_per_image
from .attackers import attacker_stem
from .embedding_store import EmbeddingCache, EmbeddingRows, ScratchFolder
from .lookalikes import training_set_leakage
from .plots import new_figure, save_figure
from .retrieval import SearchOptions, evaluate_retrieval, source_rows, unit_rows

AUDIT_JSON = "audit.json"
HISTOGRAM_PNG = "similarity_histogram.png"
EXAMPLES_PNG = "leak_examples.png"
TRAINING_SET_PNG = "training_set_histogram.png"


class AuditInputError(FaceMAEError):
    """The two shards are not an original and its record-by-record release."""


@dataclass(frozen=True)
class AuditOptions(SearchOptions):
    """How an audit embeds, searches and reports, the same for every attacker; built once where the
    request arrives and passed whole. The search's options are ``SearchOptions``' (the audit hands
    itself to ``retrieval.evaluate_retrieval``); besides them ``batch_size`` and ``device`` embed,
    ``embedding_dtype`` is the embeddings on disk (``embedding_store``), ``examples`` the leak
    examples each end of the ranking, and ``plots=False`` writes only ``audit.json`` (the figures
    take seconds; the metrics do not need them).
    """

    batch_size: int = 64
    embedding_dtype: str = "float32"
    examples: int = 8
    plots: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise AuditInputError(f"batch size must be a positive integer, got {self.batch_size}")


# ----------------------------------------------------------------------------- inputs


def check_same_records(original, released):
    """Both shards must hold the same image keys; the first key missing on either side is named."""
    missing = np.setdiff1d(original.image_keys, released.image_keys)  # ascending
    if len(missing):
        raise AuditInputError(f"{released.rec_path}: key {missing[0]} of the original {original.rec_path} "
                              f"is missing ({len(missing)} key(s) missing); expected the same keys")
    extra = np.setdiff1d(released.image_keys, original.image_keys)
    if len(extra):
        raise AuditInputError(f"{released.rec_path}: key {extra[0]} is not in the original "
                              f"{original.rec_path} ({len(extra)} extra key(s)); expected the same keys")


def check_release(original_dir, released_dir, training_set=None):
    """Fail fast, before any model loads, when the two shards do not hold the same keys."""
    with FaceShard(original_dir) as original, FaceShard(released_dir) as released:
        check_same_records(original, released)
        check_provenance(original, released)
        if training_set is not None:
            check_training_set(original, training_set)
        return len(original)


def check_training_set(original, training_dir):
    """The reconstructor's training set must be another shard than the original: its people are others."""
    with FaceShard(training_dir) as training:
        problem = lineage_problem({"path": original.directory, **original.fingerprint()},
                                  training_set={"path": training.directory, **training.fingerprint()})
    if problem is not None:
        raise AuditInputError(f"--training-set {problem}; give the shard the reconstructor was trained on")


def check_provenance(original, released):
    """A release that names its source (``facemae_provenance.json``) must name this original.

    Two shards can hold the same keys and labels and still be different people; auditing a
    release against the wrong original would report no leakage at all.
    """
    path = os.path.join(released.directory, PROVENANCE_NAME)
    if not os.path.isfile(path):
        return  # made by another tool: nothing to compare
    try:
        with open(path, "rb") as f:
            recorded = json.loads(f.read().decode("utf-8"))["source"]["idx_sha256"]
    except (ValueError, KeyError, TypeError):
        raise AuditInputError(f"{path}: unreadable provenance (expected JSON with source.idx_sha256)") from None
    actual = original.idx_sha256
    if recorded != actual:
        raise AuditInputError(f"{path}: this release was made from a shard whose .idx has sha256 "
                              f"{str(recorded)[:12]}..., but {original.idx_path} has {actual[:12]}...; audit a "
                              f"release against the original it was made from")


def check_same_labels(original, original_labels, released, released_labels):
    """A record must keep its identity label in the release; the first differing key is named."""
    expected = original_labels[source_rows(released.image_keys, original.image_keys)]  # [N] in released order
    differs = np.flatnonzero(expected != released_labels)
    if len(differs):
        i = differs[0]
        raise AuditInputError(f"{released.rec_path} key {released.image_keys[i]}: label {released_labels[i]}, but the "
                              f"original {original.rec_path} labels it {expected[i]}; expected the same labels")


def embed_shard(shard, embedder, rows, batch_size=64, device="cpu", progress=False, desc="embed"):
    """Every image of ``shard`` in ``image_keys`` order (``embed_for_search``) as unit rows appended to ``rows``.

    ``rows`` is an ``EmbeddingRows`` of ``len(shard)`` rows; returns ``(its memory map [N, D], labels
    [N] int64)``. Images are decoded and embeddings written one batch at a time, so neither the
    images nor the embeddings of a large shard sit in memory.
    """
    from tqdm import tqdm

    keys = shard.image_keys
    labels = np.empty(len(keys), np.int64)
    with embedding_job(embedder, passes_per_image(embedder) * len(keys)):
        for start in tqdm(range(0, len(keys), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = []
            for i in range(start, min(start + batch_size, len(keys))):
                labels[i], payload = shard.read(keys[i])
                batch.append(normalise(shard.decode(keys[i], payload)))  # [3, H, W] RGB
            embeddings = embed_for_search(embedder, torch.stack(batch), batch_size, device)  # [B, D] float64
            rows.append(unit_rows(embeddings.astype(np.float32)).numpy())
    return rows.finish(), labels


# ----------------------------------------------------------------------------- the job


class _Embedder:
    """Shards embedded by one model for one audit: into its scratch folder, or through a cache."""

    def __init__(self, embedder, scratch, options, cache=None, model=None):
        self.embedder, self.scratch, self.batch_size = embedder, scratch, options.batch_size
        self.device, self.progress, self.dtype = options.device, options.progress, options.embedding_dtype
        usable = cache is not None and model is not None and os.path.isfile(model)
        self.cache = EmbeddingCache(cache) if usable else None
        self.model_sha256 = sha256_file(model) if usable else None

    def __call__(self, shard, name, cached=False):
        """``(rows [N, D], labels [N])`` of ``shard``; ``cached`` shards are looked up and kept."""
        key = None
        if cached and self.cache is not None:
            key = self.cache.key(shard.idx_sha256, self.model_sha256, self.dtype,
                                 getattr(self.embedder, "precision", None), getattr(self.embedder, "runtime", None),
                                 self.batch_size)
            found = self.cache.lookup(key)
            if found is not None:
                return found
        path = self.cache.rows_path(key) if key else os.path.join(self.scratch, f"{name}.npy")
        rows, labels = embed_shard(shard, self.embedder, EmbeddingRows(path, len(shard), self.dtype),
                                   self.batch_size, self.device, self.progress, name)
        if key:
            self.cache.commit(key, labels)
        return rows, labels


def _embed_and_search(original, released, embed, options):
    """Both shards embedded (``_Embedder``), then the search (``AuditOptions``): ``(RetrievalReport,
    query labels, query rows [Q, D], gallery rows [G, D])``."""
    gallery, gallery_labels = embed(original, "original", cached=True)
    query, query_labels = embed(released, "released")
    check_same_labels(original, gallery_labels, released, released_labels=query_labels)
    result = evaluate_retrieval(query, gallery, released.image_keys, original.image_keys, query_labels,
                                gallery_labels, options, normalised=True, gallery_copies=copies_of(original))
    return result, query_labels, query, gallery


def copies_of(shard):
    """``[N]`` int64, one value per distinct image payload of ``shard`` (``image_keys`` order): records
    holding byte-identical photos share it, so an attacker who finds a copy of a source has found it.
    Every attacker of a suite searches the same originals: their payloads are read once."""
    stat = os.stat(shard.rec_path)
    return _copies(shard.rec_path, shard.idx_sha256, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _copies(rec_path, idx_sha256, rec_size, rec_mtime_ns):
    """``copies_of`` for the shard of ``rec_path``, keyed by what identifies its bytes (read-only)."""
    import hashlib

    with FaceShard(rec_path) as shard:
        digests = b"".join(hashlib.blake2b(shard.read(key)[1], digest_size=8).digest() for key in shard.image_keys)
    copies = np.unique(np.frombuffer(digests, "<i8"), return_inverse=True)[1].astype(np.int64)
    copies.setflags(write=False)
    return copies


def _training_set_leakage(training_dir, query, gallery, source_index, embed, options):
    """Look-alikes of ``training_dir``'s identities among the released and (paired) original images."""
    with FaceShard(training_dir) as training:
        train, train_labels = embed(training, "training set", cached=True)
    return training_set_leakage(query, gallery, train, train_labels, original_rows=source_index,
                                far_target=options.far_target, max_impostors=options.max_impostors,
                                seed=options.seed)


def audit(original_dir, released_dir, embedder, options=AuditOptions(), out_dir=None, model=None, attacker=None,
          training_set=None, embedding_cache=None):
    """Audit ``released_dir`` against ``original_dir`` with ``embedder`` and ``options``
    (``AuditOptions``); returns the report dict.

    ``embedder``: a torch recogniser or ``OnnxEmbedder`` (see ``embed.load_embedder``); ``model``
    only names it in the report. ``out_dir`` (it shows original faces: leak examples) defaults to
    ``<released_dir>.private/audit``, never inside the release; embeddings live on disk there while
    the audit runs. ``training_set``: the shard the release's reconstructor was
    trained on; adds ``training_set``, its look-alikes among the released and the original images
    (``lookalikes``).
    ``embedding_cache``: a folder where the original's and the training set's embeddings are kept
    for later audits by the same ``model`` file (``embedding_store.EmbeddingCache``).
    ``attacker``: the attacker's name in the report (``attackers``); the model's file stem by default.
    """
    out_dir = os.fspath(out_dir) if out_dir is not None else default_audit_dir(released_dir)
    attacker = attacker or (attacker_stem(model) if model else "attacker")
    with FaceShard(original_dir) as original, FaceShard(released_dir) as released:
        check_same_records(original, released)
        if training_set is not None:
            check_training_set(original, training_set)
        with ScratchFolder(out_dir) as scratch:
            embed = _Embedder(embedder, scratch, options, embedding_cache, model)
            result, query_labels, query, gallery = _embed_and_search(original, released, embed, options)
            lookalikes = None if training_set is None else _training_set_leakage(
                training_set, query, gallery, result.source_index, embed, options)
        most, least = leak_ranking(result, released.image_keys, original.image_keys, query_labels, options.examples)
        os.makedirs(out_dir, exist_ok=True)
        figures = {}
        if options.plots:
            figures["histogram"] = plot_similarity_histogram(result, os.path.join(out_dir, HISTOGRAM_PNG),
                                                             attacker)
            figures["examples"] = save_leak_examples(original, released, most, least,
                                                     os.path.join(out_dir, EXAMPLES_PNG))
            if lookalikes is not None:
                figures["training_set"] = plot_training_set_histogram(*lookalikes,
                                                                      os.path.join(out_dir, TRAINING_SET_PNG))
    report = {"attacker": attacker, "original": os.fspath(original_dir), "released": os.fspath(released_dir),
              "model": model,
              "device": str(options.device), "precision": getattr(embedder, "precision", None),
              "runtime": getattr(embedder, "runtime", None), **result.metrics,
              "most_leaking": most, "least_leaking": least,
              "training_set": None if lookalikes is None else {"dir": os.fspath(training_set), **lookalikes[0]},
              "plots": figures, "report": os.path.join(out_dir, AUDIT_JSON)}
    write_json(report["report"], report, sort_keys=False, default=str)
    return report


def default_audit_dir(released_dir):
    """``RELEASED.private/audit``: an audit shows original faces, so it goes beside the release, private."""
    return os.path.join(make_private_dir(private_path(released_dir)), "audit")


def leak_ranking(result, query_keys, gallery_keys, query_labels, count):
    """The ``count`` queries whose source cosine is highest and lowest, as JSON-ready records."""
    scores = result.search.source_scores.astype(np.float64)  # [Q]
    order = np.lexsort((np.asarray(query_keys), -scores))  # most leaking first; key breaks ties
    count = min(count, len(order))

    def record(i):
        top1 = int(result.search.top_indices[i, 0])
        return {"key": int(query_keys[i]), "label": int(query_labels[i]), "source_cosine": float(scores[i]),
                "source_rank": int(result.search.source_ranks[i]), "top1_key": int(gallery_keys[top1])}

    most = [record(i) for i in order[:count]]
    least = [record(i) for i in order[::-1][:count]]
    return most, least


# ----------------------------------------------------------------------------- outputs


def plot_similarity_histogram(result, path, attacker="attacker"):
    """Density histograms of source-pair and impostor cosines, the TAR@FAR threshold marked."""
    metrics = result.metrics
    figure = new_figure(6, 4)
    axes = figure.add_subplot(1, 1, 1)
    bins = _shared_bins(result.search.source_scores, result.impostor_scores)
    impostor_label = "impostor pairs" + ("" if metrics["impostors_exhaustive"] else " (sampled)")
    if len(result.impostor_scores):
        axes.hist(result.impostor_scores, bins=bins, density=True, alpha=0.55, color="C0",
                  label=f"{impostor_label}, n={len(result.impostor_scores)}")
    axes.hist(result.search.source_scores, bins=bins, density=True, alpha=0.55, color="C3",
              label=f"released vs own source, n={len(result.search.source_scores)}")
    if metrics["threshold"] is not None and np.isfinite(metrics["threshold"]):
        axes.axvline(metrics["threshold"], color="k", ls="--", lw=1,
                     label=f"FAR {metrics['far_target']:g}: TAR {metrics['tar_at_far']:.3f}")
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    reid = "n/a" if metrics["reid_rank1"] is None else f"{metrics['reid_rank1'] * 100:.1f}%"
    axes.set_title(f"{attacker}: instance rank-1 {metrics['instance_rank1'] * 100:.1f}%, "
                   f"re-identification rank-1 {reid}", fontsize=10)
    axes.legend(loc="upper left", fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_training_set_histogram(metrics, released_scores, original_scores, path):
    """Nearest training-identity cosines of released and original images, the look-alike threshold marked."""
    figure = new_figure(6, 4)
    axes = figure.add_subplot(1, 1, 1)
    bins = _shared_bins(released_scores, original_scores)
    axes.hist(original_scores, bins=bins, density=True, alpha=0.55, color="C0",
              label=f"original images: {metrics['original_fraction'] * 100:.1f}% above")
    axes.hist(released_scores, bins=bins, density=True, alpha=0.55, color="C3",
              label=f"released images: {metrics['released_fraction'] * 100:.1f}% above")
    axes.axvline(metrics["threshold"], color="k", ls="--", lw=1, label=f"FAR {metrics['far_target']:g} threshold")
    axes.set_xlabel(f"cosine to the nearest of {metrics['training_identities']} training identities")
    axes.set_ylabel("density")
    verdict = "flagged" if metrics["flagged"] else "not flagged"
    axes.set_title(f"look-alikes of the training set: McNemar z {metrics['mcnemar_z']:.1f} ({verdict})", fontsize=10)
    axes.legend(loc="upper left", fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def _shared_bins(*samples, count=60):
    """Bin edges spanning all samples, so both histograms share bins; [-1, 1] if there is no spread."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples])
    low, high = (values.min(), values.max()) if len(values) else (-1.0, 1.0)
    if high - low < 1e-6:
        low, high = low - 0.01, high + 0.01
    return np.linspace(low, high, count + 1)


def save_leak_examples(original, released, most, least, path, columns=4):
    """One panel per record: original | released side by side, titled with cosine and rank."""
    sections = [("most leaking", most), ("least leaking", least)]
    rows_per_section = [max(1, -(-len(records) // columns)) for _, records in sections]
    figure = new_figure(2.6 * columns, 1.75 * sum(rows_per_section) + 0.4)
    grid = figure.add_gridspec(sum(rows_per_section), columns)
    first_row = 0
    for (title, records), rows in zip(sections, rows_per_section):
        for i, record in enumerate(records):
            axes = figure.add_subplot(grid[first_row + i // columns, i % columns])
            pair = np.concatenate([original.decode(record["key"]), released.decode(record["key"])], axis=1)
            axes.imshow(pair)  # [H, 2W, 3] RGB
            axes.set_title(f"{title}: key {record['key']}\ncos {record['source_cosine']:.3f}  "
                           f"rank {record['source_rank']}", fontsize=7)
            axes.axis("off")
        first_row += rows
    figure.suptitle("original | released", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)
