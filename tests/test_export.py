"""ONNX export: every registered model, in its small contract form, exports (dynamic batch, opset 18) at two input
sizes and runs in ONNX Runtime within 1e-4 of eager at two batch sizes (every registered model at its full size:
``benchmarks/export_all.py``); each attention op's export form against the reference backend; ``torch.export``
with a dynamic batch; ``vithub export`` and its bad inputs; ``vithub bench export``."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import types
import warnings
from pathlib import Path
from typing import List, Tuple

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import contract
import vithub
from vithub.export import ExportError, export_onnx, redraw_weights

REPO_ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime", reason="ONNX export tests need the export extra: pip install 'vithub[export]'")
pytest.importorskip("onnxscript", reason="ONNX export tests need the export extra: pip install 'vithub[export]'")

VH_MODELS = timm.list_models("vh_*")
TOKEN_REDUCED_SUFFIXES = ("_tome", "_ltmp", "_cropr")


@pytest.fixture(autouse=True)
def _quiet_exporter():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_sizes(name: str) -> List[Tuple[int, int]]:
    """The contract's input size and a non-square one (patch-aligned for the token-reduced ViTs)."""
    return [contract.contract_input(name), (80, 48) if name.endswith(TOKEN_REDUCED_SUFFIXES) else contract.ODD_INPUTS[0]]


class _OpTrace(TorchDispatchMode):
    """Every ATen call of a forward with its arguments: tensors as shape, dtype and strides, anything else as is."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}

        def describe(value):
            if isinstance(value, torch.Tensor):
                return f"T{tuple(value.shape)}{value.dtype}{value.stride()}"
            if isinstance(value, (list, tuple)):
                return "[" + ",".join(describe(item) for item in value) + "]"
            return repr(value)

        self.calls.append(f"{func}({describe(list(args))},{describe(sorted(kwargs.items()))})")
        return func(*args, **kwargs)


def network_fingerprint(model: torch.nn.Module, size: Tuple[int, int]) -> str:
    """A digest of what the exporter traces: every ATen call (with shapes and arguments) of a second eager forward
    in the export forms of the attention ops, at the export's example batch, and every state tensor (name, shape,
    values). Two models with one fingerprint export to the same graph with the same weights."""
    from vithub.kernels import use_backend

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    trace = _OpTrace()
    images = contract.random_images(2, size)
    with torch.no_grad(), use_backend("onnx"):
        model.eval()(images)  # fills the caches (bias tables, masks), which would make a first trace differ
        with trace:
            model(images)
    digest.update("\n".join(trace.calls).encode())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def checked_exports(tmp_path_factory) -> Path:
    """A folder this test session's processes share (all pytest-xdist workers of one run, not other runs): one
    file per network and size whose export was checked (holding the model's name), so a network is exported once
    per run (twice at most, when two workers reach it at the same moment)."""
    base = tmp_path_factory.getbasetemp()
    session_root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = session_root / "checked-onnx-exports"
    folder.mkdir(exist_ok=True)
    return folder


class _LogitsAndFeatureMaps(torch.nn.Module):
    """What the per-model export test compares: the logits and, before any pooling, every stage's map (the
    hierarchical families, through ``forward_intermediates``) or the final tokens (ToMe and Cropr), flattened and
    concatenated. An error inside a stage shows in its map, where the pooled logits average most of it away:
    EfficientViT-M's window grid transposed in the export moved the logits by 8e-6 and the maps by 1e-2. LTMP gives
    the logits only: eager compacts its sequence to the surviving tokens (a data-dependent length) where the export
    keeps them all, and the dropped tokens' values are not defined, so only the pooled result is comparable."""

    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.features = ("logits" if name.endswith("_ltmp") else "tokens" if name.endswith(TOKEN_REDUCED_SUFFIXES)
                         else "maps")
        self.pretrained_cfg = model.pretrained_cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.features == "maps":
            features, maps = self.model.forward_intermediates(images)
        else:
            features = self.model.forward_features(images)
            maps = [features] if self.features == "tokens" else []
        return torch.cat([self.model.forward_head(features).flatten(1)] + [m.flatten(1) for m in maps], dim=1)


