"""Rank 0's server step: ``read_round`` (one round's payloads, checked at once) and the ``Aggregator``
against the float64 reference, for both engines, several chunks of clients and 1 or 2 threads.
The exact messages for each defect are pinned in test_codec.py; here, which payload is named."""

import struct

import numpy as np
import pytest
import torch

from fedbat_mpi.server.aggregate import Aggregator, rule_of
from fedbat_mpi.server.payloads import read_round
from fedbat_mpi.testing.payloads import make_payload, model_layout, reference_aggregate
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.rule import ServerRule

CLIENTS = 37  # with clients_per_chunk=32: a full chunk of two groups of 16, then one padded group
SIGNS, FLOAT32 = codec.BodyKind.SIGNS, codec.BodyKind.FLOAT32


@pytest.fixture(scope="module")
def cnn4():
    layout, net = model_layout("cnn4-mnist")
    return layout, layout.global_vector(net)


def round_buffer(layout, kind: codec.BodyKind, clients=range(CLIENTS)) -> np.ndarray:
    return np.concatenate(
        [np.zeros(0, np.uint8), *(codec.encode(make_payload(layout, c, kind)) for c in clients)]
    )


@pytest.fixture(scope="module")
def rounds(cnn4):
    """Per body kind: the round's buffer in client-id order, shuffled, and the float64 reference."""
    layout, global_vector = cnn4
    out = {}
    for kind in codec.BodyKind:
        payloads = [make_payload(layout, c, kind) for c in range(CLIENTS)]
        shuffled = np.random.default_rng(1).permutation(CLIENTS)
        buffers = [round_buffer(layout, kind), round_buffer(layout, kind, shuffled)]
        out[kind] = buffers, reference_aggregate(layout, global_vector, payloads)
    return out


@pytest.mark.parametrize(
    ("kind", "engine"), [(SIGNS, "table"), (SIGNS, "torch"), (FLOAT32, "torch")],
    ids=["SIGNS-table", "SIGNS-torch", "FLOAT32-torch"],
)
def test_the_server_step_equals_the_float64_reference_in_any_buffer_order(cnn4, rounds, kind, engine):
    layout, global_vector = cnn4
    shape = codec.PayloadShape.of(layout, kind)
    buffers, expected = rounds[kind]
    step = np.abs(expected - global_vector).max()
    results = []
    for threads in (1, 2):
        aggregator = Aggregator(layout, shape, threads=threads, engine=engine, clients_per_chunk=32)
        for buffer in buffers:
            results.append(aggregator(global_vector, read_round(buffer, shape)))
        aggregator.close()
    assert results[0].dtype == np.float32
    assert np.abs(results[0] - expected).max() <= 1e-5 * step
    # The same bytes whatever the buffer order (rank 0 sums in client-id order) and the number of threads.
    assert all(r.tobytes() == results[0].tobytes() for r in results[1:])


def test_the_torch_engine_takes_an_ordered_chunk_as_it_lies_in_the_buffer_and_gathers_a_shuffled_one(cnn4, rounds):
    """A chunk whose rows follow each other (as the engine's gather delivers them) is read in place on the
    CPU, and is one span copy from pinned memory on CUDA; other orders go through the staging buffers."""
    layout, _ = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    aggregator = Aggregator(layout, shape, engine="torch", clients_per_chunk=32)
    (ordered, shuffled), _ = rounds[SIGNS]
    in_order, mixed = read_round(ordered, shape), read_round(shuffled, shape)
    rows = aggregator._rows_on_device(in_order.body, in_order.order[:32])
    assert rows is not None and np.shares_memory(rows.numpy(), ordered)
    assert torch.equal(rows, torch.from_numpy(np.ascontiguousarray(in_order.body[:32])))
    assert aggregator._rows_on_device(mixed.body, mixed.order[:32]) is None
    assert aggregator.receive_buffer(100).dtype == np.uint8  # pageable on the CPU, pinned on CUDA


def test_float32_bodies_take_the_torch_engine_on_the_cpu_and_the_table_engine_refuses_them(cnn4):
    layout, _ = cnn4
    shape = codec.PayloadShape.of(layout, FLOAT32)
    assert Aggregator(layout, shape).engine == "torch"
    assert Aggregator(layout, codec.PayloadShape.of(layout, SIGNS)).engine == "table"
    with pytest.raises(ValueError, match="table engine sums sign bodies"):
        Aggregator(layout, shape, engine="table")


@pytest.mark.parametrize("engine", ["table", "torch"])
def test_a_rule_of_coefficients_and_a_finish_majority_vote(cnn4, engine):
    """The hook for other rules: SignSGD's majority vote, c = 1 and finish = lr * sign (ties give 0)."""
    layout, global_vector = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    clients = [3, 4, 8, 9]  # an even number: some entries tie
    aggregator = Aggregator(
        layout, shape, engine=engine,
        coefficients=lambda weights, scales: np.ones((weights.size, 1)),
        finish=lambda update: np.float32(0.01) * np.sign(update),
    )  # fmt: skip
    new = aggregator(global_vector, read_round(round_buffer(layout, SIGNS, clients), shape))
    votes = np.sum(
        [np.unpackbits(make_payload(layout, c).body, count=layout.update_size).astype(int) * 2 - 1 for c in clients],
        axis=0,
    )
    moved = np.concatenate(
        [
            new[s.global_offset : s.global_offset + s.size]
            - global_vector[s.global_offset : s.global_offset + s.size]
            for s in layout.binarized
        ]
    )
    assert (votes == 0).any() and (votes != 0).any()
    np.testing.assert_allclose(moved, 0.01 * np.sign(votes), atol=1e-7)


