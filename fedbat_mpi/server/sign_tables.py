"""Weighted sums of packed sign bits on the CPU: sixteen clients per table lookup.

For a chunk of clients (in client-id order) and one tensor, ``sum_k c_k (2 b_k - 1)`` is wanted per
entry, with ``c_k`` the client's coefficient for that tensor. Sixteen clients' bits of one entry become
one 16-bit number (a bit transpose with shift/mask/xor on uint64 words, four rounds), which indexes a
table of ``sum_q c_q (2 bit_q - 1)`` over those sixteen clients: one gather-add per entry per sixteen
clients. A block's words are held slot-major (client 16 g + m of the chunk in row ``m * groups + g``),
so that each round of the transpose pairs long contiguous runs of all groups at once. Small tensors use
two 256-entry tables (one per byte) instead of one of 65,536 entries. Column blocks are spread over
threads (numpy releases the GIL); each entry is summed by one thread, in group order, so the result
does not depend on the number of threads.
"""

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

GROUP = 16  # clients per table index
BLOCK_WORDS = 512  # 64-entry words of the packed bits per block (32,768 entries)
BIG_TENSOR = 32768  # tensors of at least this many entries get 65,536-entry tables
_MASKS = [
    np.uint64(m) for m in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x00FF00FF00FF00FF)
]
_SIGNS8 = np.where((np.arange(256) >> np.arange(8)[:, None]) & 1, 1.0, -1.0)  # [q, v]: ±1 by bit q of v


@dataclass(frozen=True)
class _Block:
    """Words ``[start, stop)`` of the packed bits, summed with tensor ``tensor``'s tables; update entries
    ``[first, last)`` are kept (a word may straddle two tensors)."""

    tensor: int
    start: int
    stop: int
    first: int
    last: int


