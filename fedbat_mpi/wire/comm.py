"""Every MPI call of the package (the only module that imports mpi4py).

All collectives move numpy buffers (uppercase mpi4py methods); nothing is pickled. Messages that
would pass MPI's 2**31 - 1 element limit are split. Packed bits are never reduced with ``MPI.SUM``:
Open MPI's AVX reduction saturates uint8 on some CPUs, so payloads are gathered and summed by rank 0.
"""

from collections.abc import Callable, Sequence

import numpy as np
from mpi4py import MPI

from fedbat_mpi.errors import EveryRankStops

MAX_MESSAGE_BYTES = 2**31 - 1


class Communicator:
    """The ranks of one run; thin wrappers over the few collectives the engine needs."""

    def __init__(self, comm: MPI.Comm | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self._comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank: int = self._comm.Get_rank()
        self.size: int = self._comm.Get_size()
        self.max_message_bytes = max_message_bytes
        self._received: dict[str, np.ndarray] = {}  # rank 0's named receive buffers (gather_bytes)
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank: int = node.Get_rank()
        node.Free()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def gather_bytes(
        self,
        data: np.ndarray,
        counts: Sequence[int] | np.ndarray | None = None,
        reuse: str | None = None,
        allocate: Callable[[int], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """Gather every rank's uint8 buffer to rank 0 with ``Gatherv``.

        ``counts``, the number of bytes each rank sends, when every rank knows them (the engine does:
        the schedule and the payload size fix them); otherwise an ``Allgather`` of the counts comes
        first. Returns ``(buffer, counts)`` on rank 0, the buffers concatenated in rank order, and
        ``(None, None)`` elsewhere. Ranks may send zero bytes. With ``reuse``, rank 0 receives into the
        buffer kept under that name, so what the previous call with the same name returned is
        overwritten; without, into a new one. ``allocate(size)``: rank 0's receive memory (uint8[size]),
        e.g. pinned for a GPU; ``np.empty`` without.
        """
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        if counts is None:
            counts = np.empty(self.size, dtype=np.int64)
            self._comm.Allgather(np.array([data.size], dtype=np.int64), counts)
        counts = np.asarray(counts, dtype=np.int64)
        if data.size != counts[self.rank]:
            raise ValueError(f"rank {self.rank} sends {data.size} bytes, the agreed count is {counts[self.rank]}")
        total = int(counts.sum())
        recv = self._receive_buffer(reuse, total, allocate or _host_bytes) if self.is_root else None
        if total <= self.max_message_bytes:
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
            spec = [recv, counts.tolist(), displs.tolist(), MPI.BYTE] if self.is_root else None
            self._comm.Gatherv([data, MPI.BYTE], spec, root=0)
        else:
            self._gather_in_pieces(data, counts, recv)
        return (recv, counts) if recv is not None else (None, None)  # recv: rank 0's

    def _receive_buffer(self, name: str | None, size: int, allocate: Callable[[int], np.ndarray]) -> np.ndarray:
        """``size`` bytes of rank 0's receive buffer ``name``, grown when too small, else reused."""
        if name is None:
            return allocate(size)
        if self._received.get(name, np.empty(0, np.uint8)).size < size:
            self._received.pop(name, None)  # let the old buffer go before the new one is allocated
            self._received[name] = allocate(size)
        return self._received[name][:size]

    def _gather_in_pieces(self, data: np.ndarray, counts: np.ndarray, recv: np.ndarray | None) -> None:
        """``Gatherv`` in rounds of at most ``max_message_bytes`` in all, then reassemble on rank 0."""
        piece = max(1, self.max_message_bytes // self.size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for begin in range(0, int(counts.max()), piece):
            sizes = np.clip(counts - begin, 0, piece)
            chunk = data[begin : begin + piece]
            displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            scratch = np.empty(int(sizes.sum()), dtype=np.uint8) if self.is_root else None
            spec = [scratch, sizes.tolist(), displs.tolist(), MPI.BYTE] if self.is_root else None
            self._comm.Gatherv([chunk, MPI.BYTE], spec, root=0)
            if recv is not None and scratch is not None:  # rank 0
                for rank in np.flatnonzero(sizes):
                    at = int(starts[rank]) + begin
                    recv[at : at + sizes[rank]] = scratch[displs[rank] : displs[rank] + sizes[rank]]

    def scatter_bytes(self, parts: list[np.ndarray] | None) -> np.ndarray:
        """Rank 0 sends ``parts[r]`` (uint8) to rank r with ``Scatterv``; every rank returns its part."""
        counts = np.array([p.size for p in parts], dtype=np.int64) if parts is not None else np.empty(self.size, np.int64)
        self._comm.Bcast(counts, root=0)
        mine = np.empty(int(counts[self.rank]), dtype=np.uint8)
        piece = max(1, self.max_message_bytes // self.size)
        for begin in range(0, max(int(counts.max()), 1), piece):
            sizes = np.clip(counts - begin, 0, piece)
            displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            spec = None
            if parts is not None:  # rank 0
                scratch = np.concatenate([np.zeros(0, np.uint8)] + [p[begin : begin + piece] for p in parts])
                spec = [scratch, sizes.tolist(), displs.tolist(), MPI.BYTE]
            self._comm.Scatterv(spec, [mine[begin : begin + sizes[self.rank]], MPI.BYTE], root=0)
        return mine

    def broadcast(self, array: np.ndarray) -> None:
        """Broadcast a contiguous array from rank 0 in place, split into messages if large."""
        raw = array.reshape(-1).view(np.uint8)
        for begin in range(0, max(raw.size, 1), self.max_message_bytes):
            self._comm.Bcast([raw[begin : begin + self.max_message_bytes], MPI.BYTE], root=0)

    def sum_to_root(self, values: np.ndarray) -> np.ndarray | None:
        """Element-wise float64 sum over ranks, on rank 0 (``None`` elsewhere)."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty_like(values) if self.is_root else None
        self._comm.Reduce(values, out, op=MPI.SUM, root=0)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        return bool(self._largest(int(flag)))

    def stop_together_on(self, error: Exception | None, exit_status: int) -> None:
        """Raise ``EveryRankStops`` on every rank when ``error`` is set on at least one, with the largest
        ``exit_status`` of those ranks (one ``Allreduce``)."""
        if status := self._largest(0 if error is None else exit_status):
            raise EveryRankStops(error, status)

    def _largest(self, value: int) -> int:
        out = np.zeros(1, dtype=np.int32)
        self._comm.Allreduce(np.array([value], dtype=np.int32), out, op=MPI.MAX)
        return int(out[0])

    def lowest_rank_with(self, flag: bool) -> int | None:
        """The lowest rank where ``flag`` is true, agreed by all ranks, or ``None``."""
        out = np.zeros(1, dtype=np.int32)
        mine = self.rank if flag else self.size
        self._comm.Allreduce(np.array([mine], dtype=np.int32), out, op=MPI.MIN)
        return int(out[0]) if out[0] < self.size else None

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, status: int) -> None:
        """End every rank of the job now (used when one rank fails, so that none hangs)."""
        self._comm.Abort(status)


def _host_bytes(size: int) -> np.ndarray:
    return np.empty(size, dtype=np.uint8)
