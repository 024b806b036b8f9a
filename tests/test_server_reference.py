"""The server step of real runs against a direct computation.

A one-round run through ``mpirun`` on unequal clients (``dir:0.3``) writes its new global model to the
checkpoint. The test trains the same clients itself (the client step has its own references in
test_reference_steps.py), weighs them as docs/FEDBAT.md §1.8 says (batches ``ceil(n_k / B)`` or samples
``n_k``, computed here from the client sizes), and applies the server step per tensor in float64.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from mpi4py import MPI

from fedbat_mpi.client.algorithms import LocalUpdate
from fedbat_mpi.config import Config
from fedbat_mpi.data import load_dataset
from fedbat_mpi.rounds.engine import Engine
from fedbat_mpi.rounds.schedule import sample_clients
from fedbat_mpi.server import checkpoint
from fedbat_mpi.testing.launch import launch, metrics
from fedbat_mpi.testing.payloads import reference_aggregate
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.comm import Communicator

OPTIONS: dict[str, Any] = dict(num_clients=20, clients_per_round=6, local_epochs=1, batch_size=64, rounds=1, partition="dir:0.3")


def _command_line(options: dict) -> list[str]:
    return [arg for name, value in options.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("embedded", None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One round on 2 ranks for each (algorithm, weighting), run when first asked for."""
    done_runs: dict[tuple[str, str], tuple[dict, checkpoint.RunState]] = {}

    def run(algorithm: str, weighting: str) -> tuple[dict, checkpoint.RunState]:
        if (algorithm, weighting) not in done_runs:
            out = tmp_path_factory.mktemp(f"{algorithm}-{weighting}")
            options = dict(OPTIONS, algorithm=algorithm, weighting=weighting)
            done = launch(2, [*_command_line(options), "--eval-batch-size", "700", "--out", str(out)])
            assert done.returncode == 0, done.stderr
            done_runs[algorithm, weighting] = metrics(out)[0], checkpoint.load(str(out / checkpoint.FILE_NAME))
        return done_runs[algorithm, weighting]

    return run


def _client_updates(config: Config, dataset) -> tuple[Engine, np.ndarray, list[tuple[int, LocalUpdate]]]:
    """The round's clients trained one by one in this process, with each client's sample count; on the
    run's number of threads, which decides the CPU's order of float sums (channels-last convolutions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        engine = Engine(config, Communicator(MPI.COMM_SELF), dataset)
        clients = sample_clients(config.seed, 1, config.num_clients, config.clients_per_round)
        start = torch.from_numpy(engine.global_vector.copy())
        trained = []
        for client in clients.tolist():
            [(update, _)] = engine.train_clients(1, [client], start, {})
            trained.append((len(engine.client_indices[client]), update))
    finally:
        torch.set_num_threads(threads)
    return engine, clients, trained


def _payloads(engine: Engine, clients, trained, weights: Sequence[float]) -> list[codec.Payload]:
    payloads = []
    for client, (_, update), weight in zip(clients.tolist(), trained, weights):
        body = update.body.numpy()
        body = codec.pack_signs(body) if update.kind is codec.BodyKind.SIGNS else body
        payloads.append(codec.Payload(client, weight, update.train_loss, update.kind, update.scales.numpy(),
                                      update.dense.numpy(), body, engine.layout.update_size))  # fmt: skip
    return payloads


@pytest.mark.parametrize("weighting", ["batches", "samples"])
@pytest.mark.parametrize("algorithm", ["fedavg", "fedbat"])
def test_the_server_step_weighs_unequal_clients_as_specified(runs, dataset, algorithm, weighting):
    row, state = runs(algorithm, weighting)
    config = Config(**OPTIONS, algorithm=algorithm, weighting=weighting, model="cnn4-mnist", device="cpu")
    engine, clients, trained = _client_updates(config, dataset)
    sizes = [n for n, _ in trained]
    assert len(set(sizes)) > 1, "the partition must give unequal clients"
    weights = [math.ceil(n / config.batch_size) if weighting == "batches" else n for n in sizes]
    assert row["clients"] == clients.tolist()

    expected = reference_aggregate(engine.layout, engine.global_vector, _payloads(engine, clients, trained, weights))
    got = engine.layout.vector(state.tensors).astype(np.float64)
    scale = np.abs(expected - engine.global_vector).max()
    mismatched = np.abs(got - expected) > 1e-5 * scale + 1e-7
    # A sign drawn at its decision boundary may come out otherwise in another process: allow a few.
    assert mismatched.mean() < 1e-4, f"{mismatched.sum()} of {got.size} entries differ"
    # The check can fail: equal weights give another model.
    equal = reference_aggregate(engine.layout, engine.global_vector, _payloads(engine, clients, trained, [1.0] * len(sizes)))
    assert (np.abs(got - equal) > 1e-5 * scale + 1e-7).mean() > 0.01

    shares = np.array(weights, dtype=np.float64) / sum(weights)
    losses = [update.train_loss for _, update in trained]
    assert row["train_loss"] == pytest.approx(float(np.dot(shares, losses)), rel=1e-5)
