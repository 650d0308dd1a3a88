"""Embeddings of verification images: each image plus its horizontal flip, as arcface_torch evaluates."""
import numpy as np
import torch

from ..data import normalise
from ..recordio import decode_image


def decode_bin_images(images, where="bin"):
    """Encoded images -> normalised tensor ``[N, 3, H, W]`` (BGR bytes decoded to RGB)."""
    decoded = [decode_image(img, iscolor=1, where=f"{where} image {i}")[:, :, ::-1]
               for i, img in enumerate(images)]
    return torch.stack([normalise(img) for img in decoded])


@torch.no_grad()
def embed_with_flip(model, images, batch_size=64, device="cpu"):
    """``model(x) + model(flip(x))`` for every image: ``[N, D]`` float64 numpy, not normalised."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)  # [B, 3, H, W]
        embedding = model(batch).float() + model(batch.flip(-1)).float()  # [B, D]
        out.append(embedding.cpu().double().numpy())
    model.train(was_training)
    return np.concatenate(out)


class OnnxEmbedder:
    """An exported recogniser run by ONNX Runtime, callable like the torch backbone."""

    training = False

    def __init__(self, path):
        import onnxruntime

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):  # [N, 3, 112, 112] normalised -> [N, D]
        (out,) = self.session.run(None, {self.input_name: images.detach().cpu().float().numpy()})
        return torch.from_numpy(out)

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def load_embedder(path, network=None, device="cpu"):
    """A recogniser from ``model.pt`` (needs ``network``) or ``model.onnx``, ready for ``embed_with_flip``."""
    from ..models.backbones import load_backbone

    path = str(path)
    if path.endswith(".onnx"):
        return OnnxEmbedder(path)
    if network is None:
        raise ValueError(f"{path}: a .pt model needs its network name (e.g. --network r50)")
    return load_backbone(path, network, device=str(device))
