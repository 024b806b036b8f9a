"""Per-client state between rounds (EF-SignSGD's error memory) in ``OUT/client_state.h5``, on rank 0's disk.

Rank 0's memory holds the round's rows and ten bytes per client (two slot numbers and a row's sum,
below), never the rows of all clients.

File layout (format version 1): root attributes ``format`` (``"fedbat_mpi client state"``),
``format_version``, ``store_id`` (random, named by the checkpoints that commit this file) and ``name``
(the algorithm's ``state_name``); dataset ``rows``, float32 ``(num_clients, 2, size)``: two slots per
client, chunked one client per chunk, uncompressed; dataset ``committed_round``, int64 ``(1,)``.

Every chunk is placed when the file is created and never filled, so the file is sparse: ``ls`` shows
``num_clients * 2 * size * 4`` bytes, the disk holds only the rows written (``du``). After creation,
no HDF5 metadata changes: writing a row puts its bytes at that slot's fixed place in the file and
touches nothing else (the chunk cache is off), so a kill at any moment can damage at most the slot
being written.

Double buffering: a checkpoint commits one slot per client (a :class:`StateIndex`: a slot number and a
row's sum per client in the checkpoint). A round writes a client's new row into the other slot, the
same one however often the client trains before the next checkpoint, so committed rows are never
written over until the next checkpoint commits newer ones. A checkpoint costs the fsync of the rows
written since the last one, not a copy of every row:

1. :meth:`ClientStateStore.prepare` flushes and fsyncs the store and returns the index of the latest rows;
2. the checkpoint holding that index is written and renamed into place (``checkpoint.save``);
3. :meth:`ClientStateStore.commit` makes those slots the committed ones and records the checkpoint's
   round in ``committed_round``.

Once the rounds after a checkpoint write rows, the slots the checkpoint before it committed may be
overwritten, so :meth:`ClientStateStore.open` refuses a checkpoint older than ``committed_round``
(``checkpoint.prev.h5`` of a run with client state, once the newer checkpoint is committed).

Damage: the index also holds each row's sum (:func:`row_sum`, the row's bytes as 64-bit words added
modulo 2**64), and every row read is checked against it. A flipped bit changes the sum by a power of
two, so it is always found; a torn row (part of another write) almost always. A damaged row is a
UsageError when the round reads it, not an update built on it. A sum, not a CRC: 0.02 against 0.37 ms
(``zlib.crc32``) a 1.56 MB row, and a round reads and writes hundreds of rows.
"""

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from fedbat_mpi.errors import UsageError
from fedbat_mpi.server.hdf5_files import read_checked, write_aside

FORMAT = "fedbat_mpi client state"
FORMAT_VERSION = 1
FILE_NAME = "client_state.h5"
NO_ROW = -1  # the slot of a client that has never trained


@dataclass
class StateIndex:
    """The rows a checkpoint commits: which store, and the slot holding each client's row."""

    name: str  # the algorithm's state_name
    store_id: str
    row_size: int  # float32 values per client
    slots: np.ndarray  # int8, one per client: 0 or 1, NO_ROW for a client without a row
    # uint64, one per client: row_sum of its row. None in a checkpoint written before the sums (format 2):
    # a run continued from one checks no rows, and neither do its later checkpoints.
    sums: np.ndarray | None = None

    def clients_with_rows(self) -> int:
        return int(np.count_nonzero(self.slots != NO_ROW))


