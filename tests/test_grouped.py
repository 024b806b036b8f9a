"""Training a group of clients at once (``--client-group``) equals training them one after another."""

import copy

import pytest
import torch

from fedbat_mpi.algorithms import FedAvg, FedBAT, LocalTask
from fedbat_mpi.config import Config
from fedbat_mpi.data import load_dataset, normalize
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.models import binarized_names, build_model

# Two steps (FedBAT: one warm-up step, one through the binarizer) at a small learning rate. Grouped
# convolutions add in another order (gradient differences ~1e-6 relative), and from the N(0, 0.01)
# initialisation under BatchNorm the training amplifies such differences ~1000x per step at lr 0.01:
# that is the training's sensitivity, not an error, so longer comparisons only test the chaos.
STEPS = 2
LR = 0.001


@pytest.fixture(scope="module")
def model_and_layout():
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10)
    return model, ModelLayout(model, binarized_names(model)), copy.deepcopy(model.state_dict())


@pytest.fixture(scope="module")
def images():
    data = load_dataset("embedded", None)
    return normalize(data.train_x[: 3 * STEPS * 16], data.train_mean, data.train_std), data.train_y


def _task(model, layout, images, client: int) -> LocalTask:
    """A client with its own real images and random streams (as the engine makes them)."""
    x, y = images
    window = [slice((client * STEPS + step) * 16, (client * STEPS + step + 1) * 16) for step in range(STEPS)]
    batches = [(x[w], y[w]) for w in window]
    return LocalTask(client, model, layout, lambda: iter(batches), STEPS, LR,
                     lambda stream: torch.Generator().manual_seed(1000 * client + int(stream)))  # fmt: skip


def _one_by_one_and_grouped(algorithm, model_and_layout, images, clients=(0, 1, 2)):
    model, layout, start = model_and_layout
    one_by_one = []
    for client in clients:
        model.load_state_dict(start)
        model.train()
        one_by_one.append(algorithm.train(_task(model, layout, images, client)))
    model.load_state_dict(start)
    grouped = algorithm.train_group([_task(model, layout, images, client) for client in clients])
    model.load_state_dict(start)
    return one_by_one, grouped


def test_grouped_fedavg_equals_one_by_one(model_and_layout, images):
    one_by_one, grouped = _one_by_one_and_grouped(FedAvg(), model_and_layout, images)
    for a, b in zip(one_by_one, grouped, strict=True):
        torch.testing.assert_close(b.body, a.body, rtol=1e-3, atol=0.02 * a.body.abs().max().item())
        assert (b.body - a.body).abs().mean() < 2e-3 * a.body.abs().mean()
        torch.testing.assert_close(b.dense, a.dense, rtol=1e-4, atol=1e-5)
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-5)


def test_grouped_fedbat_equals_one_by_one_with_per_client_noise(model_and_layout, images):
    one_by_one, grouped = _one_by_one_and_grouped(FedBAT(rho=6.0, warmup=0.5), model_and_layout, images)
    for a, b in zip(one_by_one, grouped, strict=True):
        torch.testing.assert_close(b.scales, a.scales, rtol=1e-4, atol=1e-7)
        # The binarizer's samples are thresholds of float values: rounding may flip a rare sign.
        assert (a.body == b.body).float().mean() > 0.999
        torch.testing.assert_close(b.dense, a.dense, rtol=1e-3, atol=1e-4)
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
    # Each client drew its own noise: the three clients' uploads differ.
    assert not torch.equal(grouped[0].body, grouped[1].body)


def test_client_groups_hold_clients_of_equal_size(tmp_path):
    from mpi4py import MPI

    from fedbat_mpi.comm import Communicator
    from fedbat_mpi.engine import Engine

    config = Config(num_clients=7, clients_per_round=7, client_group=3, model="cnn4-mnist", device="cpu")
    engine = Engine(config, Communicator(MPI.COMM_SELF), load_dataset("embedded", None))
    groups = engine.client_groups(list(range(7)))
    assert sorted(c for g in groups for c in g) == list(range(7))
    for group in groups:
        assert 1 <= len(group) <= 3 and len({len(engine.client_indices[c]) for c in group}) == 1
    sequential = Engine(Config(num_clients=7, clients_per_round=7, algorithm="ef-signsgd", client_group=3,
                               model="cnn4-mnist", device="cpu"), Communicator(MPI.COMM_SELF),
                        load_dataset("embedded", None))  # fmt: skip
    assert sequential.client_groups([0, 1, 2]) == [[0], [1], [2]]  # no grouped rule: one by one
