"""Who tries to find a released face's source, and the worst case over them.

An attacker turns released and original images into vectors that the audit searches
(``retrieval``): one search and one set of metrics for every attacker. The kinds, weakest to
strongest knowledge (docs/privacy.md):

  pixels      no model: grey pixels at 28x28, mean-centred, so the search ranks by correlation.
              Blur, pixelation and partial masks keep the coarse face; this alone finds most of
              their sources. Always run.
  verbatim    no model: grey pixels at full resolution in 4x4 cells, each cell centred and scaled
              to unit length, flat cells dropped, so a released face scores by how many of its
              cells reappear in a photo: what a method keeps verbatim (the visible patches of
              ``masked`` and FaceMAE ``paste``) finds its source, where a thumbnail averages it
              away with the fill. Always run.
  recognisers a face recogniser (``.pt`` or ``.onnx``): the teacher, an informed one, any the user names.
  adaptive    a recogniser trained on other people's faces beside their privatized twins, so it has
              learnt to see through the method (``publish.adaptive``).
  reapply     the attacker knows the method and every published parameter: the originals are
              privatized the same way (with a fresh seed where the release's is secret) and searched
              with the pixel attacker (``publish.reapply``).

Two threats are measured per attacker: ``instance`` (the released image's own source photo is the
top match: membership) and ``reidentification`` (the source held out, another photo of the same
person is the top match). A release is judged by the worst case over the attackers run.
"""
import os

import torch
import torch.nn.functional as F

PIXELS = "pixels"
VERBATIM = "verbatim"
PIXEL_SIDE = 28  # 112 / 4: whole 4x4 blocks, so the pooling is a plain block mean
VERBATIM_CELL = 4  # divides every patch size a method masks with on 112x112 faces (8, 16, 28, 56)
FLAT_CELL = 2.0 / 255 * 2  # grey std in the normalised space below which a cell is flat (2 grey levels)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey, as cv2.cvtColor(..., COLOR_RGB2GRAY) weighs it
# threat -> the audit metric that measures it (rank-1: the attacker's single best guess)
THREATS = {"instance": "instance_rank1", "reidentification": "reid_rank1"}


class PixelAttacker(torch.nn.Module):
    """The model-free attacker: ``[N, 3, H, W]`` normalised RGB -> ``[N, 784]`` mean-centred grey pixels.

    Embedded without the flip a recogniser's audit adds: a flip-summed pixel vector would throw
    away the asymmetric half of the face, which is evidence an attacker keeps.
    """

    flip = False
    precision = "fp32"
    runtime = PIXELS

    def __init__(self, side=PIXEL_SIDE):
        super().__init__()
        self.side = side
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))

    def forward(self, images):  # [N, 3, H, W]
        grey = (images.float() * self.luma).sum(1, keepdim=True)  # [N, 1, H, W]
        small = F.adaptive_avg_pool2d(grey, self.side).flatten(1)  # [N, side * side]
        return small - small.mean(1, keepdim=True)  # [N, side * side]; the audit scales rows to unit length


class VerbatimAttacker(torch.nn.Module):
    """The model-free attacker on what a method keeps: ``[N, 3, H, W]`` normalised RGB -> ``[N, H * W]``.

    Grey pixels in ``cell`` x ``cell`` cells; each cell centred and scaled to unit length, or zero
    when flat (a grey fill, a pixelation block, a plain background: nothing of a photo). The inner
    product of two faces is then the sum over cells textured in both of the cells' correlations,
    so a cell copied from the source adds about 1 and any other cell adds its chance correlation.
    """

    flip = False
    precision = "fp32"
    runtime = VERBATIM

    def __init__(self, cell=VERBATIM_CELL, flat=FLAT_CELL):
        super().__init__()
        self.cell, self.flat = cell, flat
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))

    def forward(self, images):  # [N, 3, H, W]
        grey = (images.float() * self.luma).sum(1)  # [N, H, W]
        n, h, w = grey.shape
        c = self.cell
        cells = grey.reshape(n, h // c, c, w // c, c).transpose(2, 3).reshape(n, -1, c * c)  # [N, L, c*c]
        cells = cells - cells.mean(-1, keepdim=True)
        norms = cells.norm(dim=-1, keepdim=True)  # [N, L, 1]
        textured = norms > self.flat * c  # a cell's std above ``flat``: norm = std * sqrt(c * c)
        cells = torch.where(textured, cells / norms.clamp_min(1e-12), torch.zeros_like(cells))
        return cells.flatten(1)  # [N, L * c * c]


def attacker_stem(model):
    """An attacker's name from its file: ``work_dirs/teacher/model.pt`` (arcface_torch's naming) -> ``teacher``."""
    stem = os.path.splitext(os.path.basename(os.fspath(model)))[0]
    if stem == "model":
        stem = os.path.basename(os.path.dirname(os.path.abspath(model))) or stem
    return stem or "attacker"


def unique_names(names):
    """``names`` with repeats numbered (``teacher``, ``teacher-2``): one audit folder each."""
    seen, out = set(), []
    for stem in names:
        name, n = stem, 2
        while name in seen:
            name, n = f"{stem}-{n}", n + 1
        seen.add(name)
        out.append(name)
    return out


def worst_case(leakage):
    """Per threat, the largest rank-1 over the attackers: ``{threat: {"attacker", "metric", "value"}}``.

    ``leakage``: ``{attacker name: {metric: value}}`` in the order they ran; a tie goes to the first.
    A threat no attacker measured (``None`` everywhere) has ``value`` None and no attacker.
    """
    worst = {}
    for threat, metric in THREATS.items():
        best = {"attacker": None, "metric": metric, "value": None}
        for name, figures in leakage.items():
            value = figures.get(metric)
            if value is not None and (best["value"] is None or value > best["value"]):
                best = {"attacker": name, "metric": metric, "value": value}
        worst[threat] = best
    return worst


def worst_text(worst):
    """One line: ``instance 99.50% (pixels), re-identification 80.00% (teacher)``."""
    labels = {"instance": "instance", "reidentification": "re-identification"}
    parts = []
    for threat, entry in worst.items():
        value = "n/a" if entry["value"] is None else f"{entry['value'] * 100:.2f}%"
        parts.append(f"{labels.get(threat, threat)} {value}" + (f" ({entry['attacker']})" if entry["attacker"] else ""))
    return ", ".join(parts)
