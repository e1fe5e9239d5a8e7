"""The timm contract over every registered vh model, plus checks that the contract itself can fail."""

from __future__ import annotations

import pytest
import timm
import torch

import contract
import vithub  # noqa: F401  (registers the vh_* models)

VH_MODELS = timm.list_models("vh_*")


@pytest.fixture(params=VH_MODELS)
def vh_name(request):
    return request.param


def test_registered_names_use_the_vh_prefix():
    from vithub.catalog import list_vithub_models

    assert list_vithub_models() == VH_MODELS
    assert all(name.startswith("vh_") for name in VH_MODELS)


def test_forward_backward(vh_name):
    contract.check_forward_backward(contract.make_model(vh_name), contract.contract_input(vh_name))


def test_features_only(vh_name):
    if contract.refuses_dense_outputs(vh_name):
        with pytest.raises(ValueError, match="no full grid"):
            contract.check_features_only(vh_name, contract.contract_input(vh_name))
        return
    contract.check_features_only(vh_name, contract.contract_input(vh_name))


def test_forward_intermediates(vh_name):
    if contract.refuses_dense_outputs(vh_name):
        with pytest.raises(ValueError, match="no full grid"):
            contract.check_forward_intermediates(contract.make_model(vh_name), contract.contract_input(vh_name))
        return
    contract.check_forward_intermediates(contract.make_model(vh_name), contract.contract_input(vh_name))


def test_reset_classifier(vh_name):
    contract.check_reset_classifier(contract.make_model(vh_name), contract.contract_input(vh_name))


def test_mixed_precision(vh_name):
    contract.check_mixed_precision(contract.make_model(vh_name, drop_path_rate=0.0), contract.contract_input(vh_name))


def test_grad_checkpointing(vh_name):
    contract.check_grad_checkpointing(contract.make_model(vh_name, drop_path_rate=0.0),
                                      contract.contract_input(vh_name))


def test_group_matcher(vh_name):
    contract.check_group_matcher(contract.make_model(vh_name))


def test_odd_input_sizes(vh_name):
    contract.check_odd_sizes(contract.make_model(vh_name))


def test_torch_compile(vh_name):
    contract.check_torch_compile(contract.make_model(vh_name), contract.contract_input(vh_name),
                                 fullgraph=not vh_name.endswith(contract.GRAPH_BREAK_SUFFIXES))


# --- the suite checks itself on timm's own models, so it is known to pass a good model and fail a broken one -------

TIMM_SUBJECT = "resnet10t"


def test_contract_passes_a_well_formed_timm_model():
    model = timm.create_model(TIMM_SUBJECT, pretrained=False)
    size = (64, 64)
    contract.check_forward_backward(model, size)
    contract.check_features_only(TIMM_SUBJECT, size)
    contract.check_forward_intermediates(timm.create_model(TIMM_SUBJECT), size)
    contract.check_reset_classifier(timm.create_model(TIMM_SUBJECT), size)
    contract.check_grad_checkpointing(timm.create_model(TIMM_SUBJECT), size)
    contract.check_odd_sizes(timm.create_model(TIMM_SUBJECT))


def test_contract_catches_a_parameter_without_gradient():
    model = timm.create_model(TIMM_SUBJECT, pretrained=False)
    model.register_parameter("unused", torch.nn.Parameter(torch.randn(3)))
    with pytest.raises(AssertionError, match="parameters without gradient: \\['unused'\\]"):
        contract.check_forward_backward(model, (64, 64))


def test_contract_catches_checkpointing_that_changes_results():
    model = timm.create_model(TIMM_SUBJECT, pretrained=False)
    original = model.set_grad_checkpointing

    def broken(enable=True):
        original(enable)
        model.fc.weight.data.mul_(1.5 if enable else 1 / 1.5)

    model.set_grad_checkpointing = broken
    with pytest.raises(AssertionError):
        contract.check_grad_checkpointing(model, (64, 64))