@pytest.mark.parametrize("name", VH_MODELS)
def test_every_registered_model_exports_and_matches_eager_in_onnx_runtime(name, tmp_path, checked_exports):
    """Every registered model at its contract size (small widths, one or two blocks per stage), with every weight
    and BatchNorm statistic redrawn (``vithub.export.redraw_weights``: at init, zero-initialised branch outputs hide
    any error inside those branches), at the contract's input size and a non-square one: dynamic batch, ONNX
    Runtime within 1e-4 of eager at batch 1 and 3, on the logits and every stage's map (see the class above).
    Models whose small forms are the same network (variants that differ only in widths and depths the contract
    sets, e.g. EfficientViT-B0..B3) trace to the same ATen calls with the same weights, so the same ONNX graph:
    that graph is exported and checked once per run, and the others are checked to be that network. Every
    registered model at its full size: ``benchmarks/export_all.py`` (15 s to 5 min each, too long for CI)."""
    for size in export_sizes(name):
        model = redraw_weights(contract.make_model(name)).eval()
        checked_form = _LogitsAndFeatureMaps(model, name)
        images = contract.random_images(2, size)
        with torch.no_grad():
            logits = model(images)
            assert torch.equal(checked_form(images)[:, :logits.shape[1]], logits)
        checked = checked_exports / f"{network_fingerprint(checked_form, size)}-{size[0]}x{size[1]}"
        if checked.exists():
            continue
        result = export_onnx(checked_form, tmp_path / "model.onnx", img_size=size, dynamic_batch=True)
        assert result.max_abs_diff <= 1e-4 and result.validated_batch_sizes == (1, 3)
        assert result.input_size[1:] == size and result.dynamic_batch
        assert Path(result.path).is_file() and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
        checked.write_text(f"{name} max_abs_diff={result.max_abs_diff:.3g}")


def test_redrawn_weights_reach_every_branch_and_are_reproducible():
    """At init EfficientViT-M's residual branches end in zero-initialised BatchNorms, so the model is nearly the
    identity of its stem and an export error inside a branch cannot show; redrawn, every parameter but LTMP's
    thresholds differs from init, the branches move the output, and one seed gives one model."""
    images = contract.random_images(2, (64, 64))
    initial = contract.make_model("vh_efficientvit_m0").eval()
    redrawn = redraw_weights(contract.make_model("vh_efficientvit_m0")).eval()
    for (key, before), after in zip(initial.state_dict().items(), redrawn.state_dict().values(), strict=True):
        if before.is_floating_point():
            assert not torch.equal(before, after), key
    branch_outputs = []
    hook = redrawn.stages[0].blocks[0].mixer.m.register_forward_hook(lambda _, __, out: branch_outputs.append(out))
    with torch.no_grad():
        assert initial(images).abs().max() < 1e-3 < redrawn(images).abs().max()
    hook.remove()
    assert branch_outputs[0].abs().mean() > 1e-2
    again = redraw_weights(contract.make_model("vh_efficientvit_m0"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), redrawn.state_dict().values(),
                                                  strict=True))
    other = redraw_weights(contract.make_model("vh_efficientvit_m0"), seed=1)
    assert not torch.equal(next(other.parameters()), next(redrawn.parameters()))
    ltmp = contract.make_model("vh_deit_tiny_patch16_224_ltmp")
    thresholds = {key: value.clone() for key, value in ltmp.named_parameters() if "threshold" in key}
    redraw_weights(ltmp)
    assert thresholds and all(torch.equal(value, dict(ltmp.named_parameters())[key])
                              for key, value in thresholds.items())


