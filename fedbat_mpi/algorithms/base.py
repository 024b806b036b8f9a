"""The interface every federated algorithm implements: train one client, return its update."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..codec import BodyKind
from ..layout import ModelLayout
from ..rng import Stream

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LocalTask:
    """One client's local training: the model already holds the global weights."""

    client_id: int
    model: torch.nn.Module
    layout: ModelLayout
    batches: Callable[[], Iterator[Batch]]  # every local step's (inputs, labels), in order
    num_steps: int
    lr: float
    generator: Callable[[Stream], torch.Generator]  # the client's stream for (seed, round, id)
    state: torch.Tensor | None = None  # the client's persistent state (zeros before its first round)


@dataclass
class LocalUpdate:
    """What a client uploads, and what it keeps."""

    kind: BodyKind
    scales: torch.Tensor  # float32, one per binarized tensor for sign bodies, else empty
    body: torch.Tensor  # bool signs (True for +scale) or float32 update values, flat
    dense: torch.Tensor  # the dense (BatchNorm) tensors after training, flat float32
    train_loss: float
    state: torch.Tensor | None = None  # the client's new persistent state, kept by rank 0


class Algorithm(ABC):
    """A federated algorithm: a client-side training rule and the wire body it uploads.

    The server side is shared: rank 0 adds the weighted mean of the decoded updates
    (``scale * sign`` or the float32 values) to the binarized tensors and averages dense tensors.
    """

    name: str
    kind: BodyKind
    state_name: str | None = None  # per-client state kept between rounds (and in checkpoints)
    groupable: bool = False  # implements train_group

    def state_size(self, layout: ModelLayout) -> int:
        """The number of float32 values of per-client state; 0 for stateless algorithms."""
        return 0

    @abstractmethod
    def train(self, task: LocalTask) -> LocalUpdate:
        """Train one client from the global model and return its update."""

    def train_group(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        """Train clients with equal step shapes at once, as ``train`` would one by one (``grouped.py``)."""
        raise NotImplementedError(f"{self.name} trains clients one at a time")


def local_sgd_update(task: LocalTask) -> tuple[torch.Tensor, float]:
    """Plain local SGD on every parameter; returns the flat update of the binarized tensors
    (``w_end - w_start``, state_dict order) and the mean training loss."""
    model = task.model
    names = task.layout.binarized_names
    start = [model.get_parameter(name).detach().clone() for name in names]
    params = [p.requires_grad_(True) for p in model.parameters()]
    loss = sgd_steps(task, params, lambda _, batch: F.cross_entropy(model(batch[0]), batch[1]))
    delta = torch.cat([(model.get_parameter(n).detach() - w0).reshape(-1) for n, w0 in zip(names, start)])
    return delta, loss


def sgd_steps(task: LocalTask, params: list[torch.Tensor], loss_fn: Callable[[int, Batch], torch.Tensor]) -> float:
    """Run ``task.num_steps`` plain SGD steps (FEDBAT.md §1.6); return the mean training loss.

    ``loss_fn(step, batch)`` computes the loss of one mini-batch; ``step`` counts from 1.
    """
    optimizer = torch.optim.SGD(params, lr=task.lr)
    total = torch.zeros((), device=params[0].device)
    for step, batch in enumerate(task.batches(), start=1):
        loss = loss_fn(step, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total) / max(task.num_steps, 1)