class ClientStateStore:
    """Rank 0's store of per-client rows; make one with :meth:`create` or :meth:`open`."""

    def __init__(self, path: str, handle: h5py.File, index: StateIndex):
        self.path = path
        self.name, self.store_id, self.row_size = index.name, index.store_id, index.row_size
        self._file = handle
        self._rows = handle["rows"]
        self._committed_round = handle["committed_round"]
        self._committed = index.slots.astype(np.int8)  # the slots the last checkpoint holds
        self._latest = self._committed.copy()  # the slots holding each client's newest row
        self._sums = None if index.sums is None else index.sums.astype(np.uint64)  # of each newest row

    @classmethod
    def create(cls, folder: str, name: str, num_clients: int, row_size: int) -> "ClientStateStore":
        """A new, empty store in ``folder``, replacing any store there (written aside, then renamed)."""
        path = os.path.join(folder, FILE_NAME)
        store_id = uuid.uuid4().hex

        def write(handle: h5py.File) -> None:
            handle.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, store_id=store_id, name=name)
            _create_fixed(handle, "rows", (num_clients, 2, row_size), "<f4", chunks=(1, 2, row_size))
            _create_fixed(handle, "committed_round", (1,), "<i8")
            handle["committed_round"][0] = 0

        write_aside(path, write)
        empty = np.full(num_clients, NO_ROW, np.int8)
        index = StateIndex(name, store_id, row_size, empty, np.zeros(num_clients, np.uint64))
        return cls(path, _open_for_writing(path), index)

    @classmethod
    def open(cls, folder: str, index: StateIndex, round_index: int, option: str = "--resume") -> "ClientStateStore":
        """The store in ``folder`` as the checkpoint of ``round_index`` (holding ``index``) committed it.

        A missing, damaged, foreign or newer-committed store is a UsageError naming ``option``,
        and the file is left as it was (it is checked read-only first).
        """
        path = os.path.join(folder, FILE_NAME)
        read_checked(path, option, f"the checkpoint's client state file {path} is missing", "client state",
                     lambda handle: _check(handle, path, index, round_index, option))  # fmt: skip
        try:
            handle = _open_for_writing(path)
        except OSError as error:
            raise UsageError(f"{option}: {path} cannot be opened for writing (another run using it?): {error}") from None
        store = cls(path, handle, index)
        try:
            store.commit(round_index)  # rows written after that checkpoint are not committed: their slots are free
        except BaseException:
            store.close()
            raise
        return store

    def read(self, clients: Sequence[int]) -> np.ndarray:
        """The newest rows of ``clients``, ``(len(clients), row_size)`` float32; zeros for a client without
        one. A row that does not add up to its sum is a UsageError."""
        rows = np.zeros((len(clients), self.row_size), np.float32)
        for i, client in enumerate(clients):
            slot = self._latest[client]
            if slot != NO_ROW:
                self._rows.read_direct(rows, np.s_[client, slot], np.s_[i])
                if self._sums is not None and row_sum(rows[i]) != self._sums[client]:
                    raise UsageError(f"{self.path} is damaged: client {client}'s row (slot {slot}) no "
                                     "longer adds up to its sum; resume from a copy of the run's folder")  # fmt: skip
        return rows

    def write(self, clients: Sequence[int], rows: np.ndarray) -> None:
        """Store new rows for ``clients``, each in the slot its committed row is not in."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        for i, client in enumerate(clients):
            slot = 0 if self._committed[client] == NO_ROW else 1 - self._committed[client]
            self._rows.write_direct(rows, np.s_[i], np.s_[client, slot])
            self._latest[client] = slot
            if self._sums is not None:
                self._sums[client] = row_sum(rows[i])

    def prepare(self) -> StateIndex:
        """Flush and fsync the store: the index of the newest rows, for the checkpoint to hold."""
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())
        sums = None if self._sums is None else self._sums.copy()
        return StateIndex(self.name, self.store_id, self.row_size, self._latest.copy(), sums)

    def commit(self, round_index: int) -> None:
        """The checkpoint of ``round_index``, holding :meth:`prepare`'s index, is in place: its slots
        are now the committed ones (durable before any later round writes a row)."""
        self._committed = self._latest.copy()
        self._committed_round[0] = round_index
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())

    def close(self) -> None:
        self._file.close()


def row_sum(row: np.ndarray) -> np.uint64:
    """The sum of a float32 row's bytes read as 64-bit words (a last odd value alone), modulo 2**64."""
    words = row.view(np.uint32)
    whole = words.size & ~1
    total = int(np.add.reduce(words[:whole].view(np.uint64), dtype=np.uint64))
    return np.uint64((total + (int(words[-1]) if words.size % 2 else 0)) % 2**64)


def _create_fixed(handle: h5py.File, name: str, shape: tuple, dtype: str, chunks: tuple | None = None) -> None:
    """A dataset whose file space is all placed now and never filled (so metadata never changes later)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks:
        dcpl.set_chunk(chunks)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(handle.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)


def _open_for_writing(path: str) -> h5py.File:
    return h5py.File(path, "r+", rdcc_nbytes=0)  # no chunk cache: a write goes straight to its slot


def _check(handle: h5py.File, path: str, index: StateIndex, round_index: int, option: str) -> None:
    attrs = handle.attrs
    if attrs.get("format") != FORMAT:
        raise UsageError(f"{option}: {path} is an HDF5 file but not a fedbat_mpi client state file")
    if int(attrs["format_version"]) != FORMAT_VERSION:
        raise UsageError(f"{option}: {path} has client state format {attrs['format_version']}; "
                         f"this version reads {FORMAT_VERSION}")  # fmt: skip
    if attrs["store_id"] != index.store_id:
        raise UsageError(f"{option}: {path} is another run's client state (store {attrs['store_id']}), "
                         f"not the checkpoint's (store {index.store_id})")  # fmt: skip
    expected = (len(index.slots), 2, index.row_size)
    if not np.isin(index.slots, (NO_ROW, 0, 1)).all():
        raise UsageError(f"{option}: the checkpoint's client state slots are not all -1, 0 or 1 (corrupt?)")
    if attrs["name"] != index.name or handle["rows"].shape != expected:
        raise UsageError(f"{option}: {path} holds {attrs['name']} {handle['rows'].shape}; "
                         f"the checkpoint expects {index.name} {expected}")  # fmt: skip
    committed = int(handle["committed_round"][0])
    if committed > round_index:
        raise UsageError(
            f"{option}: the checkpoint is of round {round_index}, but {path} has moved on from a checkpoint of "
            f"round {committed}, so this checkpoint's client rows may be overwritten; resume the newest checkpoint"
        )