@pytest.mark.parametrize("rule", [ServerRule.WEIGHTED_SUM, ServerRule.MAJORITY_VOTE], ids=lambda r: r.name)
def test_the_torch_engine_over_several_blocks_and_chunks_from_its_first_call(cnn4, rule):
    """150 clients, chunks of 128 (a full chunk and a part; clients in a shuffled buffer order, so rows
    are gathered through the staging buffers), CNN4-MNIST's body in 6 of the torch engine's
    blocks on the CPU: the first call after the build (and its warm-up) gives what later calls give, the
    float64 reference within tolerance, and, under the majority vote (sums of ±1, exact in float32), the
    table engine's bytes. The vote's warm-up leaves a sum of -128 per entry behind, so a call that did
    not start from zero would show."""
    layout, global_vector = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    clients = np.random.default_rng(2).permutation(150)
    payloads = read_round(round_buffer(layout, SIGNS, clients), shape)
    coefficients, finish = rule_of(rule, 0.003)
    torch_engine, table = (Aggregator(layout, shape, threads=2, engine=engine, coefficients=coefficients,
                                      finish=finish, clients_per_chunk=128) for engine in ("torch", "table"))  # fmt: skip
    first = torch_engine(global_vector, payloads)
    assert torch_engine(global_vector, payloads).tobytes() == first.tobytes()
    if rule is ServerRule.MAJORITY_VOTE:
        assert table(global_vector, payloads).tobytes() == first.tobytes()
    else:
        expected = reference_aggregate(layout, global_vector, [make_payload(layout, c) for c in range(150)])
        assert np.abs(first - expected).max() <= 1e-5 * np.abs(expected - global_vector).max()
    torch_engine.close()
    table.close()


def test_read_round_views_the_buffer_in_buffer_order(cnn4):
    layout, _ = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    sent = [make_payload(layout, c) for c in (5, 2, 9)]
    buffer = round_buffer(layout, SIGNS, [5, 2, 9])
    payloads = read_round(buffer, shape)
    assert payloads.client_ids.tolist() == [5, 2, 9] and payloads.sorted_ids == [2, 5, 9]
    for row, p in enumerate(sent):
        assert (payloads.weights[row], payloads.train_losses[row]) == (p.weight, p.train_loss)
        for got, want in [(payloads.scales, p.scales), (payloads.dense, p.dense), (payloads.body, p.body)]:
            assert np.array_equal(got[row], want) and np.shares_memory(got, buffer)
    shares = np.array([p.weight for p in sent]) / sum(p.weight for p in sent)
    assert payloads.train_loss == pytest.approx(float(np.dot(shares, [p.train_loss for p in sent])))
    assert payloads.uplink_bytes == buffer.size == 3 * shape.size


def patch(buffer: np.ndarray, row: int, size: int, fmt: str, offset: int, value) -> np.ndarray:
    out = buffer.copy()
    struct.pack_into(fmt, out.data, row * size + offset, value)
    return out


FAULTS = {  # (format, offset in the payload, value, what the message says after naming the payload)
    "magic": ("4s", 0, b"XXXX", "bad magic"),
    "update size": ("<Q", 16, 12, "update size d = 12"),
    "nan weight": ("<d", 32, float("nan"), "aggregation weight nan"),
    "nan scale": ("<f", 48 + 4 * 4, float("nan"), "scale 4 is nan"),
    "duplicate": ("<I", 8, 1, "duplicate client id (first sent at byte {first})"),
}


@pytest.mark.parametrize("row", [0, 3])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_first_bad_payload_in_buffer_order_is_named(cnn4, fault, row):
    layout, _ = cnn4
    size = codec.PayloadShape.of(layout, SIGNS).size
    fmt, offset, value, cause = FAULTS[fault]
    bad = patch(round_buffer(layout, SIGNS, range(6)), row, size, fmt, offset, value)
    # A later fault of the same stage (headers and duplicates are checked before scales) is not named.
    bad = (
        patch(bad, 5, size, "<f", 48, -1.0) if fault == "nan scale" else patch(bad, 5, size, "4s", 0, b"LATE")
    )
    where = f"payload at byte {row * size}" + ("" if fault == "magic" else f" (client {row})")
    if fault == "duplicate":  # row `row` now says client 1: the later of the two rows is named
        later, earlier = max(row, 1), min(row, 1)
        where, cause = f"payload at byte {later * size} (client 1)", cause.format(first=earlier * size)
    with pytest.raises(codec.PayloadError) as error:
        read_round(bad, codec.PayloadShape.of(layout, SIGNS))
    assert str(error.value).startswith(f"{where}: {cause}")


def test_header_faults_and_duplicates_come_before_scales(cnn4):
    layout, _ = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    buffer = round_buffer(layout, SIGNS, range(6))
    bad = patch(patch(buffer, 4, shape.size, "<I", 8, 2), 1, shape.size, "<f", 48, -2.0)
    with pytest.raises(codec.PayloadError, match=rf"byte {4 * shape.size} \(client 2\): duplicate"):
        read_round(bad, shape)


@pytest.mark.parametrize("cut", [20, 48, 5000])
def test_a_truncated_last_payload_is_named(cnn4, cut):
    layout, _ = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    tail = codec.encode(make_payload(layout, 7))[:cut]
    with pytest.raises(codec.PayloadError, match=rf"payload at byte {3 * shape.size}.*truncated"):
        read_round(np.concatenate([round_buffer(layout, SIGNS, range(3)), tail]), shape)


def test_an_empty_round_is_refused(cnn4):
    layout, global_vector = cnn4
    shape = codec.PayloadShape.of(layout, SIGNS)
    with pytest.raises(ValueError, match="no client payloads"):
        Aggregator(layout, shape)(global_vector, read_round(np.zeros(0, np.uint8), shape))