def test_the_network_fingerprint_tells_networks_apart():
    """The de-duplication above is only as good as the fingerprint: it must change with a width, a depth, a
    window, a weight or the input size, and stay put for an identical model."""
    name = "vh_swin_tiny_patch4_window7_224"
    base = network_fingerprint(contract.make_model(name), (64, 64))
    assert network_fingerprint(contract.make_model(name), (64, 64)) == base
    assert network_fingerprint(contract.make_model(name), (72, 40)) != base
    assert network_fingerprint(contract.make_model(name, window_size=4), (64, 64)) != base
    assert network_fingerprint(contract.make_model(name, depths=(1, 2, 2, 2)), (64, 64)) != base
    assert network_fingerprint(contract.make_model(name, embed_dim=24), (64, 64)) != base
    changed = contract.make_model(name)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert network_fingerprint(changed, (64, 64)) != base
    # a change in an op's non-tensor argument alone (the attention scale) shows too
    scaled = contract.make_model(name)
    scaled.layers[0].blocks[0].attn.scale *= 2
    assert network_fingerprint(scaled, (64, 64)) != base


def _op_module(op):
    class Op(torch.nn.Module):
        def forward(self, *inputs):
            return op(*inputs)
    return Op().eval()


def _onnx_matches_reference(op, inputs, tmp_path, atol=1e-5):
    import onnxruntime

    from vithub.kernels import use_backend

    tmp_path.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(_op_module(op), tuple(inputs), dynamo=True, opset_version=18, verbose=False)
    program.save(str(tmp_path / "op.onnx"))
    text = (tmp_path / "op.onnx").read_bytes()
    assert b"vithub" not in text  # standard operators only
    session = onnxruntime.InferenceSession(str(tmp_path / "op.onnx"), providers=["CPUExecutionProvider"])
    feeds = {arg.name: tensor.numpy() for arg, tensor in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)
    with use_backend("reference"), torch.no_grad():
        expected = op(*[tensor.double() for tensor in inputs])
    expected = expected if isinstance(expected, (tuple, list)) else [expected]
    assert len(got) == len(expected), f"ONNX Runtime gave {len(got)} outputs, the op {len(expected)}"
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(out).double(), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("kernel, dilation, size, rpb", [(3, 1, (6, 7), True), (5, 2, (11, 10), True),
                                                         ((3, 5), (2, 1), (8, 9), False), (4, 1, (7, 6), True),
                                                         (7, 1, (7, 9), True)])
def test_neighborhood_attention_export_form_matches_the_reference(kernel, dilation, size, rpb, tmp_path):
    from vithub.kernels import neighborhood_attention

    torch.manual_seed(1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    q, k, v = (torch.randn(2, *size, 2, 8) for _ in range(3))
    inputs = [q, k, v] + ([torch.randn(2, 2 * kh - 1, 2 * kw - 1)] if rpb else [])

    def op(q, k, v, table=None):
        return neighborhood_attention(q, k, v, kernel, dilation, rpb=table)

    _onnx_matches_reference(op, inputs, tmp_path)


@pytest.mark.parametrize("window, shift, size, unpadded", [(3, 0, (6, 9), None), (3, 1, (6, 9), None),
                                                           ((4, 2), (2, 1), (8, 6), None), (3, 1, (9, 9), (8, 7)),
                                                           ((3, 5), 0, (3, 5), None), ((3, 5), (1, 2), (3, 5), None)])
def test_window_attention_export_form_matches_the_reference(window, shift, size, unpadded, tmp_path):
    from vithub.kernels import window_attention

    torch.manual_seed(2)
    wh, ww = (window, window) if isinstance(window, int) else window
    q, k, v = (torch.randn(2, *size, 3, 4) for _ in range(3))
    table = torch.randn(3, 2 * wh - 1, 2 * ww - 1)

    def op(q, k, v, table):
        return window_attention(q, k, v, window, shift, rpb=table, unpadded_size=unpadded)

    _onnx_matches_reference(op, [q, k, v, table], tmp_path)


def test_the_other_ops_export_forms_match_the_reference(tmp_path):
    from vithub.kernels import (carrier_window_attention, global_attention, relu_linear_attention,
                                table_bias_attention)

    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 6, 2, 8) for _ in range(3))
    carriers = [torch.randn(2, 2, 3, 1, 2, 8) for _ in range(3)]  # one carrier per 2x2 window
    table = torch.randn(2, 3, 3)

    def carrier(q, k, v, cq, ck, cv, table):
        out, carrier_out = carrier_window_attention(q, k, v, cq, ck, cv, (2, 2), rpb=table)
        return out, carrier_out

    _onnx_matches_reference(carrier, [q, k, v, *carriers, table], tmp_path / "carrier")
    bias_table = torch.randn(2, 4, 4)

    def table_op(q, k, v, bias):
        return table_bias_attention(q, k, v, bias_table=bias)

    q16, k16, v16 = (torch.randn(2, 4, 4, 2, 8) for _ in range(3))
    _onnx_matches_reference(table_op, [q16, k16, v16, bias_table], tmp_path / "table")
    _onnx_matches_reference(lambda q, k, v: relu_linear_attention(q, k, v), [q, k, v], tmp_path / "linear")
    flat = [torch.randn(2, 9, 2, 8) for _ in range(3)]
    key_bias, key_mask = torch.randn(2, 9), torch.rand(2, 9) + 0.1
    _onnx_matches_reference(lambda q, k, v, b, m: global_attention(q, k, v, key_bias=b, key_mask=m),
                            [*flat, key_bias, key_mask], tmp_path / "global")


