"""FedAvg (McMahan et al., 2017): local SGD, upload the float32 model update."""

import torch

from fedbat_mpi.wire.codec import BodyKind

from .base import Algorithm, LocalTask, LocalUpdate, register
from .group import local_sgd


@register
class FedAvg(Algorithm):
    """Full-precision FedAvg: every binarizable tensor's update is sent as float32."""

    name = "fedavg"
    kind = BodyKind.FLOAT32

    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        deltas, dense, losses = local_sgd(tasks, self.kept)
        return [LocalUpdate(self.kind, torch.zeros(0), d, v, loss) for d, v, loss in zip(deltas, dense, losses)]
