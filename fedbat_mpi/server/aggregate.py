"""Rank 0's server step: the new global model from one round's payloads.

The rule is a coefficient per (client, binarized tensor) and a finishing transform of the summed update:

    update_l = finish(sum_k c_{k,l} u_{k,l}),    w_l <- w_l + update_l,

with ``u_{k,l}`` client k's update of tensor l (sign bodies: ±1, bit 1 meaning +1; float32 bodies: the
values). :func:`rule_of` maps an algorithm's ``ServerRule`` (``wire/rule.py``) to the pair:
``WEIGHTED_SUM`` (FedBAT, FedAvg and the tuning-free sign baselines, docs/FEDBAT.md §1.8) is
:func:`weighted_mean`, ``c_{k,l} = p_k alpha_{k,l}`` (``p_k``, the clients' weights normalised to sum
to 1; ``alpha`` = 1 for float32 bodies) and no finish; ``MEAN_OF_SIGNS`` (z-SignFedAvg) is
``c_{k,l} = server_lr alpha_{k,l} / n``; ``MAJORITY_VOTE`` (SignSGD) is ``c = 1`` and
``finish(u) = server_lr sign(u)`` (a tie gives 0). Dense (BatchNorm) tensors always become the
clients' weighted mean ``sum_k p_k dense_k``.

Clients are summed in client-id order, a chunk of clients at a time, into buffers the
:class:`Aggregator` keeps from round to round, so the result does not depend on which rank hosted
which client, its working memory does not grow with the number of clients, and later rounds touch no
fresh pages. Two engines: ``"table"`` (the CPU's for sign bodies: lookup tables on ``threads`` threads,
``sign_tables.py``) and ``"torch"`` (float32 bodies everywhere, and sign bodies on other devices:
a chunk's bodies reach the device a column block at a time, signs unpacked to ±1 by a 256 x 8 lookup
table of bytes, and multiplied by the coefficients; the engine is warmed up when built, so that the
first round costs what later ones do). How the torch engine's bodies reach the device: a chunk whose
rows follow each other in the buffer (as the engine's gather delivers them: ranks hold contiguous
blocks of client ids) is one copy of that span of the buffer, from memory pinned by
:meth:`Aggregator.receive_buffer` on CUDA, with no pass over it on the host (on the CPU, the buffer is
read in place); other chunks are gathered into staging buffers (pinned on CUDA and used in turn, so
that a block's copy overlaps the gathering of the next).
The new global vector is checked once for finite values; only if that fails are the payloads searched
for the client responsible (:func:`payloads.non_finite_error`), so no NaN model goes out.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.wire.codec import BodyKind, PayloadShape
from fedbat_mpi.wire.rule import ServerRule

from .payloads import LR_ONLY, RoundPayloads, non_finite_error
from .sign_tables import GROUP, SignTables, take_rows, touched

Coefficients = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(weights float64[n], scales float32[n, S]) -> [n, tensors]`` (or ``[n, 1]``, the same for every
tensor; float64, or float32 where a rule computes from the scales alone), clients in id order; S is 0
for float32 bodies."""
Finish = Callable[[np.ndarray], np.ndarray]
"""The summed update (float32[d], the aggregator's buffer, which it may change in place) -> the step."""

ENGINES = ("table", "torch")
_TORCH_FLOATS = 2**23  # float32 entries of the torch engine's block on the CPU (32 MiB)
_TORCH_FLOATS_CUDA = 2**26  # and on CUDA (256 MiB): fewer copies and kernel launches
_STAGES = 2  # the torch engine's staging buffers, used in turn
_SPAN_BYTES = 2**29  # the most bytes of a chunk's rows on CUDA (512 MiB): large payloads get smaller chunks
_PINNED_BYTES = 2**32  # the largest pinned receive buffer (torch pins a power of 2: up to 4 GiB)
_UNPACKED = np.where((np.arange(256)[:, None] >> np.arange(7, -1, -1)) & 1, 1, -1).astype(np.float32)
"""``[byte, q]``: the ±1 of entry q of a packed byte (``np.packbits`` order, the high bit first)."""


