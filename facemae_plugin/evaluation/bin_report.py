"""`facemae verify`: the numbers arcface_torch's eval/verification.py `test()` reports, for a .bin.

`test()` embeds every image and its horizontal flip, then
  XNorm    = mean L2 norm over *all* un-normalised embeddings, images and flips taken
             separately (4P vectors for P pairs), before the two are added;
  accuracy = 10-fold accuracy on normalise(image + flip) embeddings ("accuracy-flip"),
             reported as mean and population std over the folds.
Its TAR@FAR (`calculate_val`) crashes on current scipy; `verification.ten_fold_tar_at_far` computes it robustly
(see its docstring for the threshold rule).
"""
import os

import numpy as np

from ..core.errors import UsageError
from ..formats.binfile import load_bin
from .embed import decode_faces, embed_plain_and_flipped, embedding_job
from .plots import plot_roc
from .verification import l2_normalize, pair_distances, ten_fold_accuracy, ten_fold_tar_at_far

FAR_TARGET = 1e-3


def verification_report(embeddings, flip_embeddings, issame, nrof_folds=10, far_target=FAR_TARGET):
    """test()'s numbers from embeddings of the 2P images ([2P, D]) and of their flips ([2P, D]).

    Pair i is rows 2i and 2i+1. Returns a dict of plain floats/lists (JSON-ready); `tpr`/`fpr`
    are the 10-fold mean ROC over arcface_torch's thresholds 0..4 step 0.01.
    """
    images = np.asarray(embeddings, dtype=np.float64)  # [2P, D]
    flips = np.asarray(flip_embeddings, dtype=np.float64)  # [2P, D]
    if images.ndim != 2 or images.shape != flips.shape or len(images) % 2:
        raise ValueError(f"expected image and flip embeddings of one shape [2P, D], got "
                         f"{images.shape} and {flips.shape}")
    # XNorm: test() walks both embedding lists row by row, so flips count as separate vectors.
    xnorm = float(np.mean(np.linalg.norm(np.concatenate([images, flips]), axis=1)))
    combined = l2_normalize(images + flips)  # [2P, D]
    first, second = combined[0::2], combined[1::2]  # [P, D] each
    roc = ten_fold_accuracy(first, second, issame, nrof_folds)
    val = ten_fold_tar_at_far(pair_distances(first, second), issame, far_target, nrof_folds)
    return {
        "pairs": int(len(first)),
        "accuracy_flip": roc.accuracy_mean,
        "accuracy_std": roc.accuracy_std,
        "xnorm": xnorm,
        "tar_at_far": val.tar_mean,
        "tar_std": val.tar_std,
        "far": val.far_mean,
        "far_target": val.far_target,
        "best_thresholds": roc.best_thresholds.tolist(),
        "tpr": roc.tpr.tolist(),
        "fpr": roc.fpr.tolist(),
    }


def embed_images_and_flips(embedder, images, batch_size=64, device="cpu", progress=False, where="bin"):
    """Encoded images -> (embeddings [N, D], flip embeddings [N, D]) float64, un-normalised.

    Images are decoded one batch at a time, so a large .bin never sits in memory as floats.
    """
    from tqdm import tqdm

    embedder.eval()
    plain, flipped = [], []
    with embedding_job(embedder, 2 * len(images)), tqdm(total=len(images), desc=f"verify {os.path.basename(where)}",
                                                         unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = decode_faces(images, where, start, start + batch_size)  # [B, 3, 112, 112]
            batch_plain, batch_flipped = embed_plain_and_flipped(embedder, batch, device)
            plain.append(batch_plain)
            flipped.append(batch_flipped)
            bar.update(len(batch))
    return np.concatenate(plain), np.concatenate(flipped)


def verify_bin(embedder, bin_path, batch_size=64, device="cpu", roc_dir=None, progress=False,
               nrof_folds=10, far_target=FAR_TARGET):
    """Verify one .bin with a recogniser (torch module or OnnxEmbedder); returns the report dict.

    With `roc_dir`, the ROC curve is written to `roc_dir/<name>_roc.png` and its path returned
    under `roc_png`.
    """
    bin_path = os.fspath(bin_path)
    images, issame = load_bin(bin_path)
    return verify_loaded(embedder, bin_path, images, issame, batch_size, device, roc_dir,
                         progress, nrof_folds, far_target)


def verify_loaded(embedder, bin_path, images, issame, batch_size=64, device="cpu", roc_dir=None,
                  progress=False, nrof_folds=10, far_target=FAR_TARGET):
    """`verify_bin` for a .bin already read with `load_bin` (the CLI reads every file first)."""
    if batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size}")
    name = os.path.splitext(os.path.basename(bin_path))[0]
    embeddings, flips = embed_images_and_flips(embedder, images, batch_size, device, progress, bin_path)
    report = {"name": name, "path": bin_path,
              **verification_report(embeddings, flips, issame, nrof_folds, far_target)}
    if roc_dir is not None:
        report["roc_png"] = plot_roc(
            report["fpr"], report["tpr"], os.path.join(roc_dir, f"{name}_roc.png"),
            title=f"{name}: accuracy {report['accuracy_flip'] * 100:.2f}%",
            operating_point=(report["far"], report["tar_at_far"]))
    return report