def _export_with_twin(name: str, tmp_path, dynamic_batch: bool) -> dict:
    """Export the contract-sized ``name`` and its timm twin (``name`` without ``vh_``, same kwargs and seed) at 64x64;
    returns ``{model name: onnx path}``."""
    kwargs = contract.contract_kwargs(name)
    paths = {}
    for model_name in (name, name[len("vh_"):]):
        torch.manual_seed(0)
        model = timm.create_model(model_name, **kwargs)
        paths[model_name] = tmp_path / f"{model_name}.onnx"
        export_onnx(model, paths[model_name], img_size=64, dynamic_batch=dynamic_batch,
                    validate=model_name.startswith("vh_"))
    return paths


def test_efficientvit_m_exports_with_no_more_transposes_than_timms(tmp_path):
    """ONNX Runtime runs each Transpose node as a copy: with the heads' outputs concatenated channels-last (the eager
    layout), M5's export held 120 against timm's 62 and lost 6-7% to them (``benchmarks/profile_onnxruntime.py``).
    Exported, the cascade concatenates NCHW maps and windows are cut in NCHW, so the attention form's permutes
    cancel. Padded windows (3x3 on a 4x4 map) take the window-cutting path."""
    import onnx

    counts = {name: sum(node.op_type == "Transpose" for node in onnx.load(str(path)).graph.node)
              for name, path in _export_with_twin("vh_efficientvit_m0", tmp_path, dynamic_batch=False).items()}
    assert 0 < counts["vh_efficientvit_m0"] <= counts["efficientvit_m0"], counts


def test_efficientvit_b_runs_fewer_transposes_than_timms_in_onnx_runtime(tmp_path):
    """Exported, EfficientViT-B/L's attention splits q, k and v channel-major and the op's export form works on that
    layout, so the permutes to and from heads-last meet in ONNX Runtime's graph and both go. Heads-last (the eager
    layout), B1's graph ran more Transposes a forward than timm's."""
    import onnx
    import onnxruntime

    counts = {}
    for name, path in _export_with_twin("vh_efficientvit_b0", tmp_path, dynamic_batch=True).items():
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.optimized.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
        counts[name] = sum(node.op_type == "Transpose" for node in graph.node)
    assert counts["vh_efficientvit_b0"] < counts["efficientvit_b0"], counts


