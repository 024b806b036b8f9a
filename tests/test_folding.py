"""The evaluation copy with BatchNorm folded into its convolutions computes what the model computes."""

import pytest
import torch
from torch import nn

from fedbat_mpi.client.device import in_memory_format, memory_format
from fedbat_mpi.client.folding import FoldedModel, conv_bn_pairs
from fedbat_mpi.client.models import MODEL_INPUT_SHAPES, build_model

CPU = torch.device("cpu")


def _model(name: str, seed: int) -> nn.Module:
    """A model whose BatchNorms have statistics and affine tensors far from their initial ones."""
    torch.manual_seed(seed)
    model = build_model(name, 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.3, 0.3)
    return model.to(memory_format=memory_format(CPU))  # type: ignore[call-overload]  # torch's stubs omit it


def _inputs(name: str) -> torch.Tensor:
    return in_memory_format(torch.randn(16, *MODEL_INPUT_SHAPES[name], generator=torch.Generator().manual_seed(3)), CPU)


@pytest.mark.parametrize("name", list(MODEL_INPUT_SHAPES))
def test_every_batchnorm_of_the_papers_models_is_folded_into_its_convolution(name):
    model = build_model(name, 10)
    pairs = conv_bn_pairs(model)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(bn for _, bn in pairs) == sorted(norms)
    assert all(isinstance(model.get_submodule(conv), nn.Conv2d) for conv, _ in pairs)
    folded = FoldedModel(model).model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


@pytest.mark.parametrize("name", list(MODEL_INPUT_SHAPES))
def test_the_folded_model_computes_the_models_evaluation_from_its_current_tensors(name):
    model, x = _model(name, 0), _inputs(name)
    folded = FoldedModel(model)
    for seed in (1, 2):  # refilled from the model's tensors of the moment: a new "global model" each time
        model.load_state_dict(_model(name, seed).state_dict())
        with torch.no_grad():
            expected = model.eval()(x)
            got = folded.of(model)(x)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_folding_leaves_the_model_itself_untouched():
    model = _model("cnn4-mnist", 0)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    FoldedModel(model).of(model)(_inputs("cnn4-mnist"))
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_batchnorm_whose_convolution_output_is_also_read_elsewhere_is_not_folded():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Branching()
    model.get_buffer("bn.running_mean").uniform_(-0.5, 0.5)
    assert conv_bn_pairs(model) == []
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        assert torch.equal(FoldedModel(model).of(model)(x), model.eval()(x))


def test_folding_keeps_a_convolutions_bias_and_batchnorms_eps():
    """Not in the paper's models (bias-free, variances near 1), so written here: a biased convolution,
    and channels whose running variance is 0 or far below eps, where eps decides the scale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4), nn.ReLU())
    nn.init.uniform_(model.get_parameter("0.bias"), -1.0, 1.0)
    model.get_buffer("1.running_mean").uniform_(-0.5, 0.5)
    model.get_buffer("1.running_var").copy_(torch.tensor([0.0, 1e-7, 1e-5, 2.0]))
    assert conv_bn_pairs(model) == [("0", "1")]
    x = torch.randn(3, 2, 5, 5)
    with torch.no_grad():
        expected = model.eval()(x)
        got = FoldedModel(model).of(model)(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
