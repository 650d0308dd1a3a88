"""A recogniser compiled by OpenVINO for this CPU: the fast runtime of long embedding jobs on a CPU.

The graph is the recogniser's own ONNX export (``models.onnx_graph.write_recogniser_graph``, the file
``facemae export`` writes), fixed to one batch size and compiled in float32 (the reference
embeddings) or with bfloat16 inference on a CPU that computes it natively. OpenVINO runs on torch's
thread count, so ``torch.set_num_threads`` and ``OMP_NUM_THREADS`` bound it as they bound torch.
"""
import functools
import io

import numpy as np
import torch

# torch dtype of a recogniser's precision -> OpenVINO's inference precision hint
INFERENCE_PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16"}


@functools.lru_cache(maxsize=None)
def openvino_core():
    """The process's one OpenVINO ``Core``: every graph shares its CPU plugin instead of loading its own."""
    import openvino

    return openvino.Core()


def openvino_available():
    """Whether the OpenVINO runtime imports here (it has no wheel for some platforms)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoGraph:
    """``model`` compiled for ``[batch_size, 3, H, W]`` float32 inputs: call it with such a batch
    and get ``[batch_size, D]`` float32 embeddings, as from ``model`` in ``dtype``."""

    def __init__(self, model, batch_size, dtype, image_size):
        from ..models.onnx_graph import write_recogniser_graph

        graph_bytes = io.BytesIO()
        write_recogniser_graph(model.float().eval().cpu(), graph_bytes)
        core = openvino_core()
        graph = core.read_model(graph_bytes.getvalue())
        graph.reshape([batch_size, 3, *image_size])  # a static shape: OpenVINO picks kernels for it once
        compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[dtype],
            "PERFORMANCE_HINT": "LATENCY",  # one stream using every thread: one batch at a time, as the jobs feed it
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        self.request = compiled.create_infer_request()

    def __call__(self, images):  # [batch_size, 3, H, W] -> [batch_size, D] float32
        x = np.ascontiguousarray(images.detach().cpu().float().numpy())
        out = self.request.infer({0: x})[0]  # a view of the request's own buffer, reused by the next call
        return torch.from_numpy(np.array(out, dtype=np.float32))