def test_fastervit_export_has_the_official_graph_shape(tmp_path):
    """A linear on a 3-D token map exports as MatMul plus a separate bias Add, which ONNX Runtime runs as two passes;
    exported, FasterViT's attention and MLP linears run on the 2-D token matrix and export as one Gemm each, as the
    official model's do (``benchmarks/profile_onnxruntime.py``: 0 Gemms and 159 Adds run against its 35 and 125).
    Blocks with carriers hold the map as per-window sequences, so each concatenates its carriers once (the eager
    form's token matrix exported 7 Concats per such block: 42 run in FasterViT-0 against the official 6)."""
    import onnx

    model = redraw_weights(contract.make_model("vh_fastervit_0_224")).eval()
    token_linears = sum(isinstance(module, torch.nn.Linear) and "cpb_mlp" not in name
                        for name, module in model.named_modules())
    carrier_blocks = len(model.stages[2].blocks)  # at 64x64 only stage 2 has several (2x2) windows, so carriers
    assert model.stages[2].global_tokenizer is not None and model.stages[3].global_tokenizer is None
    path = tmp_path / "fastervit.onnx"
    export_onnx(model, path, img_size=64, dynamic_batch=True)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Gemm") >= token_linears > 10, (ops.count("Gemm"), token_linears)
    assert 0 < ops.count("Concat") <= carrier_blocks, ops.count("Concat")


def test_vithub_export_command_and_its_bad_inputs(tmp_path, capsys, monkeypatch):
    from vithub import cli

    output = tmp_path / "out" / "m0.onnx"
    assert cli.main(["export", "vh_efficientvit_m0", "--no-pretrained", "--output", str(output), "--img-size", "96",
                     "80", "--dynamic-batch", "--fuse"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert output.is_file() and report["input_size"] == [3, 96, 80] and report["max_abs_diff"] <= 1e-4
    assert "max abs diff" in captured.err
    # the same file from Python, at a fixed batch of 2
    result = vithub.export_onnx(timm.create_model("vh_efficientvit_m0"), tmp_path / "fixed.onnx", img_size=64,
                                dynamic_batch=False, batch_size=2)
    assert result.validated_batch_sizes == (2,)

    def refused(argv, message):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no partial file anywhere

    bad = str(tmp_path / "bad.onnx")
    refused(["export", "vh_not_a_model", "--output", bad], "is not a registered model")
    refused(["export", "vh_deit_tiny_patch16_224_tome", "--no-pretrained", "--output", bad, "--img-size", "64"],
            "cannot take input size 64x64")
    refused(["export", "vh_efficientvit_m0", "--no-pretrained", "--output", str(tmp_path / "bad.txt")],
            "output must be a .onnx file")
    refused(["export", "vh_efficientvit_m0", "--no-pretrained", "--output", bad, "--img-size", "64", "0"],
            "img_size must be >= 1 in each axis")
    refused(["export", "vh_efficientvit_m0", "--no-pretrained", "--output", bad, "--opset", "13"],
            "opset must be an int >= 18")
    refused(["export", "vh_efficientvit_m0", "--no-pretrained", "--output", bad, "--atol", "0"],
            "ONNX Runtime outputs differ from eager")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    with pytest.raises(ExportError, match=r"needs onnxscript: pip install 'vithub\[export\]'"):
        export_onnx(timm.create_model("vh_efficientvit_m0"), tmp_path / "x.onnx")


def test_weights_as_external_data_land_beside_the_model_and_still_load(tmp_path):
    """Models past ONNX's 2 GB limit (FasterViT-5/6) save their weights to ``<name>.onnx.data``: forced here on a
    small network (the mechanics do not depend on the model). Both files end beside each other under their final
    names, the model still finds its weights after the move, and a failed validation leaves neither."""
    import onnxruntime

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(64, 1000)).eval()
    target = tmp_path / "models" / "m0.onnx"
    export_onnx(model, target, img_size=64, external_data=True)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m0.onnx", "m0.onnx.data"]
    weight_bytes = 4 * sum(param.numel() for param in model.parameters())
    assert (target.parent / "m0.onnx.data").stat().st_size >= 0.9 * weight_bytes > target.stat().st_size
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ExportError, match="differ from eager"):
        export_onnx(model, tmp_path / "failed" / "m0.onnx", img_size=64, external_data=True, atol=0.0)
    assert list((tmp_path / "failed").iterdir()) == []


