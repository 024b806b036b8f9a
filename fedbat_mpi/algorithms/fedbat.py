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
from torch.func import functional_call, vmap

from ..binarize import binarize, binarize_with_noise, sample_signs, step_size, uniform_noise
from ..codec import BodyKind
from ..rng import Stream
from .base import Algorithm, Batch, LocalTask, LocalUpdate, sgd_steps
from .grouped import dense_of, group_sgd, stacked


class FedBAT(Algorithm):
    name = "fedbat"
    kind = BodyKind.SIGNS
    groupable = True

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
        alphas, signs = self._upload(latent, log_scale, alpha0, task.generator(Stream.UPLOAD))
        return LocalUpdate(self.kind, alphas, signs, task.layout.dense_vector(model), loss)

    def _upload(self, latent: dict, log_scale: dict, alpha0: dict, generator: torch.Generator):
        """The uploaded step sizes (float32, per tensor) and a fresh sample of the signs (bool, flat)."""
        with torch.no_grad():
            alphas = [step_size(alpha0[n], log_scale[n], self.rho) for n in latent]
            signs = [sample_signs(m, a, generator).reshape(-1) for m, a in zip(latent.values(), alphas)]
        return torch.stack(alphas).float(), torch.cat(signs)

    def train_group(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        """``train`` for a group of clients at once (``grouped.py``)."""
        model, layout, size = tasks[0].model, tasks[0].layout, len(tasks)
        names = layout.binarized_names
        frozen = {n: model.get_parameter(n).detach() for n in names}
        latent = {n: torch.zeros((size, *w.shape), device=w.device, requires_grad=True) for n, w in frozen.items()}
        log_scale = {n: torch.zeros(size, device=w.device, requires_grad=True) for n, w in frozen.items()}
        others = {n: stacked(p, size).requires_grad_(True) for n, p in model.named_parameters() if n not in frozen}
        buffers = {n: stacked(b, size) for n, b in model.named_buffers()}
        noise = [task.generator(Stream.BINARIZER) for task in tasks]
        warm_steps = self.warmup_steps(tasks[0].num_steps)
        alpha0: dict[str, torch.Tensor] = {}

        def warm_loss(m, other, buffer, x, y):
            weights = {n: frozen[n] + m[n] for n in names}
            return F.cross_entropy(functional_call(model, ({**weights, **other}, buffer), (x,)), y)

        def binarized_loss(m, s, a0, u, other, buffer, x, y):
            weights = {n: frozen[n] + binarize_with_noise(m[n], step_size(a0[n], s[n], self.rho), u[n]) for n in names}
            return F.cross_entropy(functional_call(model, ({**weights, **other}, buffer), (x,)), y)

        def losses_of(step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if step == warm_steps + 1:
                alpha0.update({n: m.detach().abs().flatten(1).mean(1) for n, m in latent.items()})
            if not alpha0:
                return vmap(warm_loss)(latent, others, buffers, x, y)
            u = {n: torch.stack([uniform_noise(latent[n][0], g) for g in noise]) for n in names}
            return vmap(binarized_loss)(latent, log_scale, alpha0, u, others, buffers, x, y)

        losses = group_sgd(tasks, [*latent.values(), *log_scale.values(), *others.values()], losses_of)
        if not alpha0:
            alpha0.update({n: m.detach().abs().flatten(1).mean(1) for n, m in latent.items()})
        updates, state = [], {**others, **buffers}
        for k, task in enumerate(tasks):
            pick = lambda tensors: {n: t[k] for n, t in tensors.items()}  # noqa: E731
            alphas, signs = self._upload(pick(latent), pick(log_scale), pick(alpha0), task.generator(Stream.UPLOAD))
            updates.append(LocalUpdate(self.kind, alphas, signs, dense_of(layout, state, k), losses[k]))
        return updates
