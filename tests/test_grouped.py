"""Training a group of clients at once (``--client-group``) equals training them one after another,
for every algorithm, with unequal clients: other sample counts, ragged last batches, other step counts.

A group of one is one-by-one training (the same code path), so the comparison is a group against groups
of one. It runs in float64: in float32, grouped convolutions add in another order and training from the
N(0, 0.01) initialisation under BatchNorm amplifies that rounding many times per step (measured: 5-45 %
relative difference of the update after 2 epochs at lr 0.01 in float32, against 1e-14 in float64), so
only float64 tells a real difference (a client seeing another's samples or statistics) from rounding.
"""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from fedbat_mpi.client.algorithms import ALGORITHMS, LocalTask, LocalUpdate, make_algorithm, on_host
from fedbat_mpi.client.algorithms import group as group_module
from fedbat_mpi.client.algorithms.base import pack_sign_rows
from fedbat_mpi.client.algorithms.group import GroupStep
from fedbat_mpi.client.grouped_layers import group_cross_entropy, grouped_inputs, grouped_model
from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.config import Config
from fedbat_mpi.data import load_dataset, normalize
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rounds.engine import Engine
from fedbat_mpi.wire.comm import Communicator

BATCH, EPOCHS, LR, CLIENTS = 32, 2, 0.1, 4


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("embedded", None)


@pytest.fixture(scope="module")
def client_data(dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four clients of a real ``dir:0.3`` partition: different sizes, none a multiple of the batch."""
    config = Config(num_clients=40, clients_per_round=40, partition="dir:0.3", model="cnn4-mnist", device="cpu")
    engine = Engine(config, Communicator(MPI.COMM_SELF), dataset)
    sizes = sorted((len(index), c) for c, index in enumerate(engine.client_indices) if len(index) % BATCH and len(index) <= 160)
    chosen = [c for _, c in sizes[:: max(1, len(sizes) // CLIENTS)]][:CLIENTS]
    images = normalize(dataset.train_x, dataset.train_mean, dataset.train_std).double()
    data = [(images[engine.client_indices[c]], dataset.train_y[engine.client_indices[c]]) for c in chosen]
    assert len({len(y) for _, y in data}) == CLIENTS
    return data


def _tasks(model, layout, client_data, states=None, graphs=False, epochs=EPOCHS) -> list[LocalTask]:
    """The clients' tasks: each reshuffles its own data every epoch, from its own streams."""
    tasks = []
    for k, (x, y) in enumerate(client_data):
        order = torch.Generator().manual_seed(k)
        batches = []
        for _ in range(epochs):
            permutation = torch.randperm(len(y), generator=order)
            batches += [(x[i], y[i]) for i in permutation.split(BATCH)]
        tasks.append(LocalTask(k, model, layout, functools.partial(iter, batches), len(batches), LR,
                               functools.partial(_client_streams, k), None if states is None else states[k], graphs))  # fmt: skip
    return tasks


def _client_streams(k: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * k + int(stream))


def _count_captures(monkeypatch) -> list[int]:
    """A list that grows by one at each ``GroupStep.capture`` from now on."""
    captures: list[int] = []
    capture = GroupStep.capture

    def counted(self: GroupStep, step):
        captures.append(1)
        return capture(self, step)

    monkeypatch.setattr(GroupStep, "capture", counted)
    return captures


def _assert_equal_up_to_rounding(grouped: LocalUpdate, alone: LocalUpdate) -> None:
    torch.testing.assert_close(grouped.scales, alone.scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(grouped.dense, alone.dense, rtol=1e-6, atol=1e-9)
    assert grouped.train_loss == pytest.approx(alone.train_loss, rel=1e-9)
    if grouped.body.dtype == torch.bool:
        assert torch.equal(grouped.body, alone.body)
    else:
        assert (grouped.body - alone.body).norm() <= 1e-9 * alone.body.norm()
    if alone.state is not None:
        assert grouped.state is not None
        assert (grouped.state - alone.state).norm() <= 1e-9 * alone.state.norm()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_group_of_unequal_clients_equals_training_them_one_by_one(client_data, algorithm):
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5, zsign_sigma=1.0)
    states = None
    if trainer.state_size(layout):
        states = [torch.randn(layout.update_size, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
                  * 1e-3 for k in range(CLIENTS)]  # fmt: skip
    tasks = _tasks(model, layout, client_data, states)
    steps = [task.num_steps for task in tasks]
    assert len(set(steps)) > 1 and all(s == EPOCHS * math.ceil(len(y) / BATCH) for s, (_, y) in zip(steps, client_data))
    grouped = trainer.train(tasks)
    alone = [trainer.train([task])[0] for task in tasks]
    for a, b in zip(grouped, alone, strict=True):
        _assert_equal_up_to_rounding(a, b)
    # Each client trained on its own data with its own streams: the uploads differ between clients.
    assert not torch.equal(grouped[0].body, grouped[1].body)
    if algorithm == "fedbat":  # each client's alpha follows from its own alpha0 after its own warm-up
        assert len({tuple(u.scales.tolist()) for u in grouped}) == CLIENTS


def test_client_groups_are_runs_of_the_hosted_clients_in_id_order(dataset):
    def engine(**options) -> Engine:
        config = Config(num_clients=40, clients_per_round=8, model="cnn4-mnist", device="cpu", **options)
        return Engine(config, Communicator(MPI.COMM_SELF), dataset)

    assert engine(client_group=3).client_groups([1, 4, 5, 9, 12, 20, 33]) == [[1, 4, 5], [9, 12, 20], [33]]
    # auto: one at a time on the CPU (grouping measured no faster there); on a GPU the whole share.
    assert engine().client_groups([1, 4, 5]) == [[1], [4], [5]]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
                                   RuntimeError("GET was unable to find an engine to execute this computation")])  # fmt: skip
