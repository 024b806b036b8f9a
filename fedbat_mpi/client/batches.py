"""Mini-batches of one client's data on its rank's device, in an order drawn from the client's seed."""

from collections.abc import Iterator

import torch

from fedbat_mpi.data import augment_batch, normalize


class ClientData:
    """One client's samples (uint8 images on the device) and how to turn them into inputs."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool):
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std
        self.augment = augment

    def __len__(self) -> int:
        return self.labels.numel()

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, epochs: int, batch_size: int, order: torch.Generator, augmentation: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``epochs`` passes over the data, reshuffled each pass; the last batch may be short."""
        for _ in range(epochs):
            permutation = torch.randperm(len(self), generator=order, device=order.device)
            permutation = permutation.to(self.labels.device, non_blocking=True)  # no wait for a GPU's queue
            for start in range(0, len(self), batch_size):
                index = permutation[start : start + batch_size]
                images = self.images[index]
                if self.augment:
                    images = augment_batch(images, augmentation)
                yield normalize(images, self.mean, self.std), self.labels[index]
