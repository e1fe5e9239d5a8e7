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
