"""The global model as evaluation runs it: each BatchNorm folded into the convolution before it.

In evaluation a BatchNorm is a per-channel affine map of its running statistics,
``y = (x - mean) * gamma / sqrt(var + eps) + beta``; after a convolution ``x = W * input (+ c)`` it is
the convolution with weight ``W * s`` and bias ``beta + (c - mean) * s``, ``s = gamma / sqrt(var +
eps)``: one pass over the activations fewer per BatchNorm (evaluation 1.3x faster for CNN4 on the CPU,
BENCHMARKS.md §10). Outputs equal the unfolded model's up to float rounding. Which BatchNorm follows
which convolution is read from the model's traced data flow (``torch.fx``), not from names.
"""

import copy
from typing import Any, cast

import torch
from torch import fx, nn


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(convolution, BatchNorm)`` module names where the BatchNorm (affine, with running statistics)
    is the only reader of the convolution's output."""
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source, norm = node.args[0], modules[node.target]
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1
                and norm.affine and norm.track_running_stats):  # fmt: skip
            pairs.append((str(source.target), str(node.target)))  # call_module targets: module names
    return pairs


class FoldedModel:
    """An evaluation copy of ``model`` (built once) with its convolution-BatchNorm pairs folded; ``of``
    refills it from the model's current tensors."""

    def __init__(self, model: nn.Module):
        self.pairs = conv_bn_pairs(model)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        for conv_name, norm_name in self.pairs:
            conv = self.model.get_submodule(conv_name)
            if conv.bias is None:
                conv.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels), requires_grad=False)
            parent, _, child = norm_name.rpartition(".")
            setattr(self.model.get_submodule(parent), child, nn.Identity())
        folded = {f"{conv_name}.{kind}" for conv_name, _ in self.pairs for kind in ("weight", "bias")}
        self.copied = [(name, tensor) for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]
                       if name not in folded]  # fmt: skip

    @torch.no_grad()
    def of(self, model: nn.Module) -> nn.Module:
        """The folded copy, in evaluation mode, computing what ``model.eval()`` computes with its tensors now."""
        source = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for name, tensor in self.copied:  # every tensor but the folded convolutions' (computed below)
            tensor.copy_(source[name])
        for conv_name, norm_name in self.pairs:
            conv = cast(nn.Conv2d, model.get_submodule(conv_name))
            # A BatchNorm2d with running statistics, and a convolution given a bias by __init__ (stubs: Optional).
            norm: Any = model.get_submodule(norm_name)
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = -norm.running_mean if conv.bias is None else conv.bias - norm.running_mean
            folded: Any = self.model.get_submodule(conv_name)
            folded.weight.copy_(conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1)))
            folded.bias.copy_(norm.bias + shift * scale)
        return self.model
