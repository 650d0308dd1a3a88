"""Compiled training steps, where the job repays the build, in the form that is fast on each device.

- CUDA (``"step"``): the loop's whole forward-and-loss (the backbone and margin head; FaceMAE, its
  pixel loss and IRM's frozen teacher) under ``torch.compile``. AOTAutograd compiles the backward
  pass with it, so BatchNorm, PReLU, LayerNorm and the attention's small ops fuse into fewer passes
  over memory. The optimiser step stays eager: it is a small share of a step.
- CPU (``"prelu"``): a whole-step graph is barely faster than oneDNN's eager convolutions there and
  takes minutes to build, while one layer's eager kernel is slow: the PReLU layers that gradients
  flow through run generated kernels (``models.activations``), built in seconds: the trained
  recogniser's, and in pretraining the backward of IRM's frozen teacher's (FaceMAE has none).

A loop compiles only when its job, images times epochs, is long enough to repay the build
(``COMPILE_AFTER_IMAGES``, per device type); ``enabled=False`` (the verbs' ``--no-compile``) keeps
every loop eager. Where building or running a compiled step fails (no C++ compiler, an operator the
compiler does not cover), one line on stderr says so and training goes on eagerly. The CPU kernel
is built before the first step, so its failure comes before anything trained; a compiled step
that fails runs again eagerly, no parameter having moved (the failure comes before the optimiser).
"""
import logging
import sys

import torch

from ..models.activations import generated_frozen_kernel, generated_kernel, prelu_layers

# Images (times epochs) a training job must reach before it compiles, per device type. A CUDA step
# runs thousands of images a second, so the build's tens of seconds are worth hundreds of thousands
# of eager images; a CPU's PReLU kernel builds in seconds and repays them within a few thousand.
COMPILE_AFTER_IMAGES = {"cuda": 300_000, "cpu": 2_000}
# What compiles on each device type: the whole step, or the PReLU layers gradients flow through.
STRATEGY = {"cuda": "step", "cpu": "prelu"}


def compile_pays(device, job_images):
    """Whether a job of ``job_images`` training images on ``device`` is long enough to compile."""
    return job_images >= COMPILE_AFTER_IMAGES.get(torch.device(device).type, float("inf"))


class TrainingCompiler:
    """The compiled-or-eager choice of one training run, and its fallback to eager.

    ``compile(fn, model)`` returns what a step should call instead of ``fn`` (the forward and loss
    of the trained ``model``); ``step(run, *args)`` runs one step (forward, loss, backward,
    optimiser) so that a compiler failure inside it falls back to eager. ``runtime`` names what
    ran, for the run's summary.
    """

    def __init__(self, device, job_images, enabled=True):
        self.strategy = STRATEGY.get(torch.device(device).type, "step")
        self.active = bool(enabled) and compile_pays(device, job_images)
        self.failed = False
        self._replaced = []  # (PReLU layer, the kernel it ran before a generated one)

    @property
    def runtime(self):
        if not self.active:
            return "eager"
        if self.failed:
            return "eager (torch.compile failed)"
        return "torch.compile" if self.strategy == "step" else "torch.compile (PReLU)"

    def compile(self, fn, *models):
        """``fn``, or what runs it compiled: ``fn``'s graph (``"step"``) until a failure, or ``fn``
        itself once the PReLU layers of ``models`` (the trained model, and a frozen one the loss
        backpropagates through) run generated kernels (``"prelu"``; a step without PReLU layers
        runs eagerly)."""
        if not self.active:
            return fn
        # On a machine without CUDA, compiling logs that it found none: true, and not the user's concern.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        if self.strategy == "prelu":
            self._compile_prelu([layer for model in models for layer in prelu_layers(model)])
            return fn
        compiled = torch.compile(fn)

        def run(*args, **kwargs):
            return fn(*args, **kwargs) if self.failed else compiled(*args, **kwargs)
        return run

    def _compile_prelu(self, layers):
        if not layers:
            self.active = False  # nothing of this step compiles: it trains eagerly
            return
        kernels = {True: generated_kernel(), False: generated_frozen_kernel()}  # by whether the slope trains
        try:  # build each one used now, on a small input, so a compiler that cannot run fails before training
            for trained in {layer.weight.requires_grad for layer in layers}:
                probe = torch.linspace(-1, 1, 16).view(2, 2, 2, 2).requires_grad_(True)  # no draw from the seeded RNG
                kernels[trained](probe, torch.full((1, 2, 1, 1), 0.25, requires_grad=trained)).sum().backward()
        except Exception as exc:  # the compiler's failure: the kernels cannot fail on these inputs
            self._fall_back(exc)
            return
        self._replaced = [(layer, layer.kernel) for layer in layers]
        for layer in layers:
            layer.kernel = kernels[layer.weight.requires_grad]

    def _fall_back(self, exc):
        self.failed = True
        for layer, kernel in self._replaced:
            layer.kernel = kernel
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        print(f"facemae: torch.compile failed ({type(exc).__name__}: {reason}); training without it",
              file=sys.stderr)

    def step(self, run, *args):
        """``run(*args)``; if it fails while compiled, one line on stderr and ``run(*args)`` again, eagerly."""
        try:
            return run(*args)
        except Exception as exc:  # the compiler's failure, unless the eager rerun fails the same way
            if not self.active or self.failed:
                raise
            self._fall_back(exc)
            return run(*args)
