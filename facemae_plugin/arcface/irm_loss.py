"""An ``irm`` block in an arcface_torch config: IRM added to ``PartialFC_V2``'s margin loss.

Joint training option: the loss becomes ``PartialFC_V2(embeddings, labels) + weight * IRM``,
where IRM compares the relation graph (pairwise cosines, ``losses.relation_graph``) a frozen
teacher gives the *original* images of the local batch with the one the trained backbone gives
their *reconstructions* (the embeddings train_v2 passes in). The originals come from the staged
loader's ``BatchRecord``, so IRM needs ``facemae.stage = "batch"``.

The class returned by ``irm_partial_fc`` subclasses the checkout's own ``PartialFC_V2``: same
constructor, parameters and ``state_dict`` (checkpoints and resume stay compatible); the teacher
is held outside the module tree, so it is neither saved nor handed to the optimizer. With weight
0 no subclass is made at all and arcface_torch runs exactly as shipped.
"""
import torch

from ..train.losses import irm_loss


class IRMTerm:
    """``weight * IRM(teacher(originals), embeddings)`` for the batch the loader produced last."""

    def __init__(self, teacher, record, weight, variant="mse", temperature=0.1):
        self.teacher = teacher.eval().requires_grad_(False)
        self.record = record
        self.weight = float(weight)
        self.variant = variant
        self.temperature = float(temperature)
        self.last_value = None  # the unweighted IRM of the last step, for logs and tests

    def __call__(self, embeddings):
        originals = self.record.originals
        if originals is None or originals.shape[0] != embeddings.shape[0]:
            got = None if originals is None else originals.shape[0]
            raise RuntimeError(f"IRM: the staged loader's last batch has {got} originals for "
                               f"{embeddings.shape[0]} embeddings; IRM needs facemae.stage='batch'")
        with torch.no_grad():
            target = self.teacher(originals.to(embeddings.device)).float()  # [B, D_teacher]
        value = irm_loss(target, embeddings.float(), self.variant, self.temperature)  # graphs [B, B]
        self.last_value = float(value.detach())
        return self.weight * value


def irm_partial_fc(partial_fc_class, irm_term):
    """A ``PartialFC_V2`` subclass whose loss adds ``irm_term(local_embeddings)``."""

    class PartialFCWithIRM(partial_fc_class):
        def forward(self, local_embeddings, local_labels):
            loss = super().forward(local_embeddings, local_labels)
            return loss + irm_term(local_embeddings)

    PartialFCWithIRM.__qualname__ = PartialFCWithIRM.__name__ = f"{partial_fc_class.__name__}WithIRM"
    return PartialFCWithIRM
