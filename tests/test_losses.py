"""Losses against numpy references and, where available, arcface_torch's margin loss."""
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facemae_plugin.train.losses import (IRMLoss, MarginSoftmax, combined_margin_logits, irm_loss,
                                   masked_mse, relation_graph)

ARCFACE = (1.0, 0.5, 0.0)
COSFACE = (1.0, 0.0, 0.4)


# ------------------------------------------------------------------ numpy references

def np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def np_margin_logits(cosine, labels, margins, scale):
    m1, m2, m3 = margins
    logits = cosine.copy()
    rows = np.arange(len(labels))
    theta = np.arccos(cosine[rows, labels])
    logits[rows, labels] = np.cos(m1 * theta + m2) - m3
    return logits * scale


def np_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def np_masked_mse(pred, target, mask, w_visible):
    per_patch = ((pred - target) ** 2).mean(axis=-1)
    masked = per_patch[mask == 1]
    visible = per_patch[mask == 0]
    loss = masked.mean() if masked.size else 0.0
    if w_visible:
        loss += w_visible * (visible.mean() if visible.size else 0.0)
    return loss


def np_relation_graph(emb):
    unit = np_normalize(emb)
    return unit @ unit.T


def np_irm(original, reconstructed, variant, temperature):
    g_o, g_r = np_relation_graph(original), np_relation_graph(reconstructed)
    if variant == "mse":
        return ((g_o - g_r) ** 2).mean()
    total = 0.0
    for i in range(len(g_o)):
        others = [j for j in range(len(g_o)) if j != i]
        p = np.exp(g_o[i, others] / temperature)
        p /= p.sum()
        q = np.exp(g_r[i, others] / temperature)
        q /= q.sum()
        total += (p * np.log(p / q)).sum()
    return total / len(g_o)


# ------------------------------------------------------------------------------ helpers

