"""A model that runs a group of clients in one call, each client with its own tensors.

``grouped_model(model)`` is a copy of ``model`` whose Conv2d, BatchNorm2d and Linear layers take their
tensors stacked along a leading client dimension (``G`` copies, supplied by ``functional_call``) and
run the whole group as one operation each: a convolution with ``G`` times the groups, a BatchNorm over
``G * C`` channels (so each client's statistics come from its own samples only), a batched matrix
product. A group's activations are ``N x (G * C) x H x W``: sample ``n`` of every client side by side
along the channels, so that pooling, ReLU, residual additions and flattening run unchanged. Each layer
is a few plain operations, where ``torch.func.vmap`` over the model spent most of a small model's step
dispatching (BENCHMARKS.md §12). A group of one makes exactly the calls of the original model.
"""

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from fedbat_mpi.client.device import memory_format


class GroupedConv2d(nn.Conv2d):
    """``G`` clients' convolutions as one convolution of ``G * groups`` groups."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.weight.shape[0]
        weight = self.weight.reshape(-1, *self.weight.shape[2:]).contiguous(memory_format=memory_format(x.device))
        bias = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * size)


class GroupedBatchNorm2d(nn.BatchNorm2d):
    """``G`` clients' BatchNorm as one BatchNorm over ``G * C`` channels; the stacked running statistics
    are updated in place (they must be contiguous)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Grouped layers always track running statistics and have a momentum (stubs: Optional).
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.reshape(-1),  # type: ignore[union-attr]
                            self.bias.reshape(-1), self.training, self.momentum, self.eps)  # type: ignore[arg-type]  # fmt: skip


class GroupedLinear(nn.Linear):
    """``G`` clients' linear layers as one batched product: ``N x (G * in)`` to ``N x (G * out)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.weight.shape[0]
        if size == 1:
            return F.linear(x, self.weight[0], None if self.bias is None else self.bias[0])
        out = torch.einsum("ngi,goi->ngo", x.view(x.shape[0], size, -1), self.weight)
        return (out if self.bias is None else out + self.bias).flatten(1)


_GROUPED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: GroupedConv2d,
    nn.BatchNorm2d: GroupedBatchNorm2d,
    nn.Linear: GroupedLinear,
}


@functools.lru_cache(maxsize=4)
def grouped_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that trains a group (in training mode, whatever ``model``'s): call it with
    ``functional_call`` and every parameter and buffer stacked (its own copies are never read).

    Layers without tensors of their own (pooling, ReLU, containers, the models' own ``forward``) run
    unchanged: they must act per sample and per channel, as the paper's models' do. Raises ValueError
    for any other layer with tensors, a convolution padded otherwise than with zeros, or a BatchNorm
    without an affine transform, running statistics and a fixed momentum."""
    grouped = copy.deepcopy(model)
    for name, module in grouped.named_modules():
        kind = type(module)
        if kind not in _GROUPED:
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                raise ValueError(f"{name}: a {kind.__name__} layer cannot be grouped")
            continue
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"{name}: only zero-padded convolutions can be grouped")
        if isinstance(module, nn.BatchNorm2d) and not (module.affine and module.track_running_stats and module.momentum):
            raise ValueError(f"{name}: only an affine BatchNorm with running statistics and a fixed momentum can be grouped")
        module.__class__ = _GROUPED[kind]  # the same attributes, the grouped forward
    return grouped.train()


def grouped_inputs(inputs: list[torch.Tensor]) -> torch.Tensor:
    """``G`` clients' ``N x C x H x W`` batches (equal ``N``) as one ``N x (G * C) x H x W`` input;
    a group of one's batch as it is."""
    if len(inputs) == 1:
        return inputs[0]
    return torch.stack(inputs, dim=1).flatten(1, 2)


def group_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each client's mean cross-entropy, ``(G,)``, from the group's ``N x (G * K)`` logits and its
    ``G x N`` labels."""
    size, n = labels.shape
    if size == 1:
        return F.cross_entropy(logits, labels[0]).unsqueeze(0)
    return F.cross_entropy(logits.view(n, size, -1).transpose(1, 2), labels.T, reduction="none").mean(0)
