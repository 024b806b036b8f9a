"""FedAvg (McMahan et al., 2017): local SGD, upload the float32 model update."""

import torch

from ..codec import BodyKind
from .base import Algorithm, LocalTask, LocalUpdate, local_sgd_update


class FedAvg(Algorithm):
    """Full-precision FedAvg: every binarizable tensor's update is sent as float32."""

    name = "fedavg"
    kind = BodyKind.FLOAT32

    def train(self, task: LocalTask) -> LocalUpdate:
        delta, loss = local_sgd_update(task)
        return LocalUpdate(self.kind, torch.zeros(0), delta, loss)