def test_export_bench_times_twin_and_fused_exports_and_says_what_it_could_not_compare(tmp_path, caplog, monkeypatch):
    import logging

    from vithub.bench import export as bench

    caplog.set_level(logging.INFO, logger="vithub")  # the table goes through vithub's loggers

    output = tmp_path / "export.json"
    # LeViT-128S: the quickest family with a timm twin and fuse() to export (three exports here)
    # exported once, timed in two fresh processes
    payload = bench.bench_export(pairs=[("vh_levit_128s", None)], batch_sizes=(2,), repeats=1, threads=1,
                                 output=str(output), processes=2)
    assert json.loads(output.read_text()) == payload and payload["processes"] == 2
    (row,) = payload["rows"]
    assert row["compared_with"] == "levit_128s" and row["same_weights"] is True
    runs = row["ms_runs"]
    # the A/A control: a second session of the twin's own file, timed with the others
    assert set(runs) == {"vithub", "fused", "twin", "twin_again"} and all(len(values) == 2 for values in runs.values())
    assert payload["control"] is True and runs["twin_again"] != runs["twin"]
    assert row["ms"] == round(statistics.median(runs["vithub"]), 3)
    for label, key in (("vithub", "speed_vs_twin"), ("fused", "fused_speed_vs_twin"), ("twin_again", "control_ratio")):
        ratios = [round(twin / ours, 3) for twin, ours in zip(runs["twin"], runs[label])]
        assert row[key] == round(statistics.median(ratios), 3) and row[key + "_range"] == [min(ratios), max(ratios)]
    table = caplog.text
    assert "process 2 of 2" in table and "vh_levit_128s" in table and "fused ratio" in table
    assert "twin vs itself" in table
    # one process: the ratio is that run's
    (single,) = bench._row({"model": "m", "compared_with": "t", "same_weights": True, "no_comparison": ""}, 4,
                           [{"vithub": 2.0, "twin": 3.0}])["speed_vs_twin"],
    assert single == 1.5
    # an official model whose package is missing is not compared, and the row will say why
    monkeypatch.setattr(bench, "OFFICIAL_PACKAGES", {"levit_": "vithub_no_such_package"})
    model, name, same_layout, missing = bench._comparison("vh_levit_128s", "levit_128s")
    assert model is None and name == "levit_128s" and "'vithub_no_such_package' package" in missing
    assert bench._comparison("vh_nat_mini", None)[3].startswith("vh_nat_mini has no timm twin")
    # every timed call settles first: back to back, one session's spinning threads slowed the next one's run
    settings, orders = {}, []

    def record_measure(candidates, repeats, **options):
        settings.update(options)
        orders.append(list(candidates))
        return {label: float(index) for index, label in enumerate(candidates)}

    session = types.SimpleNamespace(get_inputs=lambda: [types.SimpleNamespace(name="images")])
    monkeypatch.setattr(bench, "_session", lambda path, threads: session)
    monkeypatch.setattr(bench, "measure", record_measure)
    files = {"vithub": "a.onnx", "fused": "b.onnx", "twin": "c.onnx"}
    assert bench.time_exports([{"files": files}], [1], 1, 8, 1) == [{"vithub": 0.0, "fused": 1.0, "twin": 2.0}]
    assert settings["settle_s"] == bench.SETTLE_SECONDS > 0
    # process i makes and times the sessions in an order rotated by i; the answer keeps the files' order
    timings = bench.time_exports([{"files": files}], [1], 1, 8, 1, order_shift=4)
    assert orders[-1] == ["fused", "twin", "vithub"] and list(timings[0]) == list(files)
    assert timings == [{"vithub": 2.0, "fused": 0.0, "twin": 1.0}]
    # the command line reaches the control switch
    from vithub.cli import main

    calls = []
    monkeypatch.setattr(bench, "bench_export", lambda **options: calls.append(options))
    for flags, control in (([], True), (["--no-control"], False)):
        assert main(["bench", "export", "--export-models", "vh_levit_128s", "--output", "", *flags]) == 0
        assert calls[-1]["control"] is control and calls[-1]["pairs"] == [("vh_levit_128s", None)]