def test_contract_catches_checkpointing_that_recomputes_nothing():
    """A set_grad_checkpointing that does nothing keeps results equal; the recompute count still catches it."""
    model = timm.create_model("vh_nat_mini", **contract.CONTRACT_KWARGS["vh_nat_*"])
    model.set_grad_checkpointing = lambda enable=True: None
    with pytest.raises(AssertionError, match="recomputed nothing"):
        contract.check_grad_checkpointing(model, (64, 64))


def test_contract_catches_a_stage_that_is_not_checkpointed():
    model = timm.create_model("vh_nat_mini", **contract.CONTRACT_KWARGS["vh_nat_*"])
    original = model.set_grad_checkpointing

    def partial(enable=True):
        original(enable)
        model.stages[2].grad_checkpointing = False

    model.set_grad_checkpointing = partial
    with pytest.raises(AssertionError, match=r"stages\.2\.blocks\.0"):
        contract.check_grad_checkpointing(model, (64, 64))


# --- timm's own model tests, as contract checks (tests/timm_models runs timm's file itself) -------------------------

def test_created_trainable(vh_name):
    contract.check_created_trainable(contract.make_model(vh_name))


def test_output_format(vh_name):
    contract.check_output_format(contract.make_model(vh_name), contract.contract_input(vh_name))


def test_factory_device_and_dtype(vh_name):
    contract.check_factory_device(vh_name)


@pytest.mark.parametrize("name", VH_MODELS)
def test_fx_symbolic_trace(name):
    contract.check_fx(contract.make_model(name, drop_path_rate=0.0), contract.contract_input(name))


def test_contract_catches_shape_dependent_python_in_a_traced_model():
    """A module that branches on a traced shape breaks FX unless it is a registered notrace module."""
    from timm.layers import _fx

    model = contract.make_model("vh_nat_mini")
    cls = type(model.stages[0].blocks[0].attn)
    assert cls in _fx._leaf_modules
    _fx._leaf_modules.discard(cls)
    try:
        with pytest.raises(Exception, match="control flow"):
            contract.check_fx(model, (64, 64))
    finally:
        _fx._leaf_modules.add(cls)


def test_contract_catches_a_frozen_creation_and_a_wrong_output_format():
    model = contract.make_model("vh_nat_mini")
    model.output_fmt = "NCHW"  # NAT's maps are NHWC
    with pytest.raises(AssertionError, match="output_fmt 'NCHW'"):
        contract.check_output_format(model, (64, 64))
    model.stem.requires_grad_(False)
    with pytest.raises(AssertionError, match="created with frozen parameters"):
        contract.check_created_trainable(model)


@pytest.mark.parametrize("name", ["vh_efficientvit_m0", "vh_levit_128s", "vh_fastervit_0_224", "vh_nat_mini",
                                  "vh_swin_tiny_patch4_window7_224"])
def test_training_after_an_inference_mode_evaluation(name):
    """Cached index plans, coordinates and eval biases made under torch.inference_mode() must not be inference
    tensors: a later training step saves them for backward (timm's suite runs inference tests first)."""
    model = contract.make_model(name, drop_path_rate=0.0)
    size = contract.contract_input(name)
    with torch.inference_mode():
        model.eval()(contract.random_images(1, size))
    contract.check_forward_backward(model, size)
    model.eval()
    frozen = contract.make_model(name).eval().requires_grad_(False)
    with torch.inference_mode():
        frozen(contract.random_images(1, size))
    x = contract.random_images(1, size).requires_grad_(True)  # eval, grad wanted for the input only
    frozen(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", VH_MODELS)
def test_torchscript(name):
    contract.check_torchscript(contract.make_model(name, drop_path_rate=0.0), contract.contract_input(name))


def test_contract_catches_a_scripted_model_that_differs_from_eager(monkeypatch):
    real_script = torch.jit.script

    class Shifted(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 1e-3

    monkeypatch.setattr(torch.jit, "script", lambda model: real_script(Shifted(model)))
    with pytest.raises(AssertionError, match="not close"):
        contract.check_torchscript(contract.make_model("vh_nat_mini", drop_path_rate=0.0), (64, 64))
