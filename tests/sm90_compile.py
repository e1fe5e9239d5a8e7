"""Compile the Triton kernels for a Hopper GPU (sm_90) without one; run by tests/test_kernels_triton.py.

Triton compiles or interprets per process, and the test session interprets, so this runs in its own process with
``TRITON_INTERPRET=0``. Usage: ``python tests/sm90_compile.py`` prints one JSON line per (configuration, kernel).
"""

from __future__ import annotations

import json

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from vithub.kernels.backends import triton as triton_backend
from vithub.kernels.backends.triton import Geometry

CONFIGURATIONS = [
    ("fp32", Geometry(False, (7, 7), dilation=(2, 2)), 32),
    ("bf16", Geometry(True, (7, 7), shift=(3, 3)), 128),
    ("fp16", Geometry(False, (7, 7)), 64),
    ("bf16", Geometry(True, (12, 12), shift=(6, 6)), 32),
    ("bf16", Geometry(False, (13, 13)), 16),
]
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compile_for_sm90(kernel, pointer_dtype: str, constants: dict):
    signature = {name: "i32" for name in kernel.arg_names}
    for name in ("Q", "K", "V", "RPB", "O", "DO", "DQ", "DK", "DV"):
        if name in signature:
            signature[name] = "*" + pointer_dtype
    for name in ("LSE", "DELTA", "DRPB"):
        if name in signature:
            signature[name] = "*fp32"
    signature["scale"] = "fp32"
    constants = {name: value for name, value in constants.items() if name in kernel.arg_names}
    signature.update({name: "constexpr" for name in constants})
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32))


def main() -> None:
    assert not triton_backend.triton_interprets(), "run with TRITON_INTERPRET=0"
    kernels = triton_backend._kernels()
    for pointer_dtype, geometry, head_dim in CONFIGURATIONS:
        q = torch.empty(1, 24, 24, 1, head_dim, dtype=TORCH_DTYPES[pointer_dtype])
        _, _, constants = triton_backend._launch_common(q, geometry, triton_backend.default_tiles(geometry), 1.0)
        constants.update(HAS_RPB=True, RPB_GRAD=True)
        for kernel in (kernels.local_attention_fwd, kernels.local_attention_bwd_query, kernels.local_attention_bwd_key):
            compiled = compile_for_sm90(kernel, pointer_dtype, constants)
            ptx = compiled.asm["ptx"]
            print(json.dumps(dict(
                dtype=pointer_dtype, geometry=repr(geometry), head_dim=head_dim, kernel=kernel.__name__,
                has_cubin=bool(compiled.asm.get("cubin")), spills=".local" in ptx, tensor_core_mma="mma" in ptx,
                shared_memory=compiled.metadata.shared,
            )), flush=True)


if __name__ == "__main__":
    main()
