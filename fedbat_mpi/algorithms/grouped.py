"""Training a group of clients at once: one vectorised step (``torch.func.vmap``) for all of them.

Every client of a group starts from the same global model and takes the same number of steps on
batches of the same shapes (the engine groups clients with equal sample counts). Per-client tensors
(FedBAT's m and s, every trainable parameter for FedAvg, BatchNorm parameters and statistics) are
stacked along a leading client dimension; the model runs once per step for the whole group through
``functional_call`` under ``vmap``. Each client keeps its own random streams (data order,
augmentation, binarizer noise, upload sample), so the result equals training the clients one after
another up to float rounding (grouped convolutions sum in another order).
"""

from collections.abc import Callable, Iterator

import torch

from ..layout import ModelLayout
from .base import LocalTask


def stacked(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` copies of ``tensor`` along a new leading dimension."""
    return tensor.detach().unsqueeze(0).repeat(size, *([1] * tensor.dim())).clone()


def group_batches(tasks: list[LocalTask]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each step's inputs and labels of every client, stacked along a leading client dimension."""
    for batches in zip(*(task.batches() for task in tasks), strict=True):
        yield torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])


def group_sgd(
    tasks: list[LocalTask],
    params: list[torch.Tensor],
    losses_of: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[float]:
    """Plain SGD on stacked parameters; ``losses_of(step, x, y)`` gives one loss per client.

    Clients are independent, so the gradient of the summed loss is each client's own gradient.
    Returns each client's mean training loss.
    """
    optimizer = torch.optim.SGD(params, lr=tasks[0].lr)
    total = torch.zeros(len(tasks), device=params[0].device)
    for step, (x, y) in enumerate(group_batches(tasks), start=1):
        losses = losses_of(step, x, y)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        total += losses.detach()
    return (total / max(tasks[0].num_steps, 1)).tolist()


def dense_of(layout: ModelLayout, tensors: dict[str, torch.Tensor], client: int) -> torch.Tensor:
    """One client's dense (BatchNorm) tensors from stacked parameters and buffers, flat float32."""
    return torch.cat([tensors[seg.name][client].detach().reshape(-1).float() for seg in layout.dense])
