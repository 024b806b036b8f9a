"""Architectures, parameter counts and initialisation of the paper's models."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedbat_mpi.client.models import MODEL_INPUT_SHAPES, binarized_names, build_model
from fedbat_mpi.errors import UsageError

# (model, classes, binarized weights, binarized tensors, BN channels) from docs/FEDBAT.md §1.10
CASES = [
    ("cnn4-mnist", 10, 389_920, 5, 480),
    ("cnn4", 10, 398_176, 5, 480),
    ("resnet10", 10, 4_897_472, 13, 2_880),
    ("resnet10", 100, 4_943_552, 13, 2_880),
]


@pytest.mark.parametrize(("name", "classes", "weights", "tensors", "bn_channels"), CASES)
def test_counts_and_forward_shape(name: str, classes: int, weights: int, tensors: int, bn_channels: int) -> None:
    model = build_model(name, classes)
    state = model.state_dict()
    names = binarized_names(model)
    assert len(names) == tensors
    assert sum(state[k].numel() for k in names) == weights
    assert sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)) == bn_channels
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, *MODEL_INPUT_SHAPES[name]))
    assert out.shape == (3, classes)


@pytest.mark.parametrize("name", sorted(MODEL_INPUT_SHAPES))
def test_bias_free_and_initialisation(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert module.bias is None
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    for name in binarized_names(model):  # each tensor, the classifier too: N(0, 0.01)
        weight = model.state_dict()[name].flatten()
        spread = 0.01 / np.sqrt(weight.numel())  # the standard error of a mean of N(0, 0.01) draws
        assert abs(weight.std().item() / 0.01 - 1) < 0.25 and abs(weight.mean().item()) < 5 * spread, name


def test_binarized_names_in_state_dict_order() -> None:
    model = build_model("resnet10", 10)
    names = binarized_names(model)
    keys = list(model.state_dict())
    assert names == sorted(names, key=keys.index)
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight"
    assert "layer2.shortcut.0.weight" in names
    assert all(k.endswith(".weight") and model.get_parameter(k).dim() in (2, 4) for k in names)


def test_seeded_initialisation_is_reproducible() -> None:
    torch.manual_seed(7)
    first = build_model("cnn4", 10).state_dict()
    torch.manual_seed(7)
    second = build_model("cnn4", 10).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_functional_call_with_replaced_weights() -> None:
    model = build_model("cnn4-mnist", 10).eval()
    x = torch.randn(2, *MODEL_INPUT_SHAPES["cnn4-mnist"])
    name = binarized_names(model)[-1]
    zeros = {name: torch.zeros_like(model.get_parameter(name))}
    assert torch.count_nonzero(functional_call(model, zeros, (x,))) == 0
    assert torch.count_nonzero(model(x)) > 0


def test_unknown_model_names_option() -> None:
    with pytest.raises(UsageError, match="--model"):
        build_model("vgg16", 10)