def weighted_mean(weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """FedBAT's and FedAvg's coefficients: ``p_k alpha_{k,l}``, or ``p_k`` without scales."""
    shares = (weights / weights.sum())[:, None]
    return shares * scales if scales.shape[1] else shares


def rule_of(rule: ServerRule, server_lr: float) -> tuple[Coefficients, Finish | None]:
    """The coefficients and finish of a server rule (module docstring)."""
    if rule is ServerRule.WEIGHTED_SUM:
        return weighted_mean, None
    if rule is ServerRule.MEAN_OF_SIGNS:
        return lambda weights, scales: server_lr * scales / len(weights), None

    def vote(update: np.ndarray) -> np.ndarray:
        np.sign(update, out=update)
        update *= np.float32(server_lr)
        return update

    return lambda weights, scales: np.ones((len(weights), 1)), vote


class Aggregator:
    """The server step of one run, built once (its buffers and threads are reused every round).

    ``engine``: ``"table"`` (the default for sign bodies on the CPU; sign bodies only) or ``"torch"`` (the
    default otherwise; it runs on the CPU too). ``coefficients`` and ``finish``: the rule, as the module
    docstring says. ``step_sizes``: the run's step-size options, named when the new model is not finite.
    """

    def __init__(
        self,
        layout: ModelLayout,
        shape: PayloadShape,
        device: str | torch.device = "cpu",
        threads: int = 1,
        *,
        coefficients: Coefficients = weighted_mean,
        finish: Finish | None = None,
        engine: str | None = None,
        clients_per_chunk: int = 256,
        step_sizes: tuple[str, ...] = LR_ONLY,
    ):
        self.layout, self.shape, self.device = layout, shape, torch.device(device)
        self.coefficients, self.finish, self.step_sizes = coefficients, finish, step_sizes
        self.signs = shape.kind is BodyKind.SIGNS
        self.engine = engine or ("table" if self.device.type == "cpu" and self.signs else "torch")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}, expected one of {ENGINES}")
        if self.engine == "table" and not self.signs:
            raise ValueError("the table engine sums sign bodies; float32 bodies take the torch engine")
        self.chunk = -(-clients_per_chunk // GROUP) * GROUP
        if self.engine == "torch" and self.device.type == "cuda":  # a chunk's rows copied at once stay bounded
            self.chunk = min(self.chunk, max(GROUP, _SPAN_BYTES // shape.size // GROUP * GROUP))
        self.segments = [(seg.offset, seg.offset + seg.size) for seg in layout.binarized]
        self.pool = ThreadPoolExecutor(threads) if threads > 1 and self.engine == "table" else None
        # The table engine's threads are its own; torch's as well would oversubscribe the cores.
        self.torch_threads = 1 if self.engine == "table" else threads
        self.update = touched(layout.update_size, np.float32)  # the summed update, on the host
        self.update_t = torch.from_numpy(self.update).to(self.device)  # the same memory on the CPU
        self.dense_rows = touched((self.chunk, layout.dense_size), np.float32)
        if self.engine == "table":
            self.tables = SignTables(self.segments, self.chunk, self.pool, threads)
        else:
            self._torch_buffers()
            self._warm_up()

    def __call__(self, global_vector: np.ndarray, payloads: RoundPayloads) -> np.ndarray:
        """The new global vector (float32); ``codec.PayloadError`` if it would not be finite."""
        if not len(payloads):
            raise ValueError("no client payloads to aggregate")
        if payloads.shape != self.shape:
            raise ValueError(f"payloads of shape {payloads.shape}, this aggregator's is {self.shape}")
        dense = self._sum(payloads)
        step = self.update if self.finish is None else self.finish(self.update)
        new = global_vector.astype(np.float32, copy=True)
        for seg in self.layout.binarized:
            new[seg.global_offset : seg.global_offset + seg.size] += step[seg.offset : seg.offset + seg.size]
        for seg in self.layout.dense:
            new[seg.global_offset : seg.global_offset + seg.size] = dense[seg.offset : seg.offset + seg.size]
        if not np.isfinite(new).all():
            raise non_finite_error(payloads, self.step_sizes)
        return new

    def receive_buffer(self, size: int) -> np.ndarray:
        """Host memory for a round's received payloads (uint8[size]): pinned when the engine runs on
        CUDA, so that a chunk's rows are copied from there to the device without staging (up to
        ``_PINNED_BYTES``; a larger round is received into pageable memory, which CUDA copies from in
        the same span copies, synchronously)."""
        if self.device.type != "cuda" or size > _PINNED_BYTES:
            return np.empty(size, dtype=np.uint8)
        return torch.empty(size, dtype=torch.uint8, pin_memory=True).numpy()

    def close(self) -> None:
        """End the threads."""
        if self.pool is not None:
            self.pool.shutdown()

    def _sum(self, payloads: RoundPayloads) -> np.ndarray:
        """Sum the updates into ``self.update`` chunk by chunk, clients in id order; the dense mean."""
        order = payloads.order
        weights = payloads.weights[order]
        shares = weights / weights.sum()
        coefficients = np.broadcast_to(
            np.asarray(self.coefficients(weights, payloads.scales[order]), dtype=np.float64),
            (len(payloads), len(self.segments)),
        )
        with _torch_threads(self.torch_threads):
            dense = torch.zeros(self.layout.dense_size, dtype=torch.float32, device=self.device)
            self.update_t.zero_()
            for start in range(0, len(payloads), self.chunk):
                rows, part = order[start : start + self.chunk], slice(start, start + self.chunk)
                dense_rows = self.dense_rows[: rows.size]
                take_rows(payloads.dense, rows, dense_rows)
                dense += self._tensor(shares[part].astype(np.float32)) @ self._tensor(dense_rows)
                if self.engine == "torch":
                    self._torch_chunk(payloads.body, rows, coefficients[part])
                else:
                    self.tables.add(payloads.body, rows, coefficients[part], self.update)
            if self.device.type != "cpu":
                torch.from_numpy(self.update).copy_(self.update_t)
            return dense.cpu().numpy()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    def _torch_buffers(self) -> None:
        """The torch engine's buffers: ``_STAGES`` staging buffers of a block (pinned on CUDA, with an
        event each marking the end of its last copy to the device) and, for signs, the lookup table and
        the device's work buffers of the unpacking."""
        cuda = self.device.type == "cuda"
        entries = 8 if self.signs else 1  # update entries per body column
        floats = _TORCH_FLOATS_CUDA if cuda else _TORCH_FLOATS
        self.width = max(8, floats // (self.chunk * entries) // 8 * 8)  # body columns per block
        block = self.chunk * self.width
        dtype = torch.uint8 if self.signs else torch.float32
        self.staging = [torch.zeros(block, dtype=dtype, pin_memory=cuda) for _ in range(_STAGES)]
        self.copied = [torch.cuda.Event() for _ in self.staging] if cuda else []
        self.turn = 0  # the staging buffer last filled
        # A chunk's span of the received buffer, on CUDA (``_rows_on_device``).
        self.span = torch.empty(self.chunk * self.shape.size, dtype=torch.uint8, device=self.device) if cuda else None
        if self.signs:
            self.table = torch.from_numpy(_UNPACKED).to(self.device)
            self.indices = torch.empty(block, dtype=torch.int32, device=self.device)
            self.unpacked = torch.empty(block * 8, dtype=torch.float32, device=self.device)

    def _warm_up(self) -> None:
        """One chunk of zero payloads, a block wide, through the torch engine's whole path of a round, so
        that the device's context, libraries, kernels and memory pools are set up now, not in the first
        round (every call starts from a zeroed sum)."""
        chunk, shape = self.chunk, self.shape
        columns = -(-shape.update_size // 8) if self.signs else shape.update_size
        body = np.zeros((chunk, min(self.width, columns)), np.uint8 if self.signs else np.float32)
        zeros = RoundPayloads(
            shape, client_ids=np.arange(chunk, dtype=np.uint32), weights=np.ones(chunk),
            train_losses=np.zeros(chunk), scales=np.zeros((chunk, shape.num_scales), np.float32),
            dense=np.zeros((chunk, shape.dense_size), np.float32), body=body, order=np.arange(chunk),
        )  # fmt: skip
        self._sum(zeros)

    def _torch_chunk(self, body: np.ndarray, rows: np.ndarray, coefficients: np.ndarray) -> None:
        """The torch engine: the chunk's rows a column block at a time, staged in client-id order, sent to
        the device, signs unpacked to ±1, and multiplied by each tensor's coefficients."""
        entries = 8 if self.signs else 1
        weights = self._tensor(coefficients.astype(np.float32))
        whole = self._rows_on_device(body, rows)
        for start in range(0, body.shape[1], self.width):
            if whole is None:
                values = self._stage(body[:, start : start + self.width], rows)
            else:
                values = whole[:, start : start + self.width]
            if self.signs:
                values = self._unpack(values)
            first = start * entries
            last = min(first + values.shape[1], self.layout.update_size)
            for tensor, (lo, hi) in enumerate(self.segments):
                lo, hi = max(lo, first), min(hi, last)
                if lo < hi:
                    self.update_t[lo:hi] += weights[:, tensor] @ values[:, lo - first : hi - first]

    def _rows_on_device(self, body: np.ndarray, rows: np.ndarray) -> torch.Tensor | None:
        """``body[rows]`` on the device without a gather on the host, if ``rows`` follow each other in the
        buffer: on the CPU a view of the buffer; on CUDA one copy of the bytes from the first row's body
        to the last row's end (the other fields of the payloads between come along), non-blocking from
        pinned memory. ``None`` otherwise (``_stage`` then gathers the rows)."""
        first = int(rows[0])
        if not body.flags.writeable or not np.array_equal(rows, np.arange(first, first + rows.size)):
            return None
        host = torch.from_numpy(body[first : first + rows.size])  # a row is one payload after the last
        if self.span is None:
            return host
        span = host.as_strided(((rows.size - 1) * host.stride(0) + host.shape[1],), (1,))
        on_device = self.span[: span.numel() * span.element_size()].view(span.dtype)
        on_device.copy_(span, non_blocking=True)
        return on_device.as_strided(host.shape, host.stride())

    def _stage(self, columns: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """``columns[rows]`` on the device, by the next staging buffer. On CUDA the copy does not block:
        the host gathers the next block meanwhile, into the other buffer; a buffer is refilled only once
        its previous copy is done."""
        self.turn = (self.turn + 1) % _STAGES
        staged = self.staging[self.turn][: rows.size * columns.shape[1]].view(rows.size, columns.shape[1])
        if self.copied:
            self.copied[self.turn].synchronize()
        take_rows(columns, rows, staged.numpy())
        values = staged.to(self.device, non_blocking=bool(self.copied))  # staged itself on the CPU
        if self.copied:
            self.copied[self.turn].record()
        return values

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed signs uint8[n, c] -> ±1 float32[n, 8c] (a view of the work buffer): each byte looked
        up in the 256 x 8 table (the bytes widened to indices, then one gather; no pass over the
        bits)."""
        size = packed.numel()
        indices = self.indices[:size]
        indices.view(packed.shape).copy_(packed)  # ``packed`` may be a strided view of the rows
        signs = self.unpacked[: 8 * size].view(size, 8)
        torch.index_select(self.table, 0, indices, out=signs)
        return signs.view(packed.shape[0], -1)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