def test_backbones_keep_one_forward_per_block():
    """The ONNX export forms live in ``vithub.export_forms`` (a module swap) and the kernel layer: no family file
    asks whether it is being exported."""
    for path in (REPO_ROOT / "backbones").rglob("*.py"):
        text = path.read_text()
        for needle in ("exporting_onnx", "is_in_onnx_export", "is_exporting"):
            assert needle not in text, f"{path.relative_to(REPO_ROOT)} has an export branch ({needle})"


def test_export_forms_swap_only_the_layout_and_always_swap_back():
    """Every export form is a subclass of its eager class that adds no parameter, buffer or constructor; inside
    ``export_forms`` the modules run them, and the eager classes come back on exit, an exception included."""
    from vithub.export_forms import EXPORT_FORMS, export_forms

    for eager, form in EXPORT_FORMS.items():
        assert issubclass(form, eager) and "__init__" not in vars(form), form
    model = contract.make_model("vh_efficientvit_m0").eval()
    classes = {name: type(module) for name, module in model.named_modules()}
    keys = list(model.state_dict())
    with pytest.raises(RuntimeError, match="left early"):
        with export_forms(model):
            swapped = {name for name, module in model.named_modules() if type(module) is not classes[name]}
            assert swapped and all(type(model.get_submodule(name)) is EXPORT_FORMS[classes[name]]
                                   for name in swapped)
            raise RuntimeError("left early")
    assert {name: type(module) for name, module in model.named_modules()} == classes
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("name, size", [("vh_fastervit_0_224", (240, 200)), ("vh_efficientvit_m0", (240, 176)),
                                        ("vh_efficientvit_b0", (64, 64))])
def test_a_plain_torch_onnx_export_runs_the_eager_layouts(name, size, tmp_path):
    """Without ``vithub.export_onnx`` (so without the export forms) a plain ``torch.onnx.export`` still works: the
    attention ops switch to standard operators inside the kernel layer; carrier windows and padded windows
    included."""
    import onnxruntime

    model = redraw_weights(contract.make_model(name)).eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.onnx.export(model, (images,), dynamo=True, verbose=False, report=False).save(str(tmp_path / "m.onnx"))
        expected = model(images)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kernel, dilation, size", [(3, 2, (9, 8)), ((5, 3), (1, 2), (7, 10)), (5, 3, (17,))])
def test_unfused_neighborhood_ops_export_to_onnx(kernel, dilation, size, tmp_path):
    """qk -> softmax -> av exports with standard operators (1-D and 2-D, rpb included) and ONNX Runtime gives the
    reference's result."""
    from vithub.kernels import neighborhood_attention_av, neighborhood_attention_qk, use_backend

    torch.manual_seed(2)
    sizes = (kernel,) * len(size) if isinstance(kernel, int) else kernel
    q, k, v = (torch.randn(2, *size, 2, 8) for _ in range(3))
    table = torch.randn(2, *(2 * s - 1 for s in sizes))

    def op(q, k, v, table):
        weights = neighborhood_attention_qk(q, k, kernel, dilation, table).softmax(-1)
        return neighborhood_attention_av(weights, v, kernel, dilation)

    _onnx_matches_reference(op, [q, k, v, table], tmp_path)
    # the export traced the torch backend's index arithmetic with symbolic values: an eager call at the same sizes
    # afterwards must not reuse them (it once read a cached symbolic position and failed)
    with use_backend("torch"):
        eager = op(q, k, v, table)
    with use_backend("reference"):
        torch.testing.assert_close(eager, op(q, k, v, table), rtol=1e-5, atol=1e-5)
