"""Mini-batches of the clients' data on a rank's device: each client's order drawn from its own seed,
the batches of clients that step together read at once.

A client's step *draws* its batch (``Drawn``: which rows of the rank's training set, and with
augmentation each image's crop and flip, from the client's own generators); ``read_batches`` reads the
batches of a bucket of clients together: one gather of images and labels, one crop, one normalisation,
one regrouping, where reading each client's batch alone took a handful of operations per client (each
a kernel launch on a GPU). The values are those of reading each client's batch by itself.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch

from fedbat_mpi.client.grouped_layers import grouped_inputs
from fedbat_mpi.data import Crops, crop, draw_crops, normalize


@dataclass(frozen=True)
class TrainingSet:
    """A rank's training samples on its device (uint8 images, labels) and how to turn them into inputs."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool


@dataclass(frozen=True)
class Drawn:
    """One client's batch of one step, not yet read: rows ``rows`` of ``samples``, and the images'
    crops when ``samples`` are augmented."""

    samples: TrainingSet
    rows: torch.Tensor
    crops: Crops | None

    def __len__(self) -> int:
        return self.rows.numel()


class ClientData:
    """One client's samples: rows ``rows`` (on the device) of the rank's training set."""

    def __init__(self, samples: TrainingSet, rows: torch.Tensor):
        self.samples = samples
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.numel()

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, epochs: int, batch_size: int, order: torch.Generator, augmentation: torch.Generator
    ) -> Iterator[Drawn]:
        """``epochs`` passes over the data, reshuffled each pass; the last batch may be short."""
        for _ in range(epochs):
            permutation = torch.randperm(len(self), generator=order, device=order.device)
            permutation = permutation.to(self.rows.device, non_blocking=True)  # no wait for a GPU's queue
            rows = self.rows[permutation]
            for start in range(0, len(self), batch_size):
                index = rows[start : start + batch_size]
                crops = draw_crops(index.numel(), augmentation, index.device) if self.samples.augment else None
                yield Drawn(self.samples, index, crops)


Batch = tuple[torch.Tensor, torch.Tensor] | Drawn
"""A step's batch of one client: already read (inputs, labels), as tests and benchmarks give them, or
drawn from a run's training set."""


def batch_size(batch: Batch) -> int:
    return len(batch) if isinstance(batch, Drawn) else batch[1].shape[0]


def read_batches(batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped inputs (``grouped_inputs``) and ``G x N`` labels of ``G`` equal-sized batches. Drawn
    ones (of one training set) are read with one operation each for the whole group."""
    if not isinstance(batches[0], Drawn):
        read = cast(list[tuple[torch.Tensor, torch.Tensor]], batches)  # all of one kind
        labels = torch.stack([y for _, y in read]) if len(read) > 1 else read[0][1].unsqueeze(0)
        return grouped_inputs([x for x, _ in read]), labels
    drawn = cast(list[Drawn], batches)
    samples, size = drawn[0].samples, len(drawn)
    rows = torch.cat([batch.rows for batch in drawn]) if size > 1 else drawn[0].rows
    images = samples.images[rows]
    if samples.augment:  # then every batch has its crops
        every = cast(list[Crops], [b.crops for b in drawn])
        crops = every[0] if size == 1 else [torch.cat(part) for part in zip(*every)]
        images = crop(images, *crops)
    x = normalize(images, samples.mean, samples.std)
    # chunks, not a view as G x N x ...: a view would give one-channel images NCHW strides (client/device.py)
    return grouped_inputs(list(x.chunk(size))), samples.labels[rows].view(size, -1)
