"""Post-training sign baselines: local SGD as in FedAvg, then each binarized tensor's finished update
``d`` (``w_end - w_start``) is compressed to one bit per entry and one float32 scale.

Every baseline uploads the same wire body as FedBAT (sign bits + one scale per tensor), and rank 0
adds ``sum_k p_k scale_k sign_k`` like FedBAT's ``alpha * b``.

=============  ===============================================================================
``signsgd``    ``mean|d| * sign(d)``: SignSGD (Bernstein et al., ICML 2018) applied to the local
               update, scaled per tensor by the mean magnitude (the scale-aware form of
               docs/FEDBAT.md §3).
``ef-signsgd`` ``p = d + e``, upload ``(||p||_1 / n) * sign(p)``, keep ``e <- p - upload``: EF-SignSGD
               (Karimireddy et al., ICML 2019). The error memory ``e`` is per client, kept by
               rank 0 between the client's rounds (stale while it is not sampled) and in checkpoints.
``stosign``    ``B * (+1 w.p. (1 + d/B)/2, else -1)`` with ``B = max|d|`` per tensor: the unbiased
               stochastic sign (Jin et al., 2020; Safaryan & Richtárik, ICML 2021).
``zsign``      ``sigma * sign(d + sigma * xi)``, ``xi ~ U[-1, 1]``: z-SignFedAvg (Tang et al., 2023)
               with uniform noise (z = infinity), unbiased where ``|d| <= sigma``. The noise scale
               is ``sigma = --zsign-sigma * rms(d)`` per tensor (default 1), so entries beyond
               sigma keep their sign deterministically; ``stosign`` is the case ``sigma = max|d|``.
=============  ===============================================================================

``sign(0)`` is sent as +1. Noise comes from the client's upload stream (seed, round, client id).
"""

from abc import abstractmethod

import torch

from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rng import Stream
from fedbat_mpi.wire.codec import BodyKind

from .base import Algorithm, HyperParameter, LocalTask, LocalUpdate, finite_at_least, register
from .group import local_sgd


def _per_tensor(layout: ModelLayout, values: torch.Tensor) -> list[torch.Tensor]:
    return [values[seg.offset : seg.offset + seg.size] for seg in layout.binarized]


class PostTrainingSign(Algorithm):
    """Local SGD, then a per-tensor 1-bit compressor of each client's finished update."""

    kind = BodyKind.SIGNS

    @abstractmethod
    def compress(self, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, positive)`` for one tensor's update: the float scale and the bool signs."""

    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        deltas, dense, losses = local_sgd(tasks, self.kept)
        updates = []
        for task, delta, values, loss in zip(tasks, deltas, dense, losses):
            upload = task.generator(Stream.UPLOAD)
            scales, signs = zip(*(self.compress(d, upload) for d in _per_tensor(task.layout, delta)))
            updates.append(LocalUpdate(self.kind, torch.stack(scales).float(), torch.cat(signs), values, loss))
        return updates


@register
class SignSGD(PostTrainingSign):
    name = "signsgd"

    def compress(self, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return d.abs().mean(), d >= 0


@register
class EFSignSGD(Algorithm):
    name = "ef-signsgd"
    kind = BodyKind.SIGNS
    state_name = "error_memory"

    def state_size(self, layout: ModelLayout) -> int:
        return layout.update_size

    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        deltas, dense, losses = local_sgd(tasks, self.kept)
        updates = []
        for task, delta, values, loss in zip(tasks, deltas, dense, losses):
            corrected = delta if task.state is None else delta + task.state
            scales, signs, memory = [], [], []
            for p in _per_tensor(task.layout, corrected):
                scale, positive = p.abs().mean(), p >= 0
                scales.append(scale)
                signs.append(positive)
                memory.append(p - scale * (positive.to(p.dtype) * 2 - 1))
            updates.append(LocalUpdate(self.kind, torch.stack(scales).float(), torch.cat(signs), values, loss,
                                       torch.cat(memory)))  # fmt: skip
        return updates


@register
class StochasticSign(PostTrainingSign):
    name = "stosign"

    def compress(self, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        bound = d.abs().max()
        u = torch.rand(d.shape, generator=generator, device=d.device, dtype=d.dtype)
        # A select, not a Python test of bound > 0: nothing read back to the host (a GPU's queue would
        # drain once per client and tensor). With bound = 0 the first branch is nan < x: unused.
        return bound, torch.where(bound > 0, u < (1 + d / bound) / 2, d >= 0)


@register
class ZSign(PostTrainingSign):
    name = "zsign"
    hyperparameters = (
        HyperParameter("zsign_sigma", float, 1.0, "z-SignFedAvg's noise scale, in units of the update's RMS per "
                       "tensor", "a positive finite number", finite_at_least(0.0, inclusive=False)),
    )  # fmt: skip
    zsign_sigma: float

    def compress(self, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.zsign_sigma * d.square().mean().sqrt()
        xi = torch.rand(d.shape, generator=generator, device=d.device, dtype=d.dtype) * 2 - 1
        return sigma, d + sigma * xi >= 0
