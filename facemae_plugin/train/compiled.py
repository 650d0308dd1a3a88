"""Compiled training steps: ``torch.compile`` of a loop's forward-and-loss, where the job repays it.

Both loops hand their forward pass and loss (the backbone and margin head; FaceMAE, its pixel
loss and IRM's frozen teacher) to ``TrainingCompiler.compile`` as one function. AOTAutograd
compiles the backward pass with it, so BatchNorm, PReLU, LayerNorm and the attention's small ops
fuse into fewer passes over memory. The optimiser step stays eager: it is a small share of a step.

Building the graphs takes from tens of seconds (CUDA) to minutes (a CPU with few cores), and on a
CPU the compiled step is only modestly faster than oneDNN's eager kernels, so a loop compiles only
when its job, images times epochs, is long enough to repay the build (``COMPILE_AFTER_IMAGES``, per
device type); ``enabled=False`` (the verbs' ``--no-compile``) keeps every loop eager. Where
building or running a compiled step fails (no C++ compiler, an operator the compiler does not
cover), one line on stderr says so and that step runs again eagerly, as does every later one: no
parameter has moved yet, because the failure comes before the optimiser step.
"""
import logging
import sys

import torch

# Images (times epochs) a training job must reach before its steps are compiled, per device type. A
# CUDA step runs thousands of images a second, so the build's tens of seconds are worth hundreds of
# thousands of eager images; a CPU step is slow enough that a smaller job repays its longer build.
COMPILE_AFTER_IMAGES = {"cuda": 300_000, "cpu": 50_000}


def compile_pays(device, job_images):
    """Whether a job of ``job_images`` training images on ``device`` is long enough to compile."""
    return job_images >= COMPILE_AFTER_IMAGES.get(torch.device(device).type, float("inf"))


class TrainingCompiler:
    """The compiled-or-eager choice of one training run, and its fallback to eager.

    ``compile(fn)`` returns what a step should call instead of ``fn``; ``step(run, *args)`` runs one
    step (forward, loss, backward, optimiser) so that a compiler failure inside it falls back to
    eager. ``runtime`` names what ran, for the run's summary.
    """

    def __init__(self, device, job_images, enabled=True):
        self.active = bool(enabled) and compile_pays(device, job_images)
        self.failed = False

    @property
    def runtime(self):
        if not self.active:
            return "eager"
        return "eager (torch.compile failed)" if self.failed else "torch.compile"

    def compile(self, fn):
        """``fn`` itself when not compiling, else a callable running its compiled graph until a failure."""
        if not self.active:
            return fn
        # On a machine without CUDA, compiling logs that it found none: true, and not the user's concern.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        compiled = torch.compile(fn)

        def run(*args, **kwargs):
            return fn(*args, **kwargs) if self.failed else compiled(*args, **kwargs)
        return run

    def step(self, run, *args):
        """``run(*args)``; if it fails while compiled, one line on stderr and ``run(*args)`` again, eagerly."""
        try:
            return run(*args)
        except Exception as exc:  # the compiler's failure, unless the eager rerun fails the same way
            if not self.active or self.failed:
                raise
            self.failed = True
            reason = (str(exc).strip().splitlines() or [""])[0][:160]
            print(f"facemae: torch.compile failed ({type(exc).__name__}: {reason}); training without it",
                  file=sys.stderr)
            return run(*args)