def test_a_group_the_device_has_no_memory_for_is_halved_for_the_rest_of_the_run(dataset, monkeypatch, error):
    """Run here on the CPU with the error a GPU raises (or cuDNN's instead of it) for groups of more than
    two clients: the round trains in halves, to the same model as groups of two, and later rounds start
    from groups of two, never again from the group that did not fit."""
    def engine(client_group: int) -> Engine:
        config = Config(num_clients=40, clients_per_round=8, local_epochs=1, model="cnn4-mnist", device="cpu",
                        client_group=client_group)  # fmt: skip
        return Engine(config, Communicator(MPI.COMM_SELF), dataset)

    def model_sha256(engine: Engine, round_index: int) -> str:
        result = engine.run_round(round_index)
        assert result is not None  # rank 0 of one rank
        return result.model_sha256

    in_pairs = engine(2)
    expected = [model_sha256(in_pairs, r) for r in (1, 2)]
    halved = engine(8)
    step, failed = GroupStep.__call__, []

    def short_of_memory(self: GroupStep, buckets):
        if self.totals.numel() > 2:
            failed.append(self.totals.numel())
            raise error
        return step(self, buckets)

    monkeypatch.setattr(GroupStep, "__call__", short_of_memory)
    assert model_sha256(halved, 1) == expected[0]
    assert failed == [8, 4, 4] and halved.client_groups(list(range(8))) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert model_sha256(halved, 2) == expected[1] and failed == [8, 4, 4]
    def broken(self: GroupStep, buckets):
        raise RuntimeError("another failure")

    monkeypatch.setattr(GroupStep, "__call__", broken)
    with pytest.raises(RuntimeError, match="another failure"):  # not the device's memory: no halving
        halved.run_round(3)

    def never_enough(self: GroupStep, buckets):
        failed.append(self.totals.numel())
        raise error

    monkeypatch.setattr(GroupStep, "__call__", never_enough)
    failed.clear()
    with pytest.raises(RuntimeError) as raised:  # one client that does not fit ends the run: no empty halves
        halved.run_round(3)
    assert raised.value is error and failed == [2, 1] and halved.memory_limit == 1


