"""ONNX export: :func:`export_onnx` (and ``vithub export``) writes a model as an ONNX file, checks it with
``onnx.checker``, runs it once in ONNX Runtime against eager PyTorch and reports the largest difference.
:func:`export_program` (``vithub export --format torch-export|aoti``) writes a ``torch.export`` program or an
AOTInductor package instead, checked the same way against eager.

The exporter is PyTorch's dynamo-based one (``torch.onnx.export(..., dynamo=True)``). While it traces, every vithub
attention op runs in its standard-operator form (the kernel layer's ``onnx`` backend), so the file holds no
``vithub::`` custom op and needs nothing but ONNX Runtime (or any ONNX runtime) to run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

EXTRA = "vithub[export]"
MIN_OPSET = 18


class ExportError(RuntimeError):
    """The export could not be made or did not validate; nothing was left at the output path."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how it validated."""

    path: str
    input_size: Tuple[int, int, int]  # (C, H, W)
    dynamic_batch: bool
    opset: int
    max_abs_diff: float  # ONNX Runtime vs eager, on one random batch
    validated_batch_sizes: Tuple[int, ...]

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def require_export_packages() -> None:
    """Raise :class:`ExportError` naming the extra when onnx, onnxscript or onnxruntime is missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install '{EXTRA}'")


def model_input_size(model: torch.nn.Module, img_size: Optional[Union[int, Sequence[int]]] = None
                     ) -> Tuple[int, int, int]:
    """``(C, H, W)`` to export at: ``img_size`` (an int or ``(H, W)``) or the model's pretrained cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = tuple(cfg.get("input_size", (3, 224, 224)))
    if img_size is None:
        return int(channels), int(height), int(width)
    from vithub.kernels import pair

    one_side = not isinstance(img_size, int) and len(img_size) == 1  # the CLI's `--img-size SIDE`
    try:
        height, width = pair(img_size[0] if one_side else img_size, "img_size")
    except ValueError as error:
        raise ExportError(f"{error} (an int or (H, W), each >= 1)") from None
    return int(channels), height, width


