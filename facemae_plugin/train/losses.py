"""Training losses: margin softmax for recognisers, masked pixel loss and IRM for FaceMAE.

- `MarginSoftmax`: arcface_torch's combined-margin softmax (ArcFace / CosFace) for the
  plugin's own single-process training loop.
- `masked_mse`: the MAE pixel loss over masked (and optionally visible) patches.
- `relation_graph`, `irm_loss`, `IRMLoss`: instance relation matching, which makes the
  reconstructions of a batch keep the identity structure a frozen recogniser sees in the
  originals.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, InputError

IRM_VARIANTS = ("mse", "kl")


# ------------------------------------------------------------------------ margin softmax

def combined_margin_logits(cosine: torch.Tensor, labels: torch.Tensor,
                           margin_list: Sequence[float], scale: float) -> torch.Tensor:
    """Scaled logits with the margin `cos(m1 * theta + m2) - m3` on each row's target class.

    cosine: [B, C] in [-1, 1]; labels: [B] class indices. Returns [B, C].

    This is InsightFace's combined margin for any (m1, m2, m3). arcface_torch's
    CombinedMarginLoss agrees on the two settings its configs use, ArcFace (1, m2, 0) and
    CosFace (1, 0, m3), and nowhere else: it applies only `- m3` whenever m3 > 0 (m1 and m2
    ignored) and raises for m1 != 1 with m3 == 0. `MarginSoftmax` therefore accepts only
    those two settings (`check_arcface_margins`). With m2 == 0 and m1 == 1 the target
    becomes `cos - m3` exactly; otherwise theta = arccos(cos) is shifted with no special
    case for `m1 * theta + m2 > pi` (the cosine wraps round, as in arcface_torch).
    Gradients follow arcface_torch: the angular part is a constant offset, so
    d(logit)/d(cos) = scale, which avoids arccos's infinite slope at cos = +-1.
    """
    m1, m2, m3 = (float(m) for m in margin_list)
    labels = labels.long()
    rows = torch.arange(cosine.size(0), device=cosine.device)
    target = cosine[rows, labels]  # [B]
    if m1 == 1.0 and m2 == 0.0:
        margined = target - m3
    else:
        angular = torch.cos(m1 * torch.arccos(target.detach()) + m2) - m3  # [B]
        margined = target + (angular - target.detach())  # value of `angular`, gradient of `target`
    logits = cosine.index_put((rows, labels), margined)  # [B, C]
    return logits * scale


def check_arcface_margins(margin_list):
    """Refuse a margin_list on which arcface_torch's CombinedMarginLoss would train something else."""
    if len(margin_list) != 3:
        raise ConfigError(f"margin_list must hold three margins (m1, m2, m3), got {margin_list!r}")
    m1, m2, m3 = (float(m) for m in margin_list)
    if m1 != 1.0 or (m3 > 0 and m2 != 0.0) or m3 < 0:
        raise ConfigError(f"margin_list={tuple(margin_list)!r}: arcface_torch's CombinedMarginLoss trains only "
                          f"ArcFace (1.0, m2, 0.0) or CosFace (1.0, 0.0, m3 > 0) (with m3 > 0 it ignores m1 and "
                          f"m2, with m1 != 1 it fails); use one of those so both loops train the same loss")


class MarginSoftmax(nn.Module):
    """Margin-based softmax cross-entropy over all classes (arcface_torch's PartialFC with
    sample_rate 1 on one process, using CombinedMarginLoss).

    margin_list: ArcFace (1.0, m2, 0.0), e.g. (1.0, 0.5, 0.0), or CosFace (1.0, 0.0, m3), e.g.
    (1.0, 0.0, 0.4): the settings on which this head and arcface_torch's give the same logits.
    `forward(embeddings [B, D], labels [B]) -> scalar` mean cross-entropy.
    """

    def __init__(self, embedding_size: int, num_classes: int,
                 margin_list: Sequence[float] = (1.0, 0.5, 0.0), scale: float = 64.0):
        super().__init__()
        check_arcface_margins(margin_list)
        self.margin_list = tuple(float(m) for m in margin_list)
        self.scale = float(scale)
        # Class centres, initialised as arcface_torch's partial FC does.
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits after the margin, [B, num_classes]."""
        self._check_inputs(embeddings, labels)
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))  # [B, C]
        cosine = cosine.clamp(-1.0, 1.0)  # rounding can leave |cos| slightly above 1
        return combined_margin_logits(cosine, labels, self.margin_list, self.scale)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels.long())

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        num_classes, embedding_size = self.weight.shape
        if embeddings.dim() != 2 or embeddings.size(1) != embedding_size:
            raise ValueError(f"embeddings must be [B, {embedding_size}], got {list(embeddings.shape)}")
        if labels.shape != (embeddings.size(0),):
            raise ValueError(f"labels must be [B] = [{embeddings.size(0)}], got {list(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise InputError(f"labels must lie in [0, {num_classes}) (config.num_classes), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")


# --------------------------------------------------------------------------- pixel loss

def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
               w_visible: float) -> torch.Tensor:
    """MAE pixel loss: mean per-patch MSE over masked patches + w_visible * that over visible ones.

    ``w_visible`` has no default here: its one default is the recipe's (``config.mae.w_visible``);
    0 gives MAE's masked-only loss.

    pred, target: [N, L, P] patchified pixels; mask: [N, L], 1 = masked (hidden from the encoder).
    Each mean runs over all patches of its kind in the batch; a kind with no patches (mask
    ratio 0 or 1) contributes 0. Returns a scalar tensor.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [N, L, P], got {list(pred.shape)} "
                         f"and {list(target.shape)}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be [N, L] = {list(pred.shape[:2])}, got {list(mask.shape)}")
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # [N, L]
    masked = mask.to(per_patch.dtype)  # [N, L]
    loss = _mean_where(per_patch, masked)
    if w_visible:
        loss = loss + w_visible * _mean_where(per_patch, 1.0 - masked)
    return loss