@pytest.mark.parametrize("algorithm", ["fedbat", "fedavg"])
def test_steps_replayed_from_static_inputs_are_the_eager_steps(client_data, algorithm, monkeypatch):
    """``graphs``: a step that comes back runs from copies of its inputs in tensors of its own (on a GPU,
    a CUDA graph's replay; on the CPU the same function, eagerly): bitwise the eager result."""
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5, zsign_sigma=1.0)
    captures = _count_captures(monkeypatch)
    eager = trainer.train(_tasks(model, layout, client_data, epochs=4))
    assert not captures
    replayed = trainer.train(_tasks(model, layout, client_data, graphs=True, epochs=4))
    assert len(captures) >= 2  # e.g. full batches of the whole group, in each phase
    [kept] = trainer.kept.values()
    graphs = dict(kept.step.captured)
    # The next round: the same tensors (refilled) and the same step; the graphs of the first round replay.
    again = trainer.train(_tasks(model, layout, client_data, graphs=True, epochs=4))
    assert all(kept.step.captured[signature] is graph for signature, graph in graphs.items())
    for round_ in (replayed, again):
        for a, b in zip(round_, eager, strict=True):
            assert torch.equal(a.body, b.body) and torch.equal(a.scales, b.scales) and torch.equal(a.dense, b.dense)
            assert a.train_loss == b.train_loss


def test_clients_trained_one_at_a_time_replay_each_others_graphs(client_data):
    """Groups of one (``--client-group 1``) share the kept tensors and graphs of their size: the next
    client refills them and replays the steps the previous ones captured, bitwise the eager result."""
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm("fedbat", rho=6.0, warmup=0.5)
    eager = [trainer.train([task])[0] for task in _tasks(model, layout, client_data)]
    replayed = [trainer.train([task])[0] for task in _tasks(model, layout, client_data, graphs=True)]
    [kept] = trainer.kept.values()
    assert kept.step.captured  # steps of one client's batch size and phase came back
    for a, b in zip(replayed, eager, strict=True):
        assert torch.equal(a.body, b.body) and torch.equal(a.scales, b.scales) and torch.equal(a.dense, b.dense)
        assert a.train_loss == b.train_loss


def test_a_group_past_its_graph_budget_evicts_the_oldest_and_still_equals_eager(client_data, monkeypatch):
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm("fedavg")
    eager = trainer.train(_tasks(model, layout, client_data, epochs=4))
    monkeypatch.setattr(group_module, "MAX_GRAPHS", 1)
    captures = _count_captures(monkeypatch)
    replayed = trainer.train(_tasks(model, layout, client_data, graphs=True, epochs=4))
    [kept] = trainer.kept.values()
    assert len(kept.step.captured) == 1 and len(captures) >= 2  # each capture after the first evicted one
    for a, b in zip(replayed, eager, strict=True):
        assert torch.equal(a.body, b.body) and torch.equal(a.dense, b.dense) and a.train_loss == b.train_loss


# What a CUDA graph cannot hold, by PyTorch's own operator tags: a value or shape read back to the host
# (``.item()``, ``bool(tensor)``, ``nonzero``, boolean masks: each waits for the GPU, which a capture
# refuses) and random draws (a capture would freeze or need to register the generator's state); and
# tensors made from Python data (``torch.tensor``: on a GPU, a copy from host memory while capturing).
CAPTURE_UNSAFE = {torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape, torch.Tag.nondeterministic_seeded,
                  torch.Tag.cudagraph_unsafe}  # fmt: skip
FROM_PYTHON_DATA = torch.ops.aten.lift_fresh.default


