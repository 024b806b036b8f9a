"""FedBAT (Li et al., ICML 2024): learn the binary update during local training (FEDBAT.md §1).

Each binarized tensor ``w`` gets a latent update ``m`` and a step-size parameter ``s`` (both reset to
zero every round). The first ``floor(warmup * K)`` of a client's K local steps train ``m`` in full
precision (``W = w + m``); then ``alpha0 = mean|m|`` per tensor and the remaining steps train through
the binarizer (``W = w + B(m; alpha)``, ``alpha = clamp(alpha0 * exp(rho * s), 5e-4, 5e-2)``).
The upload is a fresh sample of the signs of ``B(m; alpha)`` plus ``alpha`` per tensor.
If warm-up covers every step (``warmup = 1``), ``alpha0`` is taken from the final ``m``.
Clients of a group may have different K, so each switches phase at its own step.
"""

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedbat_mpi.client.binarize import binarize_with_noise, sample_signs, step_size, uniform_noise
from fedbat_mpi.rng import Stream
from fedbat_mpi.wire.codec import BodyKind

from .base import Algorithm, HyperParameter, LocalTask, LocalUpdate, finite_at_least, register
from .group import ClientLoss, Stacked, dense_of, member_index, stacked_state, train_group

WARM_UP, BINARIZED = "warm-up", "binarized"


def _update(name: str) -> str:
    return f"update:{name}"


def _log_scale(name: str) -> str:
    return f"log_scale:{name}"


def trained_tensors(model: torch.nn.Module, names: list[str], size: int) -> tuple[Stacked, Stacked, Stacked]:
    """What a group of ``size`` clients trains from ``model``: the binarized tensors ``w`` (frozen, shared),
    each client's ``m`` and ``s`` per binarized tensor (zeros) and copy of the other parameters, and each
    client's copy of the buffers."""
    frozen = {n: model.get_parameter(n).detach() for n in names}
    others, buffers = stacked_state(model, size, exclude=frozenset(names))
    params = {
        **{_update(n): w.new_zeros((size, *w.shape)).requires_grad_(True) for n, w in frozen.items()},
        **{_log_scale(n): w.new_zeros(size).requires_grad_(True) for n, w in frozen.items()},
        **others,
    }  # fmt: skip
    return frozen, params, buffers


def client_loss(model: torch.nn.Module, frozen: Stacked, rho: float, phase: str) -> ClientLoss:
    """One client's loss in ``phase``: the model at ``w + m`` (warm-up) or ``w + B(m; alpha)``, with the
    step sizes' ``alpha0`` and the binarizer's noise as the extras ``alpha0:NAME`` and ``noise:NAME``."""
    latent = {name for n in frozen for name in (_update(n), _log_scale(n))}

    def loss(p: Stacked, b: Stacked, x: torch.Tensor, y: torch.Tensor, extras: Stacked) -> torch.Tensor:
        if phase == WARM_UP:
            weights = {n: w + p[_update(n)] for n, w in frozen.items()}
        else:
            weights = {
                n: w + binarize_with_noise(
                    p[_update(n)], step_size(extras[f"alpha0:{n}"], p[_log_scale(n)], rho), extras[f"noise:{n}"])
                for n, w in frozen.items()
            }  # fmt: skip
        trained = {n: t for n, t in p.items() if n not in latent}
        return F.cross_entropy(functional_call(model, ({**weights, **trained}, b), (x,)), y)

    return loss


@register
class FedBAT(Algorithm):
    name = "fedbat"
    kind = BodyKind.SIGNS
    hyperparameters = (
        HyperParameter("rho", float, 6.0, "FedBAT's step-size learning factor ρ (0: a fixed step size)",
                       "a finite number >= 0", finite_at_least(0.0)),
        HyperParameter("warmup", float, 0.5, "FedBAT's warm-up fraction φ of the local steps",
                       "a fraction in [0, 1]", lambda value: 0 <= value <= 1),
    )  # fmt: skip
    rho: float
    warmup: float

    def warmup_steps(self, num_steps: int) -> int:
        """The number of full-precision steps at the start of a round: ``floor(warmup * K)``."""
        return math.floor(self.warmup * num_steps + 1e-9)

    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        model, layout, size = tasks[0].model, tasks[0].layout, len(tasks)
        names = layout.binarized_names
        frozen, params, buffers = trained_tensors(model, names, size)
        warm_steps = [self.warmup_steps(task.num_steps) for task in tasks]
        noise = [task.generator(Stream.BINARIZER) for task in tasks]
        alpha0 = {n: w.new_zeros(size) for n, w in frozen.items()}

        def take_alpha0(k: int) -> None:
            for n in names:
                alpha0[n][k] = params[_update(n)][k].detach().abs().mean()

        def phase_of(k: int, step: int) -> str:
            return WARM_UP if step <= warm_steps[k] else BINARIZED

        def extras_of(phase: str, step: int, members: list[int]) -> Stacked:
            if phase == WARM_UP:
                return {}
            for k in members:
                if step == warm_steps[k] + 1:
                    take_alpha0(k)
            index = member_index(tuple(members), next(iter(frozen.values())).device)
            draws = [[uniform_noise(w, noise[k]) for w in frozen.values()] for k in members]  # each client's order
            return {
                **{f"alpha0:{n}": alpha0[n][index] for n in names},
                **{f"noise:{n}": torch.stack([d[i] for d in draws]) for i, n in enumerate(names)},
            }

        def loss_of(phase: str) -> ClientLoss:
            return client_loss(model, frozen, self.rho, phase)

        losses = train_group(tasks, params, buffers, phase_of, loss_of, extras_of)
        state = {**params, **buffers}
        updates = []
        for k, task in enumerate(tasks):
            if warm_steps[k] >= task.num_steps:  # warm-up to the end: alpha0 from the final m
                take_alpha0(k)
            with torch.no_grad():
                upload = task.generator(Stream.UPLOAD)
                alphas = [step_size(alpha0[n][k], params[_log_scale(n)][k], self.rho) for n in names]
                signs = [sample_signs(params[_update(n)][k], a, upload).reshape(-1) for n, a in zip(names, alphas)]
            updates.append(LocalUpdate(self.kind, torch.stack(alphas).float(), torch.cat(signs),
                                       dense_of(layout, state, k), losses[k]))  # fmt: skip
        return updates