class SignTables:
    """The table engine's buffers for chunks of up to ``chunk`` clients (a multiple of 16), kept from
    call to call so that later rounds touch no fresh pages."""

    def __init__(
        self, segments: list[tuple[int, int]], chunk: int, pool: ThreadPoolExecutor | None, threads: int
    ):
        self.segments, self.pool = segments, pool
        self.big = [stop - start >= BIG_TENSOR for start, stop in segments]
        groups = chunk // GROUP
        self.coefficients = touched((len(segments), groups, 2, 8), np.float64)  # client 16 g + 8 h + q
        self.sums8 = touched((len(segments), groups, 2, 256), np.float64)
        self.tables8 = touched((len(segments), groups, 2, 256), np.float32)
        self.tables16 = touched((sum(self.big), groups, 2**16), np.float32)
        self.slot = np.cumsum(self.big) - 1  # tensor -> its row of tables16
        self.workers = [_Worker(chunk) for _ in range(threads)]
        self.parts = _split(self._plan(), threads)

    def _plan(self) -> list[_Block]:
        """Each tensor's words, cut into blocks of at most ``BLOCK_WORDS``."""
        blocks = []
        for tensor, (first, last) in enumerate(self.segments):
            words = range(first // 64, -(-last // 64))
            for start in range(words.start, words.stop, BLOCK_WORDS):
                stop = min(start + BLOCK_WORDS, words.stop)
                blocks.append(_Block(tensor, start, stop, max(first, 64 * start), min(last, 64 * stop)))
        return blocks

    def add(self, body: np.ndarray, rows: np.ndarray, coefficients: np.ndarray, update: np.ndarray) -> None:
        """``update += sum_k coefficients[k, tensor] (2 b_k - 1)`` over the packed sign rows ``rows`` of
        ``body`` (uint8[n, ceil(d/8)]); ``coefficients``: float64[rows.size, tensors]."""
        groups = -(-rows.size // GROUP)
        flat = self.coefficients[:, :groups].reshape(len(self.segments), -1)
        flat.fill(0)  # a zero coefficient pads the last group
        flat[:, : rows.size] = coefficients.T
        halves, sums8 = self.coefficients[:, :groups], self.sums8[:, :groups]
        np.multiply(halves[..., 0, None], _SIGNS8[0], out=sums8)
        for bit in range(1, 8):
            sums8 += halves[..., bit, None] * _SIGNS8[bit]
        self.tables8[:, :groups] = sums8
        for tensor in np.flatnonzero(self.big):  # torch's broadcast add: 3x numpy's here
            halves8 = torch.from_numpy(self.tables8[tensor, :groups])
            table16 = torch.from_numpy(self.tables16[self.slot[tensor], :groups]).view(groups, 256, 256)
            torch.add(halves8[:, 1, :, None], halves8[:, 0, None, :], out=table16)

        slots = np.full(groups * GROUP, rows[0])  # padding repeats a row; its coefficient is zero
        slots[: rows.size] = rows
        slots = np.ascontiguousarray(slots.reshape(groups, GROUP).T).ravel()  # slot-major (module docstring)

        def run(worker: _Worker, blocks: list[_Block]) -> None:
            for block in blocks:
                worker.block(self, body, slots, groups, block, update)

        parallel(self.pool, run, self.workers, self.parts)


class _Worker:
    """One thread's buffers."""

    def __init__(self, chunk: int):
        self.words = touched(chunk * BLOCK_WORDS, np.uint64)  # the chunk's bits, then transposed
        self.scratch = touched(chunk * BLOCK_WORDS // 2, np.uint64)
        self.gathered = touched(64 * BLOCK_WORDS, np.float32)
        self.total = touched(64 * BLOCK_WORDS, np.float32)
        self.ordered = touched(64 * BLOCK_WORDS, np.float32)

    def block(
        self,
        tables: SignTables,
        body: np.ndarray,
        slots: np.ndarray,
        groups: int,
        block: _Block,
        update: np.ndarray,
    ) -> None:
        """Add one block's weighted signs of the chunk's clients (rows ``slots`` of ``body``, slot-major)
        to ``update``."""
        width = block.stop - block.start
        words = self.words[: GROUP * groups * width].reshape(GROUP, groups, width)
        columns = body[:, 8 * block.start : 8 * block.stop]
        target = words.view(np.uint8).reshape(GROUP * groups, 8 * width)[:, : columns.shape[1]]
        take_rows(columns, slots, target)
        for bit in range(4):  # swap bit `bit` of the client slot with bit `bit` of the position in a word
            shift, mask = 1 << bit, _MASKS[bit]
            pairs = words.reshape(2 ** (3 - bit), 2, 2**bit * groups * width)
            low, high = pairs[:, 0], pairs[:, 1]
            t = self.scratch[: low.size].reshape(low.shape)
            np.right_shift(low, shift, out=t)
            np.bitwise_xor(t, high, out=t)
            np.bitwise_and(t, mask, out=t)
            np.bitwise_xor(high, t, out=high)
            np.left_shift(t, shift, out=t)
            np.bitwise_xor(low, t, out=low)
        # Now word n of a group, 16-bit lane L, bit m: client m's sign of entry 16 L + 8 (n >> 3) + 7 - (n & 7).
        lanes = words.view(np.uint16).reshape(GROUP, groups, width * 4)
        size = GROUP * width * 4
        gathered = self.gathered[:size].reshape(GROUP, width * 4)
        total = self.total[:size].reshape(GROUP, width * 4)
        tensor = block.tensor
        lookups: list[tuple[np.ndarray, np.ndarray]]
        if tables.big[tensor]:
            lookups = [(tables.tables16[tables.slot[tensor], g], lanes[:, g]) for g in range(groups)]
        else:  # one 256-entry table per byte of a lane: clients 0-7, then 8-15
            halves = lanes.view(np.uint8).reshape(GROUP, groups, width * 4, 2)
            lookups = [(tables.tables8[tensor, g, h], halves[:, g, :, h]) for g in range(groups) for h in (0, 1)]
        np.take(*lookups[0], out=total, mode="wrap")  # mode="wrap": no bounds check (all indices fit)
        for table, index in lookups[1:]:
            np.take(table, index, out=gathered, mode="wrap")
            np.add(total, gathered, out=total)
        ordered = self.ordered[:size]
        in_entry_order = ordered.reshape(width, 4, 2, 8)[:, :, :, ::-1].transpose(2, 3, 0, 1)
        np.copyto(in_entry_order, total.reshape(2, 8, width, 4))
        lo = block.first - 64 * block.start
        update[block.first : block.last] += ordered[lo : lo + block.last - block.first]


def parallel(pool: ThreadPoolExecutor | None, function: Callable, *iterables: Iterable) -> None:
    """``function`` over ``iterables`` on the pool's threads (or here, without one); returns when done."""
    for _ in pool.map(function, *iterables) if pool is not None else map(function, *iterables):
        pass


def take_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = source[rows]`` without a temporary (``np.take`` along axis 0 would first copy all of a
    strided ``source``). A read-only ``source`` (torch will not view one) is copied by numpy."""
    if not source.flags.writeable:
        out[...] = source[rows]
        return
    torch.index_select(torch.from_numpy(source), 0, torch.from_numpy(rows), out=torch.from_numpy(out))


def touched(shape: int | tuple[int, ...], dtype: type) -> np.ndarray:
    """A zeroed array whose pages are already mapped, so that the first round does not fault them in."""
    array: np.ndarray = np.empty(shape, dtype=dtype)
    array.fill(0)
    return array


def _split(blocks: list[_Block], parts: int) -> list[list[_Block]]:
    """``blocks`` cut into ``parts`` runs of about equal numbers of words."""
    sizes = np.cumsum([b.stop - b.start for b in blocks])
    cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, parts) / parts)
    return [list(part) for part in np.split(np.array(blocks, dtype=object), cuts)]
