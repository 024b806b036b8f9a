"""The arithmetic of a round: multiply-adds of a model's forward pass, and the images a round trains and tests.

A trained image costs 3 forward passes' worth of multiply-adds (the forward pass and the two products of
the backward pass), a test image one; a multiply-add is 2 FLOPs. Only Conv2d and Linear layers count.
"""

import functools
import math

import torch

from fedbat_mpi.client.models import build_model
from fedbat_mpi.config import Config, parse_command_line
from fedbat_mpi.data import load_dataset, partition
from fedbat_mpi.data.datasets import Dataset
from fedbat_mpi.rounds.schedule import sample_clients


def multiply_adds_per_image(model_name: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Multiply-adds of one forward pass of one image through every Conv2d and Linear."""
    model, total = build_model(model_name, num_classes).eval(), 0

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            total += output.numel() * module.in_channels * math.prod(module.kernel_size) // module.groups
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    for module in model.modules():
        module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    return total


@functools.cache
def _dataset(name: str, data_dir: str | None) -> Dataset:
    return load_dataset(name, data_dir)


def round_work(args: list[str], data_dir: str | None, rounds: int) -> list[dict]:
    """For each round of the run ``args`` describes: images trained and tested, and the FLOPs of each
    (``train_flops``, ``test_flops``)."""
    config = Config(**parse_command_line(args).options).validate()
    dataset = _dataset(config.dataset, data_dir)  # read once for all the runs of a benchmark
    model = config.model or dataset.default_model
    mac = multiply_adds_per_image(model, tuple(dataset.train_x.shape[1:]), dataset.num_classes)
    labels = dataset.train_y.numpy()
    sizes = [len(c) for c in partition(labels, config.num_clients, config.partition, config.seed, config.min_samples)]
    work = []
    for r in range(1, rounds + 1):
        clients = sample_clients(config.seed, r, config.num_clients, config.clients_per_round)
        trained, tested = config.local_epochs * sum(sizes[c] for c in clients), int(dataset.test_y.numel())
        work.append({"trained_images": trained, "test_images": tested,
                     "train_flops": 2 * mac * 3 * trained, "test_flops": 2 * mac * tested})  # fmt: skip
    return work