class CaptureUnsafeOperations(TorchDispatchMode):
    """Records every operation run inside it that a CUDA graph cannot hold (``CAPTURE_UNSAFE``, and
    ``FROM_PYTHON_DATA``), random draws only with ``random_draws``; indexing by integer tensors, whose
    output shape is the index's, is safe. ``dispatched`` counts all operations (on a GPU, launches)."""

    def __init__(self, random_draws: bool = True) -> None:
        super().__init__()
        self.unsafe = CAPTURE_UNSAFE if random_draws else CAPTURE_UNSAFE - {torch.Tag.nondeterministic_seeded}
        self.found: list[str] = []
        self.dispatched = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.dispatched += 1
        integer_indexing = func is torch.ops.aten.index.Tensor and all(
            i is None or i.dtype not in (torch.bool, torch.uint8) for i in args[1]
        )
        if (self.unsafe & set(func.tags) and not integer_indexing) or func is FROM_PYTHON_DATA:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_capture_check_sees_host_reads_masks_and_random_draws():
    with CaptureUnsafeOperations() as seen:
        x = torch.randn(8)
        rows = torch.arange(2)
        x[rows].sum()  # safe: integer indices
        x[x > 0].sum().item()
        bool(x.max() > 0)
        torch.tensor([1.0, 2.0])
    assert seen.found == ["aten.randn.default", "aten.index.Tensor", "aten._local_scalar_dense.default",
                          "aten._local_scalar_dense.default", "aten.lift_fresh.default"]  # fmt: skip


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_captured_step_holds_only_what_a_cuda_graph_can(client_data, algorithm, monkeypatch):
    """``--cuda-graphs on`` captures a bucket's step (``GroupStep.capture``): run here as its replays run
    (on the CPU, eagerly), no operation in it reads a value back to the host or draws random numbers,
    for every algorithm, with unequal clients and both FedBAT phases. What a GPU lease would find at its
    first capture, found on the CPU."""
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5, zsign_sigma=1.0)
    states = [torch.full((layout.update_size,), 1e-3 * k, dtype=torch.float64) for k in range(CLIENTS)]
    seen, replays = _record_replays(monkeypatch)
    trainer.train(_tasks(model, layout, client_data, states if trainer.state_size(layout) else None, graphs=True, epochs=4))
    assert len(replays) >= 10 and seen.found == []
    [kept] = trainer.kept.values()
    phases = {signature[0] for signature in kept.step.captured}
    expected: set[str | None] = {"warm-up", "binarized"} if algorithm == "fedbat" else {None}
    assert phases == expected


def test_a_captured_resnet10_step_holds_only_what_a_cuda_graph_can(monkeypatch):
    """The same for ResNet-10 (residual additions, 1x1 shortcuts), FedBAT on two unequal clients."""
    torch.manual_seed(0)
    model = build_model("resnet10", 10).train()
    layout = ModelLayout(model, binarized_names(model))
    data = [(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))) for n in (20, 28)]
    tasks = []
    for k, (x, y) in enumerate(data):
        batches = [(x[i : i + 8], y[i : i + 8]) for _ in range(3) for i in range(0, len(y), 8)]
        tasks.append(LocalTask(k, model, layout, functools.partial(iter, batches), len(batches), LR,
                               functools.partial(_seeded, k), graphs=True))  # fmt: skip
    seen, replays = _record_replays(monkeypatch)
    make_algorithm("fedbat", rho=6.0, warmup=0.5).train(tasks)
    assert len(replays) >= 5 and seen.found == []


def _seeded(k: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(k)


def _record_replays(monkeypatch) -> tuple[CaptureUnsafeOperations, list[int]]:
    """Every replay of a captured step from now on, run inside one ``CaptureUnsafeOperations`` (returned
    with a list that grows by one per replay)."""
    seen, replays = CaptureUnsafeOperations(), []
    capture = GroupStep.capture

    def recorded_capture(self: GroupStep, step):
        replay = capture(self, step)

        def recorded() -> None:
            replays.append(1)
            with seen:
                replay()

        return recorded

    monkeypatch.setattr(GroupStep, "capture", recorded_capture)
    return seen, replays


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_eager_group_training_reads_nothing_back_per_step(client_data, algorithm):
    """Without graphs a GPU's step is as fast as its host issues it, so a step must not wait for the GPU:
    a group's training reads no value back to the host at all (until its losses, at the end), and
    copies Python data over the same number of times for 1 epoch as for 2, i.e. never per step."""
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5, zsign_sigma=1.0)
    states = [torch.full((layout.update_size,), 1e-3 * k, dtype=torch.float64) for k in range(CLIENTS)]

    def host_reads(epochs: int) -> list[str]:
        with CaptureUnsafeOperations(random_draws=False) as seen:
            trainer.train(_tasks(model, layout, client_data, states if trainer.state_size(layout) else None, epochs=epochs))
        return sorted(seen.found)

    host_reads(1), host_reads(2)  # caches filled: each set of bucket members' device index is made once
    once, twice = host_reads(1), host_reads(2)
    assert once == twice and set(once) <= {str(FROM_PYTHON_DATA)}


