"""Clients' batches: drawn from each client's own generators, read together for a bucket of clients."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fedbat_mpi.client.batches import ClientData, TrainingSet, read_batches
from fedbat_mpi.client.grouped_layers import grouped_inputs
from fedbat_mpi.data import crop, normalize

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _samples(augment: bool) -> TrainingSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 8, 8), generator=generator, dtype=torch.uint8)
    return TrainingSet(images, torch.randint(0, 10, (60,), generator=generator), MEAN, STD, augment)


def _clients(samples: TrainingSet, count: int) -> list[ClientData]:
    return [ClientData(samples, torch.arange(k, 60, count)) for k in range(count)]


def _first_batches(clients: list[ClientData], batch_size: int = 4):
    return [next(c.batches(1, batch_size, torch.Generator().manual_seed(10 + k), torch.Generator().manual_seed(20 + k)))
            for k, c in enumerate(clients)]  # fmt: skip


@pytest.mark.parametrize("augment", [False, True])
def test_a_groups_batches_read_together_equal_each_client_read_alone(augment):
    samples = _samples(augment)
    drawn = _first_batches(_clients(samples, 3))
    x, y = read_batches(drawn)
    alone = []
    for batch in drawn:
        images = samples.images[batch.rows]
        if augment:
            images = crop(images, *batch.crops)
        alone.append(normalize(images, MEAN, STD))
        one_x, one_y = read_batches([batch])
        assert torch.equal(one_x, alone[-1]) and torch.equal(one_y, samples.labels[batch.rows].unsqueeze(0))
    assert torch.equal(x, grouped_inputs(alone))
    assert torch.equal(y, torch.stack([samples.labels[b.rows] for b in drawn]))


def test_reading_a_group_costs_the_operations_of_reading_one_client():
    """One gather, crop and normalisation for the whole bucket: the host's work does not grow with it."""

    def operations(count: int) -> int:
        drawn = _first_batches(_clients(_samples(True), count))
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            read_batches(drawn)
        return sum(1 for e in trace.events() if e.name.startswith("aten::") and e.cpu_parent is None)

    assert operations(2) == operations(8)


def test_each_epoch_visits_every_sample_once_in_a_new_order():
    samples = _samples(False)
    client = ClientData(samples, torch.arange(5, 38, 3))  # 11 samples: batches of 4, 4, 3
    batches = list(client.batches(2, 4, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)))
    assert [len(b) for b in batches] == [4, 4, 3] * 2
    epochs = [torch.cat([b.rows for b in batches[:3]]), torch.cat([b.rows for b in batches[3:]])]
    assert all(sorted(e.tolist()) == client.rows.tolist() for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    assert all(b.crops is None for b in batches)


def test_a_short_last_batch_is_augmented_image_by_image_too():
    samples = _samples(True)
    client = ClientData(samples, torch.arange(5, 38, 3))  # 11 samples: batches of 4, 4, 3
    batches = list(client.batches(1, 4, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)))
    assert [len(b) for b in batches] == [4, 4, 3]
    last = batches[-1]
    assert last.crops is not None
    assert all(len(part) == 3 for part in last.crops)
    x, y = read_batches([last])
    assert torch.equal(x, normalize(crop(samples.images[last.rows], *last.crops), MEAN, STD))
    assert torch.equal(y, samples.labels[last.rows].unsqueeze(0))
