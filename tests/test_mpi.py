"""Collectives and the round loop on real MPI ranks (run by tests/run_all.sh on 2 and 4 ranks)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from fedbat_mpi.client.algorithms import ALGORITHMS
from fedbat_mpi.config import Config
from fedbat_mpi.data import load_dataset
from fedbat_mpi.layout import model_sha256
from fedbat_mpi.rounds.engine import Engine
from fedbat_mpi.rounds.schedule import clients_of_rank
from fedbat_mpi.server.aggregate import Aggregator
from fedbat_mpi.server.client_state import ClientStateStore
from fedbat_mpi.server.payloads import read_round
from fedbat_mpi.testing.payloads import make_payload, model_layout, reference_aggregate
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.comm import Communicator

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(scope="module")
def layout_and_model():
    return model_layout("cnn4-mnist")


def _hosted(rank: int) -> list[int]:
    """Uneven hosting: rank r has r clients, so rank 0 has none."""
    return [100 * rank + j for j in range(rank)]


def _all_equal_on_every_rank(comm: Communicator, data: bytes) -> bool:
    digest = np.frombuffer(hashlib.sha256(data).digest(), dtype=np.uint8)
    gathered, _ = comm.gather_bytes(digest)
    same = np.array([gathered is not None and bool(np.all(gathered.reshape(comm.size, -1) == digest))], dtype=np.uint8)
    comm.broadcast(same)
    return bool(same[0])


@pytest.mark.parametrize("max_message_bytes", [2**31 - 1, 1000])
def test_a_gather_with_agreed_counts_needs_no_count_exchange_and_reuses_the_buffer_it_allocated(max_message_bytes):
    comm = Communicator(max_message_bytes=max_message_bytes)
    counts = [300 * r + 7 for r in range(comm.size)]  # every rank knows them, as the schedule fixes them
    allocated = []  # rank 0's receive memory, from the caller (pinned for a GPU's aggregator)

    def allocate(size: int) -> np.ndarray:
        allocated.append(np.empty(size, dtype=np.uint8))
        return allocated[-1]

    buffers = []
    for call in range(2):
        mine = np.full(counts[comm.rank], (comm.rank + 10 * call) % 256, dtype=np.uint8)
        buffer, got = comm.gather_bytes(mine, counts, reuse="test", allocate=allocate)
        if comm.is_root:
            assert buffer is not None and got is not None
            expected = np.concatenate([np.full(n, (r + 10 * call) % 256, np.uint8) for r, n in enumerate(counts)])
            assert got.tolist() == counts and np.array_equal(buffer, expected)
            buffers.append(buffer)
    if comm.is_root:  # the second call received into the first one's memory, which `allocate` gave
        assert np.shares_memory(buffers[0], buffers[1])
        assert [a.size for a in allocated] == [sum(counts)] and np.shares_memory(buffers[0], allocated[0])
    assert comm.is_root or not allocated


@pytest.mark.parametrize("max_message_bytes", [2**31 - 1, 50_000])
def test_gathered_payloads_equal_what_each_rank_sent(layout_and_model, max_message_bytes):
    layout, _ = layout_and_model
    comm = Communicator(max_message_bytes=max_message_bytes)
    kinds = list(codec.BodyKind)
    mine = [codec.encode(make_payload(layout, cid, kinds[cid % 2])) for cid in _hosted(comm.rank)]
    buffer, counts = comm.gather_bytes(np.concatenate([np.zeros(0, np.uint8), *mine]))
    if comm.is_root:
        assert buffer is not None and counts is not None
        expected = [make_payload(layout, cid, kinds[cid % 2]) for r in range(comm.size) for cid in _hosted(r)]
        assert counts.tolist() == [sum(codec.encode(p).size for p in expected if p.client_id // 100 == r) for r in range(comm.size)]
        offset = 0
        for want in expected:  # the kinds alternate, so each payload is read against its own shape
            got, offset = codec.decode(buffer, codec.PayloadShape.of(layout, want.kind), offset)
            assert got.client_id == want.client_id and got.weight == want.weight and got.kind is want.kind
            assert np.array_equal(got.scales, want.scales) and np.array_equal(got.dense, want.dense)
            assert np.array_equal(got.body, want.body)
        assert offset == buffer.size
    else:
        assert buffer is None


def test_split_broadcast_equals_single_message():
    comm = Communicator(max_message_bytes=4096)
    values = np.arange(100_003, dtype=np.float32) if comm.is_root else np.zeros(100_003, dtype=np.float32)
    comm.broadcast(values)
    assert np.array_equal(values, np.arange(100_003, dtype=np.float32))


@pytest.mark.parametrize("kind", list(codec.BodyKind))
def test_aggregation_over_ranks_equals_serial_reference(layout_and_model, kind):
    layout, model = layout_and_model
    comm = Communicator()
    global_vector = layout.global_vector(model)
    clients = np.array([2, 3, 5, 8, 13, 21, 34])
    mine = clients_of_rank(clients, comm.size, comm.rank)
    parts = [np.zeros(0, np.uint8)] + [codec.encode(make_payload(layout, int(c), kind)) for c in mine]
    buffer, _ = comm.gather_bytes(np.concatenate(parts))
    new = np.empty_like(global_vector)
    if comm.is_root:
        assert buffer is not None
        shape = codec.PayloadShape.of(layout, kind)
        aggregator = Aggregator(layout, shape)
        new = aggregator(global_vector, read_round(buffer, shape))
        serial = [make_payload(layout, int(c), kind) for c in clients]
        serial_buffer = np.concatenate([codec.encode(p) for p in serial])
        assert model_sha256(new) == model_sha256(aggregator(global_vector, read_round(serial_buffer, shape)))
        np.testing.assert_allclose(new, reference_aggregate(layout, global_vector, serial), rtol=1e-5, atol=1e-6)
    comm.broadcast(new)
    assert _all_equal_on_every_rank(comm, new.tobytes())


@pytest.mark.parametrize("max_message_bytes", [2**31 - 1, 1000])
def test_scattered_parts_reach_their_ranks(max_message_bytes):
    comm = Communicator(max_message_bytes=max_message_bytes)
    parts = [np.full(3000 * r, r, dtype=np.uint8) for r in range(comm.size)] if comm.is_root else None
    mine = comm.scatter_bytes(parts)
    assert mine.size == 3000 * comm.rank and np.all(mine == comm.rank)


def _store(engine: Engine, folder: Path) -> ClientStateStore | None:
    """Rank 0's client-state store, for an algorithm that keeps state (as rounds/job.py gives it)."""
    if not (engine.state_size and engine.comm.is_root):
        return None
    folder.mkdir()
    return engine.new_state_store(str(folder))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_rounds_on_all_ranks_equal_the_same_rounds_on_one(algorithm, tmp_path):
    config = Config(algorithm=algorithm, num_clients=40, clients_per_round=5, local_epochs=1, batch_size=64,
                    rounds=2, device="cpu", model="cnn4-mnist", eval_batch_size=1000)  # fmt: skip
    dataset = load_dataset("embedded", None)
    comm = Communicator()
    engine = Engine(config, comm, dataset)
    engine.states = _store(engine, tmp_path / "parallel")
    # EF-SignSGD: two clients a rank a wave, so that 5 clients make waves that end part full (3 + 2 on 2 ranks)
    engine.state_wave_bytes = 2 * comm.size * 4 * engine.state_size
    parallel = [engine.run_round(1), engine.run_round(2)][-1]
    if comm.is_root:
        serial_engine = Engine(config, Communicator(MPI.COMM_SELF), dataset)
        serial_engine.states = _store(serial_engine, tmp_path / "serial")
        serial_engine.state_wave_bytes = 1  # EF-SignSGD: one client's state at a time (5 waves a round)
        serial = [serial_engine.run_round(1), serial_engine.run_round(2)][-1]
        assert parallel is not None and serial is not None
        assert parallel.model_sha256 == serial.model_sha256
        if algorithm == "ef-signsgd":  # the error memory of every client that trained is kept on rank 0
            assert engine.states is not None and serial_engine.states is not None
            index, serial_index = engine.states.prepare(), serial_engine.states.prepare()
            assert np.array_equal(index.slots, serial_index.slots) and index.clients_with_rows() > 4
            every = list(range(config.num_clients))
            assert np.array_equal(engine.states.read(every), serial_engine.states.read(every))
        assert parallel.clients == serial.clients
        assert parallel.uplink_bytes == serial.uplink_bytes
        assert (parallel.test_acc, parallel.test_loss, parallel.train_loss) == (serial.test_acc, serial.test_loss, serial.train_loss)
