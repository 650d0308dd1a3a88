"""Embeddings of verification images: each image plus its horizontal flip, as arcface_torch evaluates.

A torch recogniser runs in one of two precisions (``PRECISIONS``): ``fp32`` (contiguous memory,
float32, the reference) or ``fast`` (channels_last memory and autocast in ``fast_dtype``:
fp16 on CUDA, bf16 on a CPU that computes it natively). ``auto`` picks ``fast`` where there is such
a dtype. Embeddings leave the model as float32 either way.

Either precision may also be compiled (``CompilingEmbedder``): a job (``embedding_job``) that embeds
more than a few hundred images runs a compiled graph of the same model, OpenVINO's on a CPU
(``openvino_graph``), ``torch.compile``'s elsewhere (``pick_compiler``).
"""
import contextlib
import logging
import sys

import numpy as np
import torch

from ..core.devices import autocast, fast_dtype, native_bf16
from ..core.errors import CheckpointError, InputError, UsageError
from ..data.dataset import normalise_batch
from ..formats.recordio import decode_image
from .openvino_graph import OpenVinoGraph, openvino_available

RECOGNISER_INPUT = (112, 112)  # (height, width) of the aligned faces a recogniser takes
# the most images (flips included) a job embeds eagerly: fewer would not repay building a compiled
# graph (torch.compile generates and builds C++; OpenVINO exports and reads an ONNX graph)
COMPILE_AFTER_IMAGES = 2048
OPENVINO_AFTER_IMAGES = 512


def decode_faces(images, where="bin", start=0, stop=None):
    """Encoded images ``[start:stop]`` -> normalised RGB ``[B, 3, 112, 112]``; another size is named.

    The one decode of verification images (BGR bytes to RGB, as arcface_torch's loader sees them).
    """
    stop = len(images) if stop is None else min(stop, len(images))
    batch = []
    for index in range(start, stop):
        bgr = decode_image(images[index], iscolor=1, where=f"{where} image {index}")  # [H, W, 3]
        if bgr.shape[:2] != RECOGNISER_INPUT:
            raise InputError(f"{where}: image {index} is {bgr.shape[1]}x{bgr.shape[0]}, expected an aligned "
                             f"{RECOGNISER_INPUT[1]}x{RECOGNISER_INPUT[0]} face")
        batch.append(bgr[:, :, ::-1])
    return normalise_batch(np.stack(batch)) if batch else torch.zeros(0, 3, *RECOGNISER_INPUT)


@torch.no_grad()
def embed_plain_and_flipped(model, batch, device="cpu"):
    """``(model(x), model(flip(x)))`` for a batch ``[B, 3, H, W]``: two ``[B, D]`` float64 numpy arrays."""
    batch = batch.to(device)
    return (model(batch).float().cpu().double().numpy(),
            model(batch.flip(-1)).float().cpu().double().numpy())  # flip mirrors the width


