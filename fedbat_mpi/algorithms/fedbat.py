"""FedBAT (Li et al., ICML 2024): learn the binary update during local training (FEDBAT.md §1).

Each binarized tensor ``w`` gets a latent update ``m`` and a step-size parameter ``s`` (both reset to
zero every round). The first ``floor(warmup * K)`` of the round's K local steps train ``m`` in full
precision (``W = w + m``); then ``alpha0 = mean|m|`` per tensor and the remaining steps train through
the binarizer (``W = w + B(m; alpha)``, ``alpha = clamp(alpha0 * exp(rho * s), 5e-4, 5e-2)``).
The upload is a fresh sample of the signs of ``B(m; alpha)`` plus ``alpha`` per tensor.
If warm-up covers every step (``warmup = 1``), ``alpha0`` is taken from the final ``m``.
"""

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..binarize import binarize, sample_signs, step_size
from ..codec import BodyKind
from ..rng import Stream
from .base import Algorithm, Batch, LocalTask, LocalUpdate, sgd_steps


class FedBAT(Algorithm):
    name = "fedbat"
    kind = BodyKind.SIGNS

    def __init__(self, rho: float, warmup: float):
        self.rho = rho
        self.warmup = warmup

    def warmup_steps(self, num_steps: int) -> int:
        """The number of full-precision steps at the start of a round: ``floor(warmup * K)``."""
        return math.floor(self.warmup * num_steps + 1e-9)

    def train(self, task: LocalTask) -> LocalUpdate:
        model = task.model
        names = task.layout.binarized_names
        frozen = {name: model.get_parameter(name).requires_grad_(False) for name in names}
        latent = {name: torch.zeros_like(w, requires_grad=True) for name, w in frozen.items()}
        log_scale = {name: torch.zeros((), device=w.device, requires_grad=True) for name, w in frozen.items()}
        others = [p.requires_grad_(True) for n, p in model.named_parameters() if n not in frozen]
        noise = task.generator(Stream.BINARIZER)
        warm_steps = self.warmup_steps(task.num_steps)
        alpha0: dict[str, torch.Tensor] = {}

        def loss_fn(step: int, batch: Batch) -> torch.Tensor:
            if step == warm_steps + 1:
                alpha0.update({n: m.detach().abs().mean() for n, m in latent.items()})
            if alpha0:
                weights = {
                    n: frozen[n] + binarize(m, step_size(alpha0[n], log_scale[n], self.rho), noise)
                    for n, m in latent.items()
                }
            else:
                weights = {n: frozen[n] + m for n, m in latent.items()}
            return F.cross_entropy(functional_call(model, weights, (batch[0],)), batch[1])

        loss = sgd_steps(task, [*latent.values(), *log_scale.values(), *others], loss_fn)
        if not alpha0:
            alpha0.update({n: m.detach().abs().mean() for n, m in latent.items()})
        upload = task.generator(Stream.UPLOAD)
        with torch.no_grad():
            alphas = [step_size(alpha0[n], log_scale[n], self.rho) for n in names]
            signs = torch.cat([sample_signs(latent[n], a, upload).reshape(-1) for n, a in zip(names, alphas)])
        return LocalUpdate(self.kind, torch.stack(alphas).float(), signs, loss)