def _mean_where(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over entries with weight 1; 0 (not NaN) when there are none."""
    # With no selected entries the numerator is 0 too, so clamping the count gives 0.
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------- IRM

def relation_graph(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair in the batch: [B, D] -> [B, B]."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [B, D], got {list(embeddings.shape)}")
    unit = F.normalize(embeddings, dim=1)  # [B, D]
    return unit @ unit.t()  # [B, B]


def _off_diagonal(graph: torch.Tensor) -> torch.Tensor:
    """Drop each row's self-similarity: [B, B] -> [B, B - 1]."""
    size = graph.size(0)
    keep = ~torch.eye(size, dtype=torch.bool, device=graph.device)
    return graph[keep].view(size, size - 1)


def irm_loss(teacher_original: torch.Tensor, teacher_reconstructed: torch.Tensor,
             variant: str = "mse", temperature: float = 0.1) -> torch.Tensor:
    """Instance relation matching between the originals' and reconstructions' relation graphs.

    teacher_original [B, D1], teacher_reconstructed [B, D2]: frozen embeddings of the original
    images and of their reconstructions (same order). Only the [B, B] graphs are compared, so the
    two widths may differ (an arcface hook's teacher need not match the student). The original side is a
    fixed target (detached); gradients reach only `teacher_reconstructed`.
    variant "mse": mean over all B*B entries of the squared graph difference.
    variant "kl": each row's off-diagonal similarities / temperature -> softmax;
    KL(original || reconstructed) per row, averaged over rows (needs B >= 2).
    Returns a scalar; 0 when the reconstructions' embeddings equal the originals'.
    """
    if variant not in IRM_VARIANTS:
        raise ValueError(f"unknown IRM variant {variant!r}; expected one of {', '.join(IRM_VARIANTS)}")
    if teacher_original.dim() != 2 or teacher_reconstructed.dim() != 2 or \
            teacher_original.size(0) != teacher_reconstructed.size(0):
        raise ValueError(f"embeddings must be [B, D1] and [B, D2] for one batch B, got "
                         f"{list(teacher_original.shape)} and {list(teacher_reconstructed.shape)}")
    graph_original = relation_graph(teacher_original.detach())  # [B, B]
    graph_reconstructed = relation_graph(teacher_reconstructed)  # [B, B]
    if variant == "mse":
        return ((graph_reconstructed - graph_original) ** 2).mean()
    return _relation_kl(graph_original, graph_reconstructed, temperature)


def _relation_kl(graph_original: torch.Tensor, graph_reconstructed: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    if not temperature > 0:
        raise ValueError(f"IRM temperature must be > 0, got {temperature}")
    if graph_original.size(0) < 2:
        raise ValueError(f"IRM variant 'kl' needs a batch of at least 2, got {graph_original.size(0)}")
    log_p = F.log_softmax(_off_diagonal(graph_original) / temperature, dim=1)  # [B, B-1]
    log_q = F.log_softmax(_off_diagonal(graph_reconstructed) / temperature, dim=1)  # [B, B-1]
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


class IRMLoss(nn.Module):
    """IRM with a frozen recogniser as teacher: `forward(originals, reconstructions) -> scalar`.

    originals, reconstructions: [B, 3, 112, 112] in the teacher's input space. The teacher
    is frozen (no parameter gets a gradient) and stays in eval mode even when a parent
    module calls `.train()`, so its BatchNorm statistics never move; gradients flow through
    it to `reconstructions`. It is a registered submodule, so `.to(device)` moves it.
    """

    def __init__(self, teacher: nn.Module, variant: str = "mse", temperature: float = 0.1):
        super().__init__()
        if variant not in IRM_VARIANTS:
            raise ValueError(f"unknown IRM variant {variant!r}; expected one of {', '.join(IRM_VARIANTS)}")
        if not temperature > 0:
            raise ValueError(f"IRM temperature must be > 0, got {temperature}")
        self.teacher = teacher.requires_grad_(False).eval()
        self.variant = variant
        self.temperature = float(temperature)

    def train(self, mode: bool = True) -> "IRMLoss":
        super().train(mode)
        self.teacher.eval()  # the teacher is a fixed measuring instrument
        return self

    def forward(self, originals: torch.Tensor, reconstructions: torch.Tensor,
                embedded_original: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embedded_original`` [B, D]: the teacher's embeddings of ``originals`` where the caller
        has them already (``train.teacher_cache``); computed here otherwise."""
        if originals.shape != reconstructions.shape:
            raise ValueError(f"originals and reconstructions must have the same shape, got "
                             f"{list(originals.shape)} and {list(reconstructions.shape)}")
        if embedded_original is None:
            with torch.no_grad():
                embedded_original = self.teacher(originals)  # [B, D], a fixed target
        embedded_reconstructed = self.teacher(reconstructions)  # [B, D]
        return irm_loss(embedded_original, embedded_reconstructed, self.variant, self.temperature)
