"""The ``onnx`` backend: every op written with standard operators only, chosen automatically while
``torch.onnx.export`` traces a model (:func:`vithub.kernels.registry.exporting_onnx`), so exported graphs hold no
``vithub::`` custom op and run in any ONNX runtime. It is never picked otherwise.

Neighborhood attention gathers each query's ``Kh x Kw`` keys by index (NATTEN's window starts, computed from the map
size with tensor arithmetic, so they become constants of the graph) and does one softmax over them; shifted window
attention rolls, partitions into windows, does masked attention per window and rolls back. The torch backend's tiled
forms build their gather plans in Python with data-dependent steps, which an export cannot trace; the other ops'
torch forms are plain tensor algebra and are used as they are.
"""

from __future__ import annotations

from . import reference
from .torch import TorchBackend, unshifted_window_attention


class OnnxBackend(TorchBackend):
    """Standard-operator forms of every op; chosen only during an ONNX export."""

    name = "onnx"
    title = "ONNX export form"

    def automatic(self, op, q):
        return False

    def neighborhood_attention(self, q, k, v, rpb, kernel, dilation, scale):
        return reference.neighborhood_attention(q, k, v, kernel, dilation, rpb, scale)

    def window_attention(self, q, k, v, rpb, window, shift, scale, unpadded):
        if shift == (0, 0):
            return unshifted_window_attention(q, k, v, window, rpb, scale)
        return reference.window_attention(q, k, v, window, shift, rpb, scale, unpadded)
