"""Figures of evaluation results, drawn off-screen (Agg) so they work on headless machines."""
import os

import numpy as np

from ..core.files import atomic_file


def new_figure(width, height):
    """A matplotlib Figure on the Agg canvas (inches)."""
    # Figure + FigureCanvasAgg directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path):
    """Write ``figure`` as a PNG under a temporary name, then rename; returns the path."""
    path = os.fspath(path)
    with atomic_file(path) as f:
        figure.savefig(f, format="png")
    return path


def plot_roc(fpr, tpr, path, title="ROC", operating_point=None):
    """Write a ROC curve PNG atomically; returns the path.

    fpr, tpr: [T] rates per threshold (e.g. VerificationResult.fpr / .tpr).
    operating_point: optional (far, tar) marked on the curve, e.g. TAR@FAR=1e-3.
    """
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    order = np.argsort(fpr, kind="stable")
    figure = new_figure(5, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(fpr[order], tpr[order], lw=1.5, label="10-fold mean ROC")
    axes.plot([0, 1], [0, 1], ls=":", lw=0.8, color="grey", label="chance")
    if operating_point is not None:
        far, tar = operating_point
        axes.plot([far], [tar], "o", color="C3", label=f"TAR {tar:.4f} @ FAR {far:.2e}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)
