"""Test-set evaluation of the global model, shared out over the ranks.

The test set is cut into fixed batches; rank r evaluates batches r, r + size, ... and the per-batch
sums are added on rank 0 in batch order. Each batch has exactly one contributing rank, so the float64
reduction is exact and the result is the same for every number of ranks.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedbat_mpi.data import normalize
from fedbat_mpi.wire.comm import Communicator


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    comm: Communicator,
) -> tuple[float, float] | None:
    """``(mean loss, accuracy)`` of ``model`` on rank 0; ``None`` on the other ranks."""
    num_batches = -(-labels.numel() // batch_size)
    sums = np.zeros((num_batches, 2), dtype=np.float64)
    model.eval()
    with torch.no_grad():
        for batch in range(comm.rank, num_batches, comm.size):
            window = slice(batch * batch_size, (batch + 1) * batch_size)
            logits = model(normalize(images[window], mean, std))
            target = labels[window]
            sums[batch, 0] = F.cross_entropy(logits, target, reduction="sum").item()
            sums[batch, 1] = (logits.argmax(dim=1) == target).sum().item()
    total = comm.sum_to_root(sums)
    if total is None:
        return None
    loss, correct = total.sum(axis=0)
    return float(loss) / labels.numel(), float(correct) / labels.numel()
