"""FedBAT (Li et al., ICML 2024): learn the binary update during local training (docs/FEDBAT.md §1).

Each binarized tensor ``w`` gets a latent update ``m`` and a step-size parameter ``s`` (both reset to
zero every round). The first ``floor(warmup * K)`` of a client's K local steps train ``m`` in full
precision (``W = w + m``); then ``alpha0 = mean|m|`` per tensor and the remaining steps train through
the binarizer (``W = w + B(m; alpha)``, ``alpha = clamp(alpha0 * exp(rho * s), 5e-4, 5e-2)``).
The upload is a fresh sample of the signs of ``B(m; alpha)`` plus ``alpha`` per tensor.
If warm-up covers every step (``warmup = 1``), ``alpha0`` is taken from the final ``m``.
Clients of a group may have different K, so each switches phase at its own step.
"""

import math
from collections.abc import Hashable

import torch
from torch.func import functional_call

from fedbat_mpi.client.binarize import binarize_segments, mean_magnitudes, sample_signs, step_size
from fedbat_mpi.client.grouped_layers import group_cross_entropy, grouped_model
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rng import Stream
from fedbat_mpi.wire.codec import BodyKind

from .base import NON_NEGATIVE, Algorithm, HyperParameter, LocalTask, LocalUpdate, is_non_negative, register
from .group import GroupLoss, Stacked, dense_rows, keep, member_index, stacked_state, train_group

WARM_UP, BINARIZED = "warm-up", "binarized"
UPDATE, LOG_SCALE = "update", "log_scale"  # each client's flat m (G x P) and its s, one per tensor (G x T)


def trained_tensors(model: torch.nn.Module, layout: ModelLayout, size: int) -> tuple[torch.Tensor, Stacked, Stacked]:
    """What a group of ``size`` clients trains from ``model``: the binarized tensors ``w`` (frozen, shared,
    flat in the layout's update order), each client's ``m`` (flat) and ``s`` (one per binarized tensor),
    both zeros, and copy of the other parameters, and each client's copy of the buffers."""
    names = layout.binarized_names
    frozen = layout.binarized_vector(model)
    others, buffers = stacked_state(model, size, exclude=frozenset(names))
    params = {
        UPDATE: frozen.new_zeros(size, frozen.numel()).requires_grad_(True),
        LOG_SCALE: frozen.new_zeros(size, len(names)).requires_grad_(True),
        **others,
    }  # fmt: skip
    return frozen, params, buffers


def client_loss(model: torch.nn.Module, layout: ModelLayout, frozen: torch.Tensor, rho: float, phase: Hashable) -> GroupLoss:
    """A bucket's losses in ``phase``: the model at ``w + m`` (warm-up) or ``w + B(m; alpha)`` for each
    client, with the step sizes' ``alpha0`` (``G x T``) and the binarizer's noise (``G x P``) as the
    extras ``alpha0`` and ``noise``."""
    grouped, sizes = grouped_model(model), layout.binarized_sizes

    def loss(p: Stacked, b: Stacked, x: torch.Tensor, y: torch.Tensor, extras: Stacked) -> torch.Tensor:
        m = p[UPDATE]
        if phase == WARM_UP:
            flat = frozen + m
        else:
            flat = frozen + binarize_segments(m, step_size(extras["alpha0"], p[LOG_SCALE], rho), extras["noise"], sizes)
        weights = {seg.name: t.view(-1, *seg.shape) for seg, t in zip(layout.binarized, flat.split(sizes, dim=1))}
        trained = {n: t for n, t in p.items() if n not in (UPDATE, LOG_SCALE)}
        return group_cross_entropy(functional_call(grouped, ({**weights, **trained}, b), (x,)), y)

    return loss


@register
class FedBAT(Algorithm):
    name = "fedbat"
    kind = BodyKind.SIGNS
    hyperparameters = (
        HyperParameter("rho", float, 6.0, "FedBAT's step-size learning factor ρ (0: a fixed step size)",
                       NON_NEGATIVE, is_non_negative),
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
        sizes = layout.binarized_sizes
        frozen, params, buffers = trained_tensors(model, layout, size)
        kept = None
        if tasks[0].graphs:  # a graph bakes in rho and the step size besides its tensors
            kept = keep(self.kept, (model, size, tasks[0].lr, self.rho), {"w": frozen}, params, buffers)
            frozen, params, buffers = kept.tensors[0]["w"], kept.tensors[1], kept.tensors[2]
        warm_steps = [self.warmup_steps(task.num_steps) for task in tasks]
        noise = [task.generator(Stream.BINARIZER) for task in tasks]
        noise_rows = frozen.new_empty(size, frozen.numel())  # each client's draw in its own row, refilled
        alpha0 = frozen.new_zeros(size, len(sizes))

        def take_alpha0(members: list[int]) -> None:  # the clients' mean |m| per tensor, all at once
            index = member_index(tuple(members), frozen.device)
            alpha0[index] = mean_magnitudes(params[UPDATE].detach()[index], sizes)

        def phase_of(k: int, step: int) -> str:
            return WARM_UP if step <= warm_steps[k] else BINARIZED

        def extras_of(phase: Hashable, step: int, members: list[int]) -> Stacked:
            if phase == WARM_UP:
                return {}
            switching = [k for k in members if step == warm_steps[k] + 1]
            if switching:
                take_alpha0(switching)
            index = member_index(tuple(members), frozen.device)
            for k in members:  # the tensors' noise in layout order, as torch.rand draws it
                noise_rows[k].uniform_(generator=noise[k])
            return {"alpha0": alpha0[index], "noise": noise_rows if len(members) == size else noise_rows[index]}

        def loss_of(phase: Hashable) -> GroupLoss:
            return client_loss(model, layout, frozen, self.rho, phase)

        losses = train_group(tasks, params, buffers, phase_of, loss_of, extras_of, kept)
        warm_to_the_end = [k for k, task in enumerate(tasks) if warm_steps[k] >= task.num_steps]
        if warm_to_the_end:  # alpha0 from the final m
            take_alpha0(warm_to_the_end)
        with torch.no_grad():  # the whole group's uploads at once, each from its client's own stream
            alphas = step_size(alpha0, params[LOG_SCALE], self.rho)
            for row, task in zip(noise_rows, tasks):
                row.uniform_(generator=task.generator(Stream.UPLOAD))
            signs = sample_signs(params[UPDATE], alphas, noise_rows, sizes)
        dense = dense_rows(layout, {**params, **buffers}, size)
        return [LocalUpdate(self.kind, alphas[k].float(), signs[k], dense[k], losses[k]) for k in range(size)]