def embed_with_flip(model, images, batch_size=64, device="cpu"):
    """``model(x) + model(flip(x))`` for every image: ``[N, D]`` float64 numpy, not normalised."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        plain, flipped = embed_plain_and_flipped(model, images[start:start + batch_size], device)
        out.append(plain + flipped)
    model.train(was_training)
    return np.concatenate(out)


def passes_per_image(model):
    """Forward passes an image costs: two (image and flip), one for a model whose ``flip`` is False."""
    return 2 if getattr(model, "flip", True) else 1


@torch.no_grad()
def embed_for_search(model, images, batch_size=64, device="cpu"):
    """What an audit searches: ``embed_with_flip``, or ``model(x)`` alone where ``model.flip`` is False
    (the pixel attacker, ``attackers.PixelAttacker``). ``[N, D]`` float64 numpy, not normalised."""
    if passes_per_image(model) == 2:
        return embed_with_flip(model, images, batch_size, device)
    return np.concatenate([model(images[s:s + batch_size].to(device)).float().cpu().double().numpy()
                           for s in range(0, len(images), batch_size)])


class OnnxEmbedder:
    """An exported recogniser run by ONNX Runtime, callable like the torch backbone.

    The graph must take one ``[N, 3, 112, 112]`` float input and give one ``[N, D]`` output; a graph
    exported with a fixed batch size is fed in chunks of that size.
    """

    training = False

    def __init__(self, path):
        import onnxruntime

        path = str(path)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        try:
            self.session = onnxruntime.InferenceSession(path, providers=providers)
        except Exception as exc:  # not a model file, or a graph ONNX Runtime cannot run
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"{path}: not a loadable ONNX model ({first_line})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else None
        if shape is None or len(shape) != 4 or list(shape[1:]) != [3, *RECOGNISER_INPUT] or len(outputs) != 1:
            raise CheckpointError(f"{path}: not a face recogniser graph: inputs "
                                  f"{[i.shape for i in inputs]}, {len(outputs)} output(s); expected one input "
                                  f"[N, 3, {RECOGNISER_INPUT[0]}, {RECOGNISER_INPUT[1]}] and one output [N, D]")
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def __call__(self, images):  # [N, 3, 112, 112] normalised -> [N, D]
        x = images.detach().cpu().float().numpy()
        if self.fixed_batch is None:
            return torch.from_numpy(self._run(x))
        b = self.fixed_batch
        chunks = []
        for start in range(0, len(x), b):
            chunk = x[start:start + b]  # [<=b, 3, H, W]
            padded = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            chunks.append(self._run(padded)[:len(chunk)])
        return torch.from_numpy(np.concatenate(chunks))

    def _run(self, x):
        (out,) = self.session.run(None, {self.input_name: x})
        return out

    def eval(self):
        return self

    def train(self, mode=True):
        return self


PRECISIONS = ("auto", "fp32", "fast")


class MixedPrecisionEmbedder(torch.nn.Module):
    """A torch recogniser in channels_last memory under autocast in ``dtype``; float32 embeddings out."""

    def __init__(self, model, device, dtype):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)
        self.device, self.dtype = torch.device(device), dtype

    def forward(self, images):  # [N, 3, 112, 112] -> [N, D] float32
        with autocast(self.device, True, self.dtype):
            return self.model(images.contiguous(memory_format=torch.channels_last)).float()


class TorchCompiler:
    """``torch.compile`` of a torch embedder, weights frozen in: the compiled path on any device."""

    name = "torch.compile"
    after = COMPILE_AFTER_IMAGES

    def __init__(self, embedder):
        self.embedder = embedder

    def __call__(self, batch_size):  # the graph specialises on the first batch it runs
        # On a machine without CUDA, compiling logs that it found none: true, and not the user's concern.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # freezing: the weights become constants, so convolutions get their weights pre-packed once
        return torch.compile(self.embedder, dynamic=False, options={"freezing": True})


class OpenVinoCompiler:
    """The float32 recogniser as an ``OpenVinoGraph`` inferring in ``dtype``: the compiled path on a CPU."""

    name = "openvino"
    after = OPENVINO_AFTER_IMAGES

    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype

    def __call__(self, batch_size):
        return OpenVinoGraph(self.model, batch_size, self.dtype, RECOGNISER_INPUT)


def pick_compiler(model, embedder, device, dtype):
    """OpenVINO on a CPU where it imports and runs ``dtype`` natively, else ``torch.compile`` of ``embedder``."""
    native = dtype == torch.float32 or (dtype == torch.bfloat16 and native_bf16())
    if torch.device(device).type == "cpu" and native and openvino_available():
        return OpenVinoCompiler(model, dtype)
    return TorchCompiler(embedder)


class CompilingEmbedder(torch.nn.Module):
    """A torch recogniser that runs long jobs through a compiled graph of itself.

    A job (``job``) that embeds more than ``after`` images (the compiler's own default unless
    given) runs every batch through the graph ``compiler`` builds (``TorchCompiler`` or
    ``OpenVinoCompiler``, see ``pick_compiler``); shorter jobs (tests, small ``.bin`` sets) and
    calls outside a job run eagerly, so they never pay for building it. Which path embeds an image
    so depends on its job alone, never on what ran before. The graph is built once, for the
    first compiled batch's size: a shorter batch is padded with zero images, a longer one split.
    Where compiling or running the graph fails (no C++ compiler, an unsupported device or layer)
    one line on stderr says so and the model stays eager.
    """

    def __init__(self, model, compiler, after=None):
        super().__init__()
        self.model, self.compiler = model, compiler
        self.after = compiler.after if after is None else after
        self.runtime = f"torch, {compiler.name} for jobs over {self.after} images"
        self.long_job, self.batch_size, self.failed = False, None, False
        # kept out of the module tree: a torch graph shares the model's parameters
        self.__dict__["compiled"] = None

    @contextlib.contextmanager
    def job(self, images):
        """Within it, batches run as suits a job of ``images`` forward passes (flips included)."""
        self.long_job = images > self.after
        try:
            yield self
        finally:
            self.long_job = False

    def forward(self, images):  # [N, 3, 112, 112] -> [N, D]
        if self.failed or not self.long_job or len(images) == 0:
            return self.model(images)
        try:
            if self.compiled is None:
                self.__dict__["compiled"], self.batch_size = self.compiler(len(images)), len(images)
            return torch.cat([self._run(images[s:s + self.batch_size])
                              for s in range(0, len(images), self.batch_size)])
        except Exception as exc:  # the compiler, not the model: the eager model runs what it could not
            self.failed = True
            reason = (str(exc).strip().splitlines() or [""])[0][:160]
            print(f"facemae: {self.compiler.name} failed ({type(exc).__name__}: {reason}); embedding without it",
                  file=sys.stderr)
            return self.model(images)

    def _run(self, chunk):  # [n <= batch_size, 3, H, W] -> [n, D]
        missing = self.batch_size - len(chunk)
        padded = torch.cat([chunk, chunk.new_zeros((missing, *chunk.shape[1:]))]) if missing else chunk
        return self.compiled(padded)[:len(chunk)]


def embedding_job(embedder, images):
    """Context of one embedding job of ``images`` forward passes: ``CompilingEmbedder.job`` where
    ``embedder`` has one, nothing otherwise (an ONNX graph, a plain backbone)."""
    job = getattr(embedder, "job", None)
    return job(images) if job is not None else contextlib.nullcontext(embedder)


def with_precision(model, device, precision="auto"):
    """``(embedder, precision name)``: ``model`` as it will run for ``precision`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = fast_dtype(device)
    if precision == "fp32" or (precision == "auto" and dtype is None):
        return model, "fp32"
    dtype = dtype or torch.bfloat16  # "fast" asked for explicitly: bf16 even where it is emulated
    return MixedPrecisionEmbedder(model, device, dtype).eval(), str(dtype).replace("torch.", "")


def load_embedder(path, network=None, device="cpu", precision="fp32", compile=True):
    """A recogniser from ``model.pt`` (needs ``network``) or ``model.onnx``, ready for ``embed_with_flip``.

    ``precision`` applies to ``.pt`` models (``with_precision``), and so does ``compile``
    (``CompilingEmbedder``); the embedder's ``precision`` attribute names the dtype that runs and
    its ``runtime`` what runs it (an ONNX graph runs as exported, by ONNX Runtime).
    """
    from ..models.backbones import load_backbone

    path = str(path)
    if path.endswith(".onnx"):
        embedder = OnnxEmbedder(path)
        embedder.precision, embedder.runtime = "onnx", "onnxruntime"
        return embedder
    if network is None:
        raise UsageError(f"{path}: a .pt model needs its network name (e.g. --network r50)")
    model = load_backbone(path, network, device=str(device))
    embedder, name = with_precision(model, device, precision)
    if compile:
        dtype = torch.float32 if name == "fp32" else getattr(torch, name)
        embedder = CompilingEmbedder(embedder, pick_compiler(model, embedder, device, dtype)).eval()
    else:
        embedder.runtime = "torch"
    embedder.precision = name
    return embedder
