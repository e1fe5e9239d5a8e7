"""The backends, one module each, registered here in the registry (:mod:`vithub.kernels.registry`):

* ``reference``: naive, float64-capable definitions; the ground truth of the tests;
* ``torch``: fast PyTorch (tiled SDPA for local attention, batched matmuls for the dense forms), any device;
* ``triton``: fused kernels for neighborhood and window attention on CUDA (CPU only under ``TRITON_INTERPRET=1``);
* ``onnx``: standard operators only, chosen by itself while ``torch.onnx.export`` traces a model.
"""

from ..registry import register
from . import onnx, reference, torch, triton

register(reference.ReferenceBackend())
register(torch.TorchBackend())
register(triton.TritonBackend())
register(onnx.OnnxBackend())

__all__ = ["onnx", "reference", "torch", "triton"]
