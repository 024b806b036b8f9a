"""The per-client state store: rows and slots, what a write touches on disk, reopening, refusals."""

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedbat_mpi.errors import UsageError
from fedbat_mpi.server.client_state import FILE_NAME, NO_ROW, ClientStateStore, StateIndex

CLIENTS, SIZE = 50, 1_000


def _rows(*values: float) -> np.ndarray:
    return np.stack([np.arange(SIZE, dtype=np.float32) + value for value in values])


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _committed(tmp_path: Path, rows_by_client: dict[int, np.ndarray], round_index: int = 1):
    """A store holding ``rows_by_client`` committed by the checkpoint of ``round_index``; its index."""
    store = ClientStateStore.create(str(tmp_path), "error_memory", CLIENTS, SIZE)
    store.write(list(rows_by_client), np.array(list(rows_by_client.values()), np.float32).reshape(-1, SIZE))
    index = store.prepare()
    store.commit(round_index)
    return store, index


def test_rows_read_back_zeros_for_clients_without_one_and_survive_reopening(tmp_path):
    store, index = _committed(tmp_path, {3: _rows(3)[0], 40: _rows(40)[0]})
    assert np.array_equal(store.read([3, 7, 40]), np.stack([_rows(3)[0], np.zeros(SIZE), _rows(40)[0]]))
    assert index.clients_with_rows() == 2 and index.slots[7] == NO_ROW and index.slots.dtype == np.int8
    store.close()
    reopened = ClientStateStore.open(str(tmp_path), index, 1)
    assert np.array_equal(reopened.read([40, 3]), _rows(40, 3))


def flip_a_bit_of_each_row(path: Path, index: StateIndex, clients: list[int]) -> None:
    """Bit rot: one bit flipped on disk in each committed row of ``clients``."""
    with h5py.File(path) as handle:
        chunks = [handle["rows"].id.get_chunk_info_by_coord((client, 0, 0)).byte_offset for client in clients]
    data = bytearray(path.read_bytes())
    for client, chunk in zip(clients, chunks):
        data[chunk + 4 * index.row_size * int(index.slots[client]) + 4 * 123 + 2] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_row_damaged_on_disk_is_refused_when_read_and_the_others_read_as_written(tmp_path):
    store, index = _committed(tmp_path, {3: _rows(3)[0], 40: _rows(40)[0]})
    store.close()
    flip_a_bit_of_each_row(tmp_path / FILE_NAME, index, [40])
    reopened = ClientStateStore.open(str(tmp_path), index, 1)
    assert np.array_equal(reopened.read([3, 7]), np.stack([_rows(3)[0], np.zeros(SIZE)]))
    with pytest.raises(UsageError, match=r"is damaged: client 40's row \(slot 0\) no longer adds up"):
        reopened.read([3, 40])
    reopened.write([40], _rows(41))  # a new row, in the other slot, with its own sum
    assert np.array_equal(reopened.read([40]), _rows(41))


def test_a_row_written_twice_between_checkpoints_leaves_the_committed_row_alone(tmp_path):
    store, first = _committed(tmp_path, {5: _rows(1)[0]})
    store.write([5], _rows(2))
    store.write([5], _rows(3))  # the same uncommitted slot again, not back onto the committed one
    assert np.array_equal(store.read([5]), _rows(3))
    second = store.prepare()
    assert (first.slots[5], second.slots[5]) == (0, 1)
    store.close()  # as if killed here: the checkpoint of round 1 (``first``) is the one in place
    resumed = ClientStateStore.open(str(tmp_path), first, 1)
    assert np.array_equal(resumed.read([5]), _rows(1))
    resumed.write([5], _rows(4))
    assert resumed.prepare().slots[5] == 1  # the rows after a resume again avoid the committed slot