def _arcface_losses():
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("ARCFACE_TORCH_ROOT is not set: no arcface_torch checkout to compare with")
    spec = importlib.util.spec_from_file_location("_arcface_torch_losses",
                                                  os.path.join(root, "losses.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _embeddings_and_labels(seed, batch=6, dim=8, num_classes=5, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, dim, generator=generator, dtype=dtype)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return embeddings, labels


def _head(margins, seed=0, dim=8, num_classes=5, scale=64.0):
    torch.manual_seed(seed)
    head = MarginSoftmax(dim, num_classes, margin_list=margins, scale=scale)
    with torch.no_grad():  # larger centres than the default init, for well-spread cosines
        head.weight.normal_()
    return head


def _with_hard_target(head, embeddings, labels):
    """Point sample 0 almost opposite its class centre: theta + m2 > pi for ArcFace."""
    embeddings = embeddings.clone()
    embeddings[0] = -head.weight[labels[0]].detach() + 0.05 * embeddings[0]
    return embeddings


# ------------------------------------------------------------------------ margin softmax

@pytest.mark.parametrize("margins", [(1.0, 0.3, 0.2), (0.9, 0.4, 0.1)])
def test_general_combined_margin_matches_numpy(margins):
    generator = torch.Generator().manual_seed(5)
    cosine = torch.rand(6, 5, generator=generator, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    expected = np_margin_logits(cosine.numpy(), labels.numpy(), margins, 64.0)
    np.testing.assert_allclose(combined_margin_logits(cosine, labels, margins, 64.0).numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("margins", [(1.0, 0.3, 0.2), (0.9, 0.4, 0.1), (0.9, 0.0, 0.0), (1.0, 0.0, -0.1)])
def test_margin_softmax_refuses_margins_arcface_torch_would_train_differently(margins):
    with pytest.raises(ValueError, match=r"CombinedMarginLoss trains only ArcFace .* or CosFace"):
        MarginSoftmax(8, 5, margin_list=margins)


@pytest.mark.parametrize("margins", [ARCFACE, COSFACE, (1.0, 0.3, 0.0), (1.0, 0.0, 0.0)])
def test_margin_logits_and_loss_match_numpy(margins):
    head = _head(margins)
    embeddings, labels = _embeddings_and_labels(1)
    embeddings = _with_hard_target(head, embeddings, labels)
    cosine = np.clip(np_normalize(embeddings.numpy().astype(np.float64))
                     @ np_normalize(head.weight.detach().numpy().astype(np.float64)).T, -1, 1)
    theta_plus_m2 = np.arccos(cosine[0, labels[0]]) + margins[1]
    if margins == ARCFACE:
        assert theta_plus_m2 > np.pi  # the wrap-round case is exercised
    expected = np_margin_logits(cosine, labels.numpy(), margins, 64.0)
    with torch.no_grad():
        logits = head.logits(embeddings, labels)
        loss = head(embeddings, labels)
    np.testing.assert_allclose(logits.numpy(), expected, atol=2e-4)  # scale 64 * float32 eps
    np.testing.assert_allclose(loss.item(), np_cross_entropy(expected, labels.numpy()), rtol=1e-4)


def test_zero_margins_give_plain_scaled_softmax():
    head = _head((1.0, 0.0, 0.0), scale=10.0)
    embeddings, labels = _embeddings_and_labels(2)
    cosine = F.normalize(embeddings) @ F.normalize(head.weight).t()
    with torch.no_grad():
        assert torch.allclose(head.logits(embeddings, labels), 10.0 * cosine, atol=1e-5)


@pytest.mark.parametrize("margins", [ARCFACE, COSFACE])
def test_margin_matches_arcface_torch_combined_margin_loss(margins):
    arcface = _arcface_losses()
    generator = torch.Generator().manual_seed(3)
    cosine = torch.rand(6, 5, generator=generator) * 2 - 1  # [B, C]
    cosine[0, 0] = -0.97  # theta + m2 > pi for ArcFace
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    theirs = arcface.CombinedMarginLoss(64.0, *margins)(cosine.clone(), labels.view(-1, 1))
    ours = combined_margin_logits(cosine.clone(), labels, margins, 64.0)
    # 1e-5 on the cosine scale: arcface_torch round-trips every logit through arccos/cos,
    # which alone moves float32 values by ~1e-7 before the x64 scale.
    assert ((ours - theirs) / 64.0).abs().max() < 1e-5


@pytest.mark.parametrize("margins", [ARCFACE, COSFACE])
def test_margin_gradient_is_arcface_torchs_straight_through(margins):
    """d loss / d cosine = scale * (softmax(final logits) - one_hot) / B: the angular margin
    acts as a constant offset in the backward pass, as arcface_torch trains it."""
    generator = torch.Generator().manual_seed(7)
    cosine = (torch.rand(4, 6, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    labels = torch.tensor([5, 0, 2, 2])
    logits = combined_margin_logits(cosine, labels, margins, 30.0)
    F.cross_entropy(logits, labels).backward()
    final = np_margin_logits(cosine.detach().numpy(), labels.numpy(), margins, 30.0)
    probs = np.exp(final - final.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(4), labels.numpy()] -= 1.0
    np.testing.assert_allclose(cosine.grad.numpy(), 30.0 * probs / 4, atol=1e-10)


@pytest.mark.parametrize("margins", [ARCFACE, COSFACE])
def test_margin_softmax_gradients_match_arcface_torch(margins):
    """The whole head (normalise, clamp, margin, cross-entropy), as arcface_torch's partial FC
    runs it on one process, gives the same loss and gradients for embeddings and centres."""
    arcface = _arcface_losses()
    head = _head(margins, seed=4)
    embeddings, labels = _embeddings_and_labels(5)
    embeddings = _with_hard_target(head, embeddings, labels)

    emb_ours = embeddings.clone().requires_grad_(True)
    loss_ours = head(emb_ours, labels)
    loss_ours.backward()

    emb_theirs = embeddings.clone().requires_grad_(True)
    weight_theirs = head.weight.detach().clone().requires_grad_(True)
    cosine = F.linear(F.normalize(emb_theirs), F.normalize(weight_theirs)).clamp(-1, 1)
    margin = arcface.CombinedMarginLoss(64.0, *margins)
    loss_theirs = F.cross_entropy(margin(cosine, labels.view(-1, 1)), labels)
    loss_theirs.backward()

    assert abs(loss_ours.item() - loss_theirs.item()) < 1e-4
    assert torch.allclose(emb_ours.grad, emb_theirs.grad, atol=1e-5)
    assert torch.allclose(head.weight.grad, weight_theirs.grad, atol=1e-5)


def test_arcface_gradient_is_finite_at_cosine_one():
    """arccos has infinite slope at 1; the margin must not turn that into NaN gradients."""
    head = _head(ARCFACE, seed=6)
    labels = torch.tensor([2, 0])
    embeddings = head.weight.detach()[labels].clone().requires_grad_(True)  # cos(target) = 1
    head(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()


def test_margin_softmax_rejects_bad_inputs():
    head = MarginSoftmax(8, 5)
    with pytest.raises(ValueError, match=r"embeddings must be \[B, 8\]"):
        head(torch.randn(3, 7), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        head(torch.randn(3, 8), torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="three margins"):
        MarginSoftmax(8, 5, margin_list=(0.5, 0.0))


# ---------------------------------------------------------------------------- masked_mse

@pytest.mark.parametrize("w_visible", [0.0, 1.0, 0.3])
def test_masked_mse_matches_numpy(w_visible):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 2, 10, 12))
    mask = (rng.random((2, 10)) < 0.6).astype(np.float64)
    loss = masked_mse(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask),
                      w_visible=w_visible)
    assert loss.dim() == 0
    np.testing.assert_allclose(loss.item(), np_masked_mse(pred, target, mask, w_visible), rtol=1e-12)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
@pytest.mark.parametrize("w_visible", [0.0, 1.0])
def test_masked_mse_all_or_no_patches_masked_is_finite(ratio, w_visible):
    rng = np.random.default_rng(1)
    pred = torch.from_numpy(rng.normal(size=(2, 6, 4))).requires_grad_(True)
    target = torch.from_numpy(rng.normal(size=(2, 6, 4)))
    mask = torch.full((2, 6), ratio, dtype=torch.float64)
    loss = masked_mse(pred, target, mask, w_visible=w_visible)
    loss.backward()
    expected = np_masked_mse(pred.detach().numpy(), target.numpy(), mask.numpy(), w_visible)
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)


def test_masked_mse_bool_mask_and_gradient_only_on_masked_patches():
    pred = torch.randn(1, 4, 3, requires_grad=True)
    target = torch.randn(1, 4, 3)
    mask = torch.tensor([[True, False, True, False]])
    masked_mse(pred, target, mask, w_visible=0.0).backward()
    assert (pred.grad[0, [1, 3]] == 0).all() and (pred.grad[0, [0, 2]] != 0).all()


def test_masked_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"mask must be \[N, L\] = \[2, 4\]"):
        masked_mse(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.zeros(2, 5), w_visible=0.0)
    with pytest.raises(ValueError, match=r"pred and target must both be \[N, L, P\]"):
        masked_mse(torch.zeros(2, 4, 3), torch.zeros(2, 4, 2), torch.zeros(2, 4), w_visible=0.0)


# ----------------------------------------------------------------------------------- IRM

def test_relation_graph_matches_numpy():
    emb = np.random.default_rng(2).normal(size=(5, 7))
    graph = relation_graph(torch.from_numpy(emb))
    np.testing.assert_allclose(graph.numpy(), np_relation_graph(emb), atol=1e-12)
    np.testing.assert_allclose(np.diag(graph.numpy()), 1.0, atol=1e-12)


@pytest.mark.parametrize("variant,temperature", [("mse", 0.1), ("kl", 0.1), ("kl", 0.5)])
def test_irm_matches_numpy(variant, temperature):
    rng = np.random.default_rng(3)
    original, reconstructed = rng.normal(size=(2, 6, 16))
    loss = irm_loss(torch.from_numpy(original), torch.from_numpy(reconstructed),
                    variant=variant, temperature=temperature)
    expected = np_irm(original, reconstructed, variant, temperature)
    assert expected > 0
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-10)


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_irm_compares_graphs_of_embeddings_of_different_widths(variant):
    """Only the [B, B] relation graphs meet, so a 512-d teacher can guide a 128-d student."""
    rng = np.random.default_rng(9)
    original, reconstructed = rng.normal(size=(6, 512)), rng.normal(size=(6, 128))
    loss = irm_loss(torch.from_numpy(original), torch.from_numpy(reconstructed), variant=variant, temperature=0.2)
    np.testing.assert_allclose(loss.item(), np_irm(original, reconstructed, variant, 0.2), rtol=1e-10)


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_irm_gradcheck_on_reconstructions(variant):
    generator = torch.Generator().manual_seed(4)
    original = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    reconstructed = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda rec: irm_loss(original, rec, variant=variant, temperature=0.3), (reconstructed,))


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_irm_is_zero_for_identical_embeddings_and_scale_invariant(variant):
    emb = torch.randn(5, 8, dtype=torch.float64)
    assert irm_loss(emb, emb.clone(), variant=variant).item() == pytest.approx(0.0, abs=1e-12)
    # cosine relations ignore each embedding's norm
    scaled = emb * torch.rand(5, 1, dtype=torch.float64).add(0.5)
    assert irm_loss(emb, scaled, variant=variant).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_irm_original_side_gets_no_gradient(variant):
    original = torch.randn(4, 6, requires_grad=True)
    reconstructed = torch.randn(4, 6, requires_grad=True)
    irm_loss(original, reconstructed, variant=variant).backward()
    assert original.grad is None
    assert reconstructed.grad is not None and reconstructed.grad.abs().sum() > 0


def test_irm_rejects_bad_arguments():
    emb = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"unknown IRM variant 'l1'; expected one of mse, kl"):
        irm_loss(emb, emb, variant="l1")
    with pytest.raises(ValueError, match=r"\[B, D1\] and \[B, D2\] for one batch B"):
        irm_loss(emb, torch.randn(4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        irm_loss(emb[:1], emb[:1], variant="kl")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        irm_loss(emb, emb, variant="kl", temperature=0.0)


# ------------------------------------------------------------------------------- IRMLoss

def _tiny_teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.BatchNorm2d(4), nn.PReLU(4),
                         nn.Flatten(), nn.Linear(4 * 14 * 14, 16))


def _images(seed, batch=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_irm_module_value_matches_numpy_on_teacher_embeddings(variant):
    teacher = _tiny_teacher().eval()
    originals, reconstructions = _images(1), _images(2)
    with torch.no_grad():
        emb_o = teacher(originals).double().numpy()
        emb_r = teacher(reconstructions).double().numpy()
    loss = IRMLoss(_tiny_teacher(), variant=variant, temperature=0.2)(originals, reconstructions)
    np.testing.assert_allclose(loss.item(), np_irm(emb_o, emb_r, variant, 0.2), rtol=1e-4)


def test_irm_module_gradient_reaches_reconstructions_only():
    teacher = _tiny_teacher()
    module = IRMLoss(teacher)
    originals = _images(3).requires_grad_(True)
    reconstructions = _images(4).requires_grad_(True)
    module(originals, reconstructions).backward()
    assert reconstructions.grad is not None and reconstructions.grad.abs().sum() > 0
    assert originals.grad is None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_irm_module_teacher_stays_in_eval_under_parent_train():
    teacher = _tiny_teacher()
    parent = nn.ModuleDict({"irm": IRMLoss(teacher), "student": nn.Linear(2, 2)})
    parent.train()
    assert parent["student"].training and parent["irm"].training
    assert not teacher.training and not teacher[1].training
    stats_before = teacher[1].running_mean.clone()
    parent["irm"](_images(5), _images(6))
    assert torch.equal(teacher[1].running_mean, stats_before)  # BN statistics did not move


def test_irm_module_zero_when_reconstructions_equal_originals():
    module = IRMLoss(_tiny_teacher(), variant="kl")
    images = _images(7)
    assert module(images, images.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_irm_module_with_recogniser_teacher():
    from facemae_plugin.models.backbones import get_backbone
    module = IRMLoss(get_backbone("mbf"))
    reconstructions = _images(9, batch=2).requires_grad_(True)
    loss = module(_images(8, batch=2), reconstructions)
    loss.backward()
    assert torch.isfinite(loss) and reconstructions.grad.abs().sum() > 0


def test_irm_module_rejects_unknown_variant_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown IRM variant 'cosine'"):
        IRMLoss(_tiny_teacher(), variant="cosine")
    with pytest.raises(ValueError, match="same shape"):
        IRMLoss(_tiny_teacher())(_images(1, batch=2), _images(2, batch=3))
