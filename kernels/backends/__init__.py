"""The backends, one module each, registered here in the registry (:mod:`vithub.kernels.registry`):

* ``reference`` (``reference.py``): naive, float64-capable definitions; the ground truth of the tests;
* ``torch`` (``torch_tiled.py``): fast PyTorch (tiled SDPA for local attention, batched matmuls for the dense
  forms), any device;
* ``triton`` (``triton_fused.py``, kernels in ``triton_kernels.py``): fused kernels for neighborhood and window
  attention on CUDA (CPU only under ``TRITON_INTERPRET=1``);
* ``onnx`` (``onnx_export.py``): standard operators only, chosen by itself while ``torch.onnx.export`` traces a
  model.
"""

from ..registry import register
from . import onnx_export, reference, torch_tiled, triton_fused

register(reference.ReferenceBackend())
register(torch_tiled.TorchBackend())
register(triton_fused.TritonBackend())
register(onnx_export.OnnxBackend())

__all__ = ["onnx_export", "reference", "torch_tiled", "triton_fused"]