def test_a_write_touches_only_the_slot_it_writes_and_the_disk_holds_only_rows_written(tmp_path):
    store, _ = _committed(tmp_path, {})
    path = tmp_path / FILE_NAME
    before = np.fromfile(path, np.uint8)
    store.write([7], _rows(1))
    store.prepare()
    after = np.fromfile(path, np.uint8)
    store.close()
    with h5py.File(path, "r") as handle:
        start = handle["rows"].id.get_chunk_info_by_coord((7, 0, 0)).byte_offset  # slot 0 of client 7
    changed = np.flatnonzero(before != after)
    assert after.size == before.size and changed.size > 0
    assert start <= changed.min() and changed.max() < start + 4 * SIZE  # no metadata, no other row
    # The file is sparse: its size covers every client's two slots, the disk only what was written.
    big = tmp_path / "big"
    big.mkdir()
    store = ClientStateStore.create(str(big), "error_memory", 2_000, 100_000)  # 1.6 GB apparent
    store.write([10, 1_500], np.ones((2, 100_000), np.float32))
    store.prepare()
    stat = (big / FILE_NAME).stat()
    assert stat.st_size > 1.6e9 and 512 * stat.st_blocks < 2e6


def test_an_older_checkpoint_is_refused_once_rows_after_the_newer_one_may_overwrite_its_slots(tmp_path):
    store, first = _committed(tmp_path, {5: _rows(1)[0]}, round_index=1)
    store.write([5], _rows(2))
    store.prepare()
    store.commit(2)
    store.write([5], _rows(3))  # into slot 0: the row the checkpoint of round 1 committed
    store.close()
    path = tmp_path / FILE_NAME
    before = _fingerprint(path)
    with pytest.raises(UsageError, match="the checkpoint is of round 1, but .* a checkpoint of round 2") as error:
        ClientStateStore.open(str(tmp_path), first, 1)
    assert "\n" not in str(error.value) and _fingerprint(path) == before


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5_000])


def _not_hdf5(path: Path) -> None:
    path.write_text("rows\n")


def _foreign(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as handle:
        handle["rows"] = np.zeros((CLIENTS, 2, SIZE), np.float32)


def _another_runs(path: Path) -> None:
    other = path.parent / "other"
    other.mkdir()
    ClientStateStore.create(str(other), "error_memory", CLIENTS, SIZE).close()
    (other / FILE_NAME).replace(path)


def _missing(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage,message", [
    (_truncated, "cannot be read as client state"),
    (_not_hdf5, "not an HDF5 file"),
    (_foreign, "not a fedbat_mpi client state file"),
    (_another_runs, "is another run's client state"),
    (_missing, "client state file .* is missing"),
])  # fmt: skip
def test_a_damaged_foreign_or_missing_store_is_refused_with_one_line_and_left_untouched(tmp_path, damage, message):
    store, index = _committed(tmp_path, {3: _rows(3)[0]})
    store.close()
    path = tmp_path / FILE_NAME
    damage(path)
    before = _fingerprint(path) if path.exists() else None
    with pytest.raises(UsageError, match=message) as error:
        ClientStateStore.open(str(tmp_path), index, 1)
    assert "\n" not in str(error.value) and str(error.value).startswith("--resume: ")
    assert (_fingerprint(path) if path.exists() else None) == before


def test_resuming_a_checkpoint_commits_it_so_that_an_older_one_is_refused_afterwards(tmp_path):
    """Killed after the checkpoint of round 2 was renamed into place, before the store's commit: the
    resume of round 2 commits it, so a later resume of round 1 (checkpoint.prev.h5) is refused."""
    store, first = _committed(tmp_path, {5: _rows(1)[0]}, round_index=1)
    store.write([5], _rows(2))
    second = store.prepare()
    store.close()  # killed before commit(2)
    resumed = ClientStateStore.open(str(tmp_path), second, 2)
    assert np.array_equal(resumed.read([5]), _rows(2))
    resumed.write([5], _rows(3))  # into slot 0: the row the checkpoint of round 1 committed
    resumed.close()
    with pytest.raises(UsageError, match="the checkpoint is of round 1, but .* a checkpoint of round 2"):
        ClientStateStore.open(str(tmp_path), first, 1)
