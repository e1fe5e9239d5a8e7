"""torch.export (strict and non-strict) and AOTInductor packages of every family's representative, and
``vithub export --format torch-export|aoti``: the written file, loaded back, equals eager within 1e-4 at batch
sizes other than the one traced (a dynamic batch)."""

from __future__ import annotations

import json

import pytest
import torch

import contract
import vithub
from vithub.export import ExportError, export_program

# one model per family (small contract sizes), the token-reduction methods included
REPRESENTATIVES = ["vh_nat_mini", "vh_dinat_mini", "vh_swin_tiny_patch4_window7_224", "vh_fastervit_0_224",
                   "vh_efficientvit_m0", "vh_efficientvit_b0", "vh_efficientvit_l1", "vh_levit_128s",
                   "vh_deit_tiny_patch16_224_tome", "vh_deit_tiny_patch16_224_ltmp", "vh_deit_tiny_patch16_224_cropr"]


def _model(name: str) -> torch.nn.Module:
    return contract.make_model(name).eval()


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_torch_export_equals_eager_with_a_dynamic_batch(name, strict, tmp_path):
    model = _model(name)
    size = contract.contract_input(name)
    result = export_program(model, tmp_path / f"{name}.pt2", img_size=size, strict=strict)
    assert result.validated_batch_sizes == (1, 3) and result.max_abs_diff <= 1e-4
    program = torch.export.load(str(tmp_path / f"{name}.pt2"))
    images = contract.random_images(5, size, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), model(images), rtol=1e-4, atol=1e-4)


def test_exported_ltmp_drops_what_eager_drops():
    """An exported graph cannot shrink the sequence by data-dependent counts; it keeps every token and lets the
    masks leave the dropped ones out, as the ONNX export does. With thresholds at which images keep different
    numbers of tokens, its logits are eager's."""
    model = _model("vh_deit_tiny_patch16_224_ltmp")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(20)  # peaked attention, so importance tells tokens apart
        model.ltmp_merge_thresholds.fill_(0.5)
        model.ltmp_prune_thresholds.fill_(0.04)
    images = contract.random_images(4, (64, 64), seed=1)
    with torch.no_grad():
        expected = model(images)
    assert model.token_counts[-1] < model.token_counts[0]  # eager really dropped tokens
    program = torch.export.export(model, (images[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), expected, rtol=1e-4, atol=1e-4)


# one per family module (DiNAT is NAT's, L is B's; LTMP, whose masks stand in for dropped tokens, for token reduction)
AOTI_REPRESENTATIVES = ["vh_nat_mini", "vh_swin_tiny_patch4_window7_224", "vh_fastervit_0_224", "vh_efficientvit_m0",
                        "vh_efficientvit_b0", "vh_levit_128s", "vh_deit_tiny_patch16_224_ltmp"]


@pytest.mark.parametrize("name", AOTI_REPRESENTATIVES)
def test_aoti_package_equals_eager_with_a_dynamic_batch(name, tmp_path):
    model = _model(name)
    size = contract.contract_input(name)
    path = tmp_path / f"{name}.pt2"
    result = export_program(model, path, format="aoti", img_size=size)
    assert result.format == "aoti" and result.max_abs_diff <= 1e-4 and path.is_file()
    package = torch._inductor.aoti_load_package(str(path))
    images = contract.random_images(4, size, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(package(images), model(images), rtol=1e-4, atol=1e-4)


def test_vithub_export_torch_export_command_and_its_bad_inputs(tmp_path, capsys):
    from vithub import cli

    output = tmp_path / "out" / "m0.pt2"
    assert cli.main(["export", "vh_efficientvit_m0", "--no-pretrained", "--format", "torch-export", "--output",
                     str(output), "--img-size", "96", "80", "--dynamic-batch", "--fuse", "--strict"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert output.is_file() and report["format"] == "torch-export" and report["strict"] is True
    assert report["input_size"] == [3, 96, 80] and report["max_abs_diff"] <= 1e-4 and "max abs diff" in captured.err

    def refused(argv, message):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no partial file anywhere

    refused(["export", "vh_efficientvit_m0", "--no-pretrained", "--format", "aoti", "--output",
             str(tmp_path / "m0.onnx")], "must be a .pt2 file")
    refused(["export", "vh_deit_tiny_patch16_224_tome", "--no-pretrained", "--format", "torch-export", "--output",
             str(tmp_path / "bad.pt2"), "--img-size", "64"], "cannot take input size 64x64")


def test_a_program_that_differs_from_eager_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    model = _model("vh_nat_mini")
    real_load = torch.export.load

    def shifted(path):  # a loaded program whose outputs are off by 1e-2
        program = real_load(path)

        class Off(torch.nn.Module):
            def forward(self, x):
                return program.module()(x) + 1e-2

        return type("P", (), {"module": lambda self: Off()})()

    monkeypatch.setattr(torch.export, "load", shifted)
    with pytest.raises(ExportError, match="differ from eager"):
        export_program(model, tmp_path / "nat.pt2", img_size=64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="format must be one of"):
        export_program(model, tmp_path / "nat.pt2", format="tflite")
    assert vithub.export_program is export_program