@pytest.mark.parametrize("name", ["cnn4", "resnet10"])
def test_the_grouped_model_is_each_client_alone(name):
    """Three clients with their own weights, BatchNorm statistics and samples in one grouped call: each
    client's logits, loss and running statistics are those of its model alone (float64)."""
    torch.manual_seed(0)
    models = [build_model(name, 10).double().train() for _ in range(3)]
    inputs = [torch.randn(4, 3, 32, 32, dtype=torch.float64) for _ in models]
    labels = torch.randint(0, 10, (3, 4))
    params = {n: torch.stack([m.get_parameter(n).detach() for m in models]) for n, _ in models[0].named_parameters()}
    buffers = {n: torch.stack([m.get_buffer(n).clone() for m in models]) for n, _ in models[0].named_buffers()}
    logits = functional_call(grouped_model(models[0]), (params, buffers), (grouped_inputs(inputs),))
    losses = group_cross_entropy(logits, labels)
    for k, (model, x) in enumerate(zip(models, inputs)):
        alone = model(x)
        torch.testing.assert_close(logits.view(4, 3, 10)[:, k], alone, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(losses[k], F.cross_entropy(alone, labels[k]), rtol=1e-10, atol=0)
        for n, b in model.named_buffers():
            if b.is_floating_point():
                torch.testing.assert_close(buffers[n][k], b, rtol=1e-10, atol=1e-12)


def test_a_layer_that_mixes_channels_cannot_be_grouped():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match="GroupNorm layer cannot be grouped"):
        grouped_model(model)


@pytest.mark.parametrize("algorithm", ["ef-signsgd", "fedavg", "fedbat"])
def test_a_groups_updates_move_to_the_host_unchanged(client_data, algorithm):
    """``on_host`` (a GPU's group of updates in one copy per kind of tensor) keeps every value and field."""
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).double().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5)
    states = [torch.full((layout.update_size,), 1e-3 * k, dtype=torch.float64) for k in range(CLIENTS)]
    updates = trainer.train(_tasks(model, layout, client_data, states if trainer.state_size(layout) else None))
    moved = on_host(updates)
    for a, b in zip(moved, updates, strict=True):
        assert (a.kind, a.train_loss) == (b.kind, b.train_loss)
        for name in ("scales", "body", "dense", "state"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or (x.device.type == "cpu" and torch.equal(x, y)), name


@pytest.mark.parametrize("entries", [1, 7, 8, 13, 4099])
def test_signs_packed_by_torch_are_the_bytes_numpy_packs(entries):
    """``pack_sign_rows`` (what ``on_host`` runs on a GPU's sign bodies) writes what the host's
    ``np.packbits`` writes: the first entry in the high bit, the last byte padded with zeros."""
    signs = torch.rand(3, entries, generator=torch.Generator().manual_seed(entries)) > 0.5
    assert np.array_equal(pack_sign_rows(signs).numpy(), np.packbits(signs.numpy(), axis=1))


def test_a_payload_is_the_same_whether_its_signs_were_packed_on_the_device_or_on_the_host(dataset):
    config = Config(num_clients=40, clients_per_round=8, model="cnn4-mnist", device="cpu")
    engine = Engine(config, Communicator(MPI.COMM_SELF), dataset)
    layout = engine.layout
    signs = torch.rand(2, layout.update_size, generator=torch.Generator().manual_seed(1)) > 0.5
    scales, dense = torch.rand(2, len(layout.binarized)), torch.rand(2, layout.dense_size)
    for k, packed in enumerate(pack_sign_rows(signs)):
        updates = [LocalUpdate(engine.algorithm.kind, scales[k], body, dense[k], 0.5) for body in (signs[k], packed)]
        assert engine.pack(7, updates[0], 3.0).tobytes() == engine.pack(7, updates[1], 3.0).tobytes()