def redraw_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw ``model``'s weights in place (seeded) so that every branch contributes to the output, for checking an
    export (or a port) without trained weights: at init, many branches end in zero-initialised norms or layer
    scales and output exactly zero, so an error inside them cannot show. Norms get affine parameters near (1, 0)
    and BatchNorms non-trivial running statistics; every other float parameter gets noise of a tenth of a
    unit-gain draw for its fan-in (weights; 0.1 for biases, layer scales and bias tables), so activations keep
    their scale. Learned thresholds (LTMP) keep their values, which set how many tokens are reduced. Returns
    ``model``."""
    generator = torch.Generator().manual_seed(seed)

    def noise(like: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like.dtype) * scale

    batch_norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    norm_parameters = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, batch_norms) and module.running_var is not None:
                module.running_mean.copy_(noise(module.running_mean, 0.2))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator,
                                                          dtype=torch.float64).to(module.running_var.dtype))
            if isinstance(module, batch_norms + (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(1 + noise(module.weight, 0.2))
                    norm_parameters.add(id(module.weight))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(noise(module.bias, 0.2))
                    norm_parameters.add(id(module.bias))
        for name, parameter in model.named_parameters():
            if id(parameter) in norm_parameters or "threshold" in name or not parameter.is_floating_point():
                continue
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.add_(noise(parameter, 0.1 / fan_in ** 0.5 if parameter.dim() > 1 else 0.1))
    return model


def _register_orphan_constants(graph: Any) -> int:
    """Make every constant that a node reads but nothing defines an initializer; returns how many there were.

    The second optimizer pass (onnxscript 0.7.2, onnx-ir 1.1.0) can leave a folded reshape target as a value with
    a constant but no producer and no initializer entry (LeViT's ``forward_intermediates``); ``onnx.checker`` then
    rejects the file ("Nodes in a graph must be topologically sorted").
    """
    orphans = {}
    for node in graph:
        for value in node.inputs:
            if (value is not None and value.producer() is None and value.const_value is not None
                    and not value.is_graph_input() and not value.is_initializer()):
                orphans[id(value)] = value
    for value in orphans.values():
        graph.register_initializer(value)
    return len(orphans)


def _onnx_runtime_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_onnx(model: torch.nn.Module, path: Union[str, Path], img_size: Optional[Union[int, Sequence[int]]] = None,
                dynamic_batch: bool = True, batch_size: int = 1, opset: int = MIN_OPSET, fuse: bool = False,
                atol: float = 1e-4, validate: bool = True, seed: int = 0,
                external_data: Optional[bool] = None) -> ExportResult:
    """Export ``model`` (eval mode, on the CPU) to ONNX at ``path`` and check it.

    Args:
        model: a timm or vithub model whose forward takes one image batch ``(B, C, H, W)``.
        path: the ``.onnx`` file; written atomically (a failed export or validation leaves nothing there). Weights
            past ONNX's 2 GB protobuf limit go to ``<path>.data`` beside it (ONNX external data), written first.
        img_size: an int or ``(H, W)``; default the model's pretrained cfg input size.
        dynamic_batch: a symbolic batch dimension; otherwise the graph is fixed at ``batch_size``.
        opset: ONNX opset (18 or newer).
        fuse: fold BatchNorms into the preceding layers first, for families that support it (``model.fuse()``:
            LeViT, EfficientViT); a no-op elsewhere.
        atol: largest accepted absolute difference between ONNX Runtime and eager outputs.
        validate: run ``onnx.checker`` and ONNX Runtime against eager (at two batch sizes with ``dynamic_batch``).
        external_data: weights in ``<path>.data``: ``None`` only past 2 GB (the exporter's rule), or always/never.

    Raises:
        ExportError: missing packages (naming the extra), an input size the model cannot take, a failed export, or
            outputs further than ``atol`` from eager.
    """
    require_export_packages()
    target = _check_export_arguments(path, opset, batch_size)
    model, input_size, generator, example = _prepared(model, img_size, dynamic_batch, batch_size, fuse, seed)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    target.parent.mkdir(parents=True, exist_ok=True)
    # The model is staged under its final name in a private folder: an external-data file is named after the model
    # file and referenced by that name, so both can move beside the target unchanged.
    staging_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    staging = staging_dir / target.name
    try:
        _trace_to_onnx(model, example, staging, opset, dynamic_shapes, external_data)
        max_diff, sizes = float("nan"), ()
        if validate:
            sizes = (1, 3) if dynamic_batch else (batch_size,)
            max_diff = _validate_against_eager(staging, model, input_size, sizes, generator, atol)
        for extra in staging_dir.iterdir():  # external data first: the model file appears last, complete
            if extra != staging:
                os.replace(extra, target.parent / extra.name)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return ExportResult(str(target), input_size, dynamic_batch, opset, max_diff, tuple(sizes))


def _prepared(model: torch.nn.Module, img_size: Optional[Union[int, Sequence[int]]], dynamic_batch: bool,
              batch_size: int, fuse: bool, seed: int
              ) -> Tuple[torch.nn.Module, Tuple[int, int, int], torch.Generator, torch.Tensor]:
    """The model to export (fused when asked, eval, CPU), its input size, the seeded generator and an example batch
    the model has been seen to take (two images with a dynamic batch)."""
    if fuse and hasattr(model, "fuse"):
        model = model.fuse()
    model = model.eval().cpu()
    input_size = model_input_size(model, img_size)
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, *input_size, generator=generator)
    try:
        with torch.no_grad():
            model(example)
    except Exception as error:  # the model's own message says what it needs
        raise ExportError(f"the model cannot take input size {input_size[1]}x{input_size[2]}: "
                          f"{type(error).__name__}: {error}") from error
    return model, input_size, generator, example


def _check_export_arguments(path: Union[str, Path], opset: int, batch_size: int) -> Path:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    return _checked_target(path, batch_size, ".onnx")


def _checked_target(path: Union[str, Path], batch_size: int, suffix: str, format: str = "onnx") -> Path:
    """``path`` as a Path once it ends in ``suffix`` and ``batch_size`` is a positive int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size must be an int >= 1, got {batch_size!r}")
    target = Path(path)
    if target.suffix != suffix:
        raise ExportError(f"output must be a {suffix} file for --format {format}, got {str(target)!r}")
    return target


def _trace_to_onnx(model: torch.nn.Module, example: torch.Tensor, staging: Path, opset: int,
                   dynamic_shapes: Optional[tuple], external_data: Optional[bool]) -> None:
    """``torch.onnx.export`` (dynamo) of ``model``, its blocks in their export forms (:mod:`vithub.export_forms`),
    into ``staging``; a failure becomes an ExportError with the root cause's first line."""
    from vithub.export_forms import export_forms

    try:
        with torch.no_grad(), export_forms(model):
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic_shapes, verbose=False, report=False)
            # A second optimizer pass: the first removes pairs of inverse transposes (a model's NCHW-to-heads-last
            # permute and the attention form's way back), which leaves pairs of reshapes to merge.
            program.optimize()
            _register_orphan_constants(program.model.graph)
        program.save(str(staging), external_data=external_data)
    except Exception as error:
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        raise ExportError(f"torch.onnx.export failed: {type(root).__name__}: {str(root).splitlines()[0]}") from error


def _validate_against_eager(onnx_path: Path, model: torch.nn.Module, input_size: Tuple[int, int, int],
                            sizes: Sequence[int], generator: torch.Generator, atol: float) -> float:
    """``onnx.checker`` on the file, then ONNX Runtime against eager at each batch size; the largest difference."""
    import onnx

    onnx.checker.check_model(str(onnx_path), full_check=True)
    session = _onnx_runtime_session(onnx_path)

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])

    return _compare_with_eager(run, "ONNX Runtime", model, input_size, sizes, generator, atol)


