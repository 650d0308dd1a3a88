"""The ONNX graphs of the models: how a torch module becomes a graph, and the recogniser's graph.

``facemae export`` writes and checks these files; the OpenVINO embedder compiles the same
recogniser graph in memory, so both run what one function traced.
"""
import warnings

import torch

OPSET = 17
IMAGE_SIZE = 112


def write_graph(module, args, out, opset=OPSET, **names):
    """``module`` traced on ``args`` into ``out`` (a path or a binary file object) as ONNX."""
    # The TorchScript exporter (dynamo=False) gives stable node sets and dynamic_axes support.
    # Its TracerWarnings flag Python-side shape checks; shapes other than N are fixed here anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(module, args, out, opset_version=opset, dynamo=False, do_constant_folding=True,
                          keep_initializers_as_inputs=False, **names)


def write_recogniser_graph(model, out, opset=OPSET):
    """The recogniser graph of a float32 ``model`` (input ``data``, output ``embedding``, dynamic N) into
    ``out``, a path or a binary file object; the one export every recogniser graph goes through."""
    dummy = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)  # batch 2 so no size-1 dim gets specialised
    write_graph(model, (dummy,), out, opset, input_names=["data"], output_names=["embedding"],
                dynamic_axes={"data": {0: "None"}, "embedding": {0: "None"}})
