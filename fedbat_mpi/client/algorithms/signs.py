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

``sign(0)`` is sent as +1. A group's uploads are computed together (``compress``): one reduction per
binarized tensor over all the clients' rows, one draw of noise per client, then operations on the
whole group; a group of one is one client alone. On the CPU at one thread the group is cut into
chunks of rows, each computed so, with the same bits (``by_row_chunks``). A client's noise is one
``uniform_`` over its whole update (binarized tensors in state_dict order), in the update's dtype, from
its upload stream (seed, round, client id). On the CPU (mt19937, drawn entry by entry) these are the
numbers that one draw per tensor in state_dict order gives; on a GPU (Philox) they are not, and the
stream is the one described here.
"""

from abc import abstractmethod
from collections.abc import Callable

import torch

from fedbat_mpi.client.binarize import mean_magnitudes, per_entry, per_segment
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rng import Stream
from fedbat_mpi.wire.codec import BodyKind

from .base import Algorithm, LocalTask, LocalUpdate, positive_option, register
from .group import local_sgd

Sizes = tuple[int, ...]  # the entries of each binarized tensor: the segments of an update's row
Compressed = tuple[torch.Tensor, torch.Tensor]  # a group's scales (G x T) and bool signs (G x P)
Rows = tuple[torch.Tensor, ...]  # results with a row per client of a group


def fill_rows(rows: torch.Tensor, uploads: list[torch.Generator],
              fill: Callable[..., torch.Tensor] = torch.Tensor.uniform_) -> torch.Tensor:  # fmt: skip
    """``rows`` (``G x N``), row k filled with noise by one call of ``fill`` (``uniform_``, ``normal_``,
    ``exponential_``) from ``uploads[k]``, client k's upload stream."""
    for row, upload in zip(rows, uploads, strict=True):
        fill(row, generator=upload)
    return rows


def _group_updates(kind: BodyKind, scales: torch.Tensor, signs: torch.Tensor, dense: torch.Tensor,
                  losses: list[float], states: torch.Tensor | None = None) -> list[LocalUpdate]:  # fmt: skip
    """Client k's update from row k of the group's scales (``G x T``), signs, dense tensors and states."""
    scales = scales.float()
    return [LocalUpdate(kind, scales[k], signs[k], dense[k], loss, None if states is None else states[k])
            for k, loss in enumerate(losses)]  # fmt: skip


CPU_CHUNK_BYTES = 4 * 2**20  # the updates' bytes in a chunk of rows on the CPU at one thread (by_row_chunks)


def by_row_chunks(d: torch.Tensor, compute: Callable[[slice], Rows]) -> Rows:
    """``compute(rows)`` for all the rows of ``d``, a group's updates (``G x P``).

    On the CPU at one thread (a rank's default) it runs on chunks of as many rows as fit in
    ``CPU_CHUNK_BYTES`` of ``d`` (at least one) and concatenates their results: a whole group's ``G x P``
    temporaries miss the cache and, above glibc's 32 MiB mmap threshold (``rounds/heap.py``), fault in
    fresh pages at every call. For 100 CNN4-MNIST clients, chunks of 2 to 32 MiB measured alike, 1.6-2.7x
    faster than the whole group (BENCHMARKS.md §12); 4 MiB keeps z = 1's doubled draws under that
    threshold too. Every operation is per row, so the bits are the whole group's. With several threads
    each operation also synchronises them, and chunks multiplied that cost (2-5x slower on a busy
    machine); there, and off the CPU (where each is a kernel launch), one call over the whole group.
    """
    rows = len(d)
    if d.is_cpu and torch.get_num_threads() == 1 and d.nbytes > CPU_CHUNK_BYTES:
        rows = max(1, CPU_CHUNK_BYTES * rows // d.nbytes)
    if rows >= len(d):
        return compute(slice(None))
    chunks = [compute(slice(start, start + rows)) for start in range(0, len(d), rows)]
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


class PostTrainingSign(Algorithm):
    """Local SGD, then a per-tensor 1-bit compressor of the group's finished updates."""

    kind = BodyKind.SIGNS

    @abstractmethod
    def compress(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> Compressed:
        """``(scales, positive)`` for a group's updates ``d`` (``G x P``, rows cut into segments of
        ``sizes``): ``G x T`` float scales and ``G x P`` bool signs; ``uploads[k]`` is row k's stream."""

    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        deltas, dense, losses = local_sgd(tasks, self.kept)
        uploads = [task.generator(Stream.UPLOAD) for task in tasks]
        sizes = tasks[0].layout.binarized_sizes
        scales, signs = by_row_chunks(deltas, lambda rows: self.compress(deltas[rows], sizes, uploads[rows]))
        return _group_updates(self.kind, scales, signs, dense, losses)


@register
class SignSGD(PostTrainingSign):
    name = "signsgd"

    def compress(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> Compressed:
        return mean_magnitudes(d, sizes), d >= 0


def _error_memories(tasks: list[LocalTask]) -> torch.Tensor | None:
    """The group's error memories (``G x P``); None before any (a group's clients have one each or none)."""
    memories = [task.state for task in tasks if task.state is not None]
    if not memories:
        return None
    if len(memories) < len(tasks):
        raise ValueError("EF-SignSGD: some clients of the group have an error memory, others none")
    return torch.stack(memories)


@register
class EFSignSGD(Algorithm):
    name = "ef-signsgd"
    kind = BodyKind.SIGNS
    state_name = "error_memory"

    def state_size(self, layout: ModelLayout) -> int:
        return layout.update_size

    def train(self, tasks: list[LocalTask]) -> list[LocalUpdate]:
        deltas, dense, losses = local_sgd(tasks, self.kept)
        sizes, memory = tasks[0].layout.binarized_sizes, _error_memories(tasks)

        def feedback(rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            corrected = deltas[rows] if memory is None else deltas[rows] + memory[rows]
            scales, positive = mean_magnitudes(corrected, sizes), corrected >= 0
            error = corrected - per_entry(scales, sizes) * (positive.to(corrected.dtype) * 2 - 1)
            return scales, positive, error

        scales, positive, error = by_row_chunks(deltas, feedback)
        return _group_updates(self.kind, scales, positive, dense, losses, error)


@register
class StochasticSign(PostTrainingSign):
    name = "stosign"

    def compress(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> Compressed:
        bounds = per_segment(d.abs(), sizes, lambda part: part.amax(1))
        bound, u = per_entry(bounds, sizes), fill_rows(torch.empty_like(d), uploads)
        # A select, not a Python test of bound > 0: nothing read back to the host (a GPU's queue would
        # drain). With bound = 0 the first branch is nan < x: unused.
        return bounds, torch.where(bound > 0, u < (d / bound).add_(1).div_(2), d >= 0)


@register
class ZSign(PostTrainingSign):
    name = "zsign"
    hyperparameters = (
        positive_option("zsign_sigma", 1.0, "z-SignFedAvg's noise scale, in units of the update's RMS per tensor"),
    )  # fmt: skip
    zsign_sigma: float

    def compress(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> Compressed:
        sigmas = self.zsign_sigma * per_segment(d.square(), sizes, lambda part: part.mean(1)).sqrt()
        xi = fill_rows(torch.empty_like(d), uploads).mul_(2).sub_(1)  # in place: fewer G x P temporaries
        return sigmas, d + per_entry(sigmas, sizes) * xi >= 0