def _compare_with_eager(run: Callable[[torch.Tensor], Any], name: str, model: torch.nn.Module,
                        input_size: Tuple[int, int, int], sizes: Sequence[int], generator: torch.Generator,
                        atol: float) -> float:
    """``run`` (an exported form of ``model``) against eager on fresh random batches of each size: the largest
    absolute difference, or :class:`ExportError` for a non-tensor output, another shape or a difference above
    ``atol``."""
    max_diff = 0.0
    for size in sizes:
        images = torch.randn(size, *input_size, generator=generator)
        with torch.no_grad():
            expected = model(images)
            if not isinstance(expected, torch.Tensor):
                raise ExportError("validation compares the first output, and the model's forward does not "
                                  f"return a tensor ({type(expected).__name__}); pass validate=False")
            got = run(images)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ExportError(f"{name} gave shape {shape} at batch {size}, eager {tuple(expected.shape)}")
        max_diff = max(max_diff, float((got.float() - expected.float()).abs().max()))
    if not max_diff <= atol:
        raise ExportError(f"{name} outputs differ from eager by {max_diff:.3g} (> atol {atol:g})")
    return max_diff


PROGRAM_FORMATS = ("torch-export", "aoti")


@dataclass(frozen=True)
class ProgramExportResult:
    """What :func:`export_program` wrote and how it validated."""

    path: str
    format: str  # "torch-export" (torch.export.save) or "aoti" (an AOTInductor package)
    input_size: Tuple[int, int, int]  # (C, H, W)
    dynamic_batch: bool
    strict: bool
    max_abs_diff: float  # the loaded file vs eager, on random batches
    validated_batch_sizes: Tuple[int, ...]

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def export_program(model: torch.nn.Module, path: Union[str, Path], format: str = "torch-export",
                   img_size: Optional[Union[int, Sequence[int]]] = None, dynamic_batch: bool = True,
                   batch_size: int = 1, strict: bool = False, fuse: bool = False, atol: float = 1e-4,
                   validate: bool = True, seed: int = 0) -> ProgramExportResult:
    """Export ``model`` (eval mode, on the CPU) with ``torch.export`` and write it at ``path`` (a ``.pt2`` file,
    written atomically), then load the file back and compare it with eager.

    The graph holds vithub's attention ops as ``vithub::`` custom ops (one node per call, as under
    ``torch.compile``), so the file loads in a process that has imported vithub, which registers them.

    Args:
        model: a timm or vithub model whose forward takes one image batch ``(B, C, H, W)``.
        path: the ``.pt2`` file.
        format: ``"torch-export"`` (the ``ExportedProgram``, ``torch.export.save``; load with
            ``torch.export.load``) or ``"aoti"`` (compiled by AOTInductor into a package; load with
            ``torch._inductor.aoti_load_package``).
        img_size: an int or ``(H, W)``; default the model's pretrained cfg input size.
        dynamic_batch: a symbolic batch dimension; otherwise the program is fixed at ``batch_size``.
        strict: trace with TorchDynamo (``strict=True``) instead of the default non-strict tracing.
        fuse: fold BatchNorms first (``model.fuse()``: LeViT, EfficientViT); a no-op elsewhere.
        atol: largest accepted absolute difference between the loaded file and eager.
        validate: load the file and compare with eager (at batch 1 and 3 with ``dynamic_batch``).

    Raises:
        ExportError: a bad argument, an input size the model cannot take, a failed export or compile, or outputs
            further than ``atol`` from eager; nothing is left at ``path`` then.
    """
    if format not in PROGRAM_FORMATS:
        raise ExportError(f"format must be one of {PROGRAM_FORMATS}, got {format!r}")
    target = _checked_target(path, batch_size, ".pt2", format)
    model, input_size, generator, example = _prepared(model, img_size, dynamic_batch, batch_size, fuse, seed)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    staging = staging_dir / target.name
    try:
        try:
            with torch.no_grad():
                program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=strict)
            if format == "aoti":
                torch._inductor.aoti_compile_and_package(program, package_path=str(staging))
            else:
                torch.export.save(program, str(staging))
        except Exception as error:
            raise ExportError(f"torch.export ({'strict' if strict else 'non-strict'}) or its {format} output "
                              f"failed: {type(error).__name__}: {str(error).strip().splitlines()[0]}") from error
        max_diff, sizes = float("nan"), ()
        if validate:
            sizes = (1, 3) if dynamic_batch else (batch_size,)
            max_diff = _validate_program(staging, format, model, input_size, sizes, generator, atol)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return ProgramExportResult(str(target), format, input_size, dynamic_batch, strict, max_diff, tuple(sizes))


def _validate_program(path: Path, format: str, model: torch.nn.Module, input_size: Tuple[int, int, int],
                      sizes: Sequence[int], generator: torch.Generator, atol: float) -> float:
    """The written file, loaded back, against eager at each batch size; the largest difference."""
    if format == "aoti":
        run = torch._inductor.aoti_load_package(str(path))
    else:
        run = torch.export.load(str(path)).module()
    return _compare_with_eager(run, f"the {format} file", model, input_size, sizes, generator, atol)
