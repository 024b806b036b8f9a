"""FedAvg (McMahan et al., 2017): local SGD, upload the float32 model update."""

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..codec import BodyKind
from .base import Algorithm, LocalTask, LocalUpdate, local_sgd_update
from .grouped import dense_of, group_sgd, stacked


class FedAvg(Algorithm):
    """Full-precision FedAvg: every binarizable tensor's update is sent as float32."""

    name = "fedavg"
    kind = BodyKind.FLOAT32
    groupable = True

    def train(self, task: LocalTask) -> LocalUpdate:
        delta, loss = local_sgd_update(task)
        return LocalUpdate(self.kind, torch.zeros(0), delta, task.layout.dense_vector(task.model), loss)

    def train_group(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        model, layout, size = tasks[0].model, tasks[0].layout, len(tasks)
        params = {n: stacked(p, size).requires_grad_(True) for n, p in model.named_parameters()}
        buffers = {n: stacked(b, size) for n, b in model.named_buffers()}

        def loss(p, b, x, y):
            return F.cross_entropy(functional_call(model, (p, b), (x,)), y)

        losses = group_sgd(tasks, list(params.values()), lambda _, x, y: vmap(loss)(params, buffers, x, y))
        start = {n: model.get_parameter(n).detach() for n in layout.binarized_names}
        state = {**params, **buffers}
        return [
            LocalUpdate(
                self.kind,
                torch.zeros(0),
                torch.cat([(params[n][k].detach() - w0).reshape(-1) for n, w0 in start.items()]),
                dense_of(layout, state, k),
                losses[k],
            )
            for k in range(size)
        ]
