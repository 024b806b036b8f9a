"""FedAvg (McMahan et al., 2017): local SGD, upload the float32 model update."""

import torch
import torch.nn.functional as F

from ..codec import BodyKind
from .base import Algorithm, LocalTask, LocalUpdate, sgd_steps


class FedAvg(Algorithm):
    """Full-precision FedAvg: every binarizable tensor's update is sent as float32."""

    name = "fedavg"
    kind = BodyKind.FLOAT32

    def train(self, task: LocalTask) -> LocalUpdate:
        model = task.model
        start = {seg.name: model.get_parameter(seg.name).detach().clone() for seg in task.layout.binarized}
        params = [p.requires_grad_(True) for p in model.parameters()]
        loss = sgd_steps(task, params, lambda _, batch: F.cross_entropy(model(batch[0]), batch[1]))
        delta = torch.cat(
            [(model.get_parameter(name).detach() - w0).reshape(-1) for name, w0 in start.items()]
        )
        return LocalUpdate(self.kind, torch.zeros(0), delta, loss)
