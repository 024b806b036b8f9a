"""What the round loop hands each client, against computations in this process: random streams keyed
by (seed, round, client id), and EF-SignSGD's error memory carried from one round to the next through
the ranks, the client-state store and the checkpoint.

Every other multi-round test compares runs with runs (rank counts, resumes), which the same mistake
on both sides passes; these compare with what a single client computes here.
"""

from collections.abc import Iterable

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from fedbat_mpi.client.batches import Drawn, read_batches
from fedbat_mpi.config import Config
from fedbat_mpi.data import load_dataset
from fedbat_mpi.rng import Stream, derive_seed
from fedbat_mpi.rounds.engine import Engine
from fedbat_mpi.server import checkpoint, client_state
from fedbat_mpi.testing.launch import launch
from fedbat_mpi.wire.comm import Communicator

from .reference_steps import error_feedback

CLIENT = 3
TINY = dict(num_clients=4, clients_per_round=4, local_epochs=1, batch_size=64, model="cnn4-mnist", device="cpu")


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("embedded", None)


def _engine(dataset, **options) -> Engine:
    return Engine(Config(**{**TINY, **options}).validate(), Communicator(MPI.COMM_SELF), dataset)


def _sample_order(engine: Engine, round_index: int, client: int) -> list[int]:
    """The positions in the client's own sample list of the samples its round's batches draw, in turn."""
    task, _ = engine.local_task(round_index, client, None)
    position = {row: k for k, row in enumerate(engine.client_indices[client].tolist())}
    return [position[row] for drawn in _drawn(task.batches()) for row in drawn.rows.tolist()]


def _drawn(batches: Iterable[object]) -> list[Drawn]:
    """A task's batches, as the row indices the engine's tasks draw (not yet read)."""
    drawn = []
    for batch in batches:
        assert isinstance(batch, Drawn)
        drawn.append(batch)
    return drawn


def test_each_use_of_randomness_has_its_own_stream_for_the_same_round_and_client():
    seeds = {stream: derive_seed(0, stream, 3, CLIENT) for stream in Stream}
    assert len(set(seeds.values())) == len(Stream)
    assert derive_seed(0, Stream.DATA_ORDER, 3, CLIENT) == seeds[Stream.DATA_ORDER]  # a pure function
    assert derive_seed(1, Stream.DATA_ORDER, 3, CLIENT) != seeds[Stream.DATA_ORDER]  # and of the seed


def test_a_clients_data_order_is_its_own_and_new_each_round(dataset):
    engine = _engine(dataset)
    first, again, second = (_sample_order(engine, r, CLIENT) for r in (1, 1, 2))
    assert first == again  # keyed, not drawn from a running generator
    assert sorted(first) == sorted(second) == list(range(len(engine.client_indices[CLIENT])))
    assert first != second  # each round reshuffles
    other = _sample_order(engine, 1, CLIENT - 1)  # as many samples (iid): another permutation
    assert len(other) == len(first) and other != first


@pytest.mark.parametrize("weighting", ["batches", "samples"])
def test_a_client_trains_e_epochs_of_its_batches_and_weighs_by_its_batches_or_samples(dataset, weighting):
    engine = _engine(dataset, local_epochs=3, batch_size=64, weighting=weighting)
    task, weight = engine.local_task(1, CLIENT, None)
    samples = len(engine.client_indices[CLIENT])
    batches = -(-samples // 64)
    drawn = _drawn(task.batches())
    assert task.num_steps == len(drawn) == 3 * batches
    assert sorted(row for d in drawn for row in d.rows.tolist()) == sorted(engine.client_indices[CLIENT].tolist() * 3)
    assert weight == (batches if weighting == "batches" else samples)


def test_a_clients_batches_are_its_samples_normalised_with_the_training_statistics(dataset):
    """docs/FEDBAT.md §2.1: Fashion-MNIST's training images (x / 255 - 0.2860) / 0.3530, its test images
    with 0.2868 and 0.3524 (evaluation, test_learning.py)."""
    engine = _engine(dataset)
    task, _ = engine.local_task(1, CLIENT, None)
    [drawn, *_] = _drawn(task.batches())
    x, y = read_batches([drawn])
    expected = (dataset.train_x[drawn.rows].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(y[0], dataset.train_y[drawn.rows])


def test_fedbat_draws_new_noise_each_round(dataset):
    """The same client from the same model in two rounds: other data order, binarizer noise and upload
    sample, so other signs; in the same round, the same signs."""
    engine = _engine(dataset)
    start = torch.from_numpy(engine.global_vector.copy())
    signs = [engine.train_clients(r, [CLIENT], start, {})[0][0].body for r in (1, 1, 2)]
    assert torch.equal(signs[0], signs[1])
    assert (signs[0] != signs[2]).float().mean() > 0.01


def _error_memory(update: torch.Tensor, memory: torch.Tensor, engine: Engine) -> torch.Tensor:
    """EF-SignSGD's new memory from the formula (reference_steps.error_feedback), tensor by tensor."""
    parts = (update + memory).split([seg.size for seg in engine.layout.binarized])
    return torch.cat([error_feedback(p)[2] for p in parts])


def test_ef_signsgd_memory_returns_to_its_client_in_a_real_run(dataset, tmp_path, one_thread):
    """A 2-rank run of two rounds in which every client trains twice: the rows its checkpoint commits
    are the memory each client's formula gives after round 2, from round 1's memory and the local
    updates of this process's FedAvg (the same local SGD on the same streams)."""
    out = tmp_path / "run"
    options = ["--algorithm", "ef-signsgd", "--num-clients", "4", "--clients-per-round", "4", "--local-epochs", "1",
               "--batch-size", "64", "--rounds", "2", "--checkpoint-every", "1", "--eval-batch-size", "1000"]  # fmt: skip
    done = launch(2, [*options, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    engine = _engine(dataset, algorithm="fedavg")
    models = [torch.from_numpy(engine.global_vector.copy()),
              torch.from_numpy(engine.layout.vector(checkpoint.load(str(out / checkpoint.PREVIOUS_FILE_NAME)).tensors))]  # fmt: skip
    memory = {c: torch.zeros(engine.layout.update_size) for c in range(4)}
    for round_index, model in enumerate(models, start=1):
        for client in range(4):
            [(update, _)] = engine.train_clients(round_index, [client], model, {})
            memory[client] = _error_memory(update.body, memory[client], engine)
    index = checkpoint.load(str(out / checkpoint.FILE_NAME)).client_state
    assert index is not None and np.all(index.slots != client_state.NO_ROW)
    with h5py.File(out / client_state.FILE_NAME, "r") as handle:
        for client in range(4):
            row = torch.from_numpy(handle["rows"][client, index.slots[client]])
            torch.testing.assert_close(row, memory[client], rtol=1e-5, atol=1e-7)
