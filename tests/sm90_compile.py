"""Compile the Triton kernels for a Hopper GPU (sm_90a) without one and read ptxas's own report of each build:
registers, spill stores and spill loads (spills are decided by ptxas, after the PTX, so only its report can show
them). Run by tests/test_kernels_triton.py; prints one JSON line per (configuration, kernel).

Triton compiles or interprets per process, and the test session interprets, so this runs in its own process with
``TRITON_INTERPRET=0``:  ``TRITON_INTERPRET=0 python tests/sm90_compile.py [--jobs N]``.

The configurations are every launch configuration the Triton backend ships (``launch_config`` over its tables), each
at the largest head_dim it serves (register use grows with head_dim within a configuration), for bf16, for fp32 where
the backend takes it, and for fp16 at head_dim 128; windows 7 and 12 (Swin, FasterViT) and 4 and 8 (the fallback rule,
e.g. FasterViT's carrier grids). One extra build, the launch configuration these kernels shipped with before the
retune (8x8 tiles, 4 warps, bf16, head_dim 128), is marked ``control``: it spills, so a reader that cannot see
spills fails the test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Tuple

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HEAD_DIMS = (16, 32, 64, 128)
WINDOWS = (7, 12, 4, 8)


def configurations() -> List[Dict]:
    """The shipped configurations (deduplicated, each at its largest head_dim) and the control build."""
    from vithub.kernels.backends.triton_fused import FP32_MAX_HEAD_DIM, Geometry, LaunchConfig, Tiles, launch_config

    geometries = [("neighborhood", Geometry(False, (7, 7)))]
    geometries += [(f"window{w}", Geometry(True, (w, w), shift=(w // 2, w // 2))) for w in WINDOWS]
    chosen: Dict[Tuple, Dict] = {}
    for dtype in ("bf16", "fp32"):
        for name, geometry in geometries:
            limit = FP32_MAX_HEAD_DIM["window" if geometry.is_window else "neighborhood"] if dtype == "fp32" else 128
            for head_dim in (h for h in HEAD_DIMS if h <= limit):
                config = launch_config(geometry, TORCH_DTYPES[dtype], head_dim)
                key = (dtype, name, config)
                chosen[key] = dict(dtype=dtype, geometry=name, head_dim=head_dim, config=config, role="shipped")
    for name, geometry in geometries[:3]:
        config = launch_config(geometry, torch.float16, 128)
        chosen[("fp16", name, config)] = dict(dtype="fp16", geometry=name, head_dim=128, config=config, role="shipped")
    rows = list(chosen.values())
    for row in rows:
        row["geometry_object"] = dict(geometries)[row["geometry"]]
    rows.append(dict(dtype="bf16", geometry="neighborhood", head_dim=128, role="control",
                     config=LaunchConfig(Tiles((8, 8), (8, 8)), 4, 3), geometry_object=geometries[0][1]))
    return rows


def compile_for_sm90(kernel, pointer_dtype: str, constants: dict, num_warps: int, num_stages: int):
    """``triton.compile`` for sm_90a; returns the compiled kernel and ptxas's ``-v`` log of that build."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

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
    log = io.StringIO()
    dump, always = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = True  # Triton prints the log of the ptxas run it makes itself (its own flags)
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas, and so the log
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                      options=dict(num_warps=num_warps, num_stages=num_stages))
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = dump, always
    return compiled, log.getvalue()


def read_ptxas_log(log: str) -> Dict[str, int]:
    """Registers, spill stores/loads (bytes) and stack frame from a ptxas ``-v`` log of one kernel."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    frame = re.search(r"(\d+) bytes stack frame", log)
    if registers is None or spills is None:
        raise RuntimeError(f"no ptxas report in the compile log:\n{log[:2000]}")
    return dict(registers=int(registers.group(1)), spill_stores=int(spills.group(1)),
                spill_loads=int(spills.group(2)), stack_frame=int(frame.group(1)) if frame else 0)


def compile_row(row: Dict) -> List[Dict]:
    from vithub.kernels.backends import triton_fused as triton_backend

    assert not triton_backend.triton_interprets(), "run with TRITON_INTERPRET=0"
    kernels = triton_backend._kernels()
    config = row["config"]
    q = torch.empty(1, 24, 24, 1, row["head_dim"], dtype=TORCH_DTYPES[row["dtype"]])
    _, _, constants = triton_backend._launch_common(q, row["geometry_object"], config.tiles, 1.0)
    constants.update(HAS_RPB=True, RPB_GRAD=True)  # the heaviest variant of each kernel
    results = []
    for kernel in (kernels.local_attention_fwd, kernels.local_attention_bwd_query, kernels.local_attention_bwd_key):
        compiled, log = compile_for_sm90(kernel, row["dtype"], constants, config.num_warps, config.num_stages)
        results.append(dict(
            role=row["role"], dtype=row["dtype"], geometry=row["geometry"], head_dim=row["head_dim"],
            tiles=list(config.tiles.query), num_warps=config.num_warps, num_stages=config.num_stages,
            kernel=kernel.__name__, has_cubin=bool(compiled.asm.get("cubin")),
            tensor_core_mma="mma" in compiled.asm["ptx"], shared_memory=compiled.metadata.shared,
            **read_ptxas_log(log),
        ))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="compile processes")
    args = parser.parse_args()
    rows = configurations()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for results in pool.map(compile_row, rows):
            for result in results:
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
