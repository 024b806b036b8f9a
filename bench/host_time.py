"""The host's time per training step of a group: what bounds a small model's step on a GPU, measured on a CPU.

A small model's grouped step on a GPU takes as long as the host needs to issue its operations (Python,
the dispatcher, launches), not as long as the GPU computes them (BENCHMARKS.md §8). This script
measures that host time where there is no GPU: the algorithm's own training (``Algorithm.train``, the
code a run executes, its batches drawn and read as a run's are) of a group of clients on a *thin* CNN4
(the CNN4-MNIST layers with 2 channels a convolution, 16 x 16 images, 2 images a client), whose
arithmetic is negligible, so that the time per
step is the cost of issuing the step's operations. On a GPU the same operations are issued, each one
also a kernel launch. It also counts those operations (top-level ATen calls over one training, per
step): a figure that, unlike the time, does not depend on the machine's load.

``--baseline DIR`` runs the same measurement with another checkout's ``fedbat_mpi`` (e.g. ``git
worktree add /tmp/before COMMIT``) in turn with this one, so that the two share the machine's load;
``ratio`` is the baseline's time over this checkout's, per algorithm and group size.

    python bench/host_time.py                                    # FedBAT and FedAvg, groups of 1 and 10
    python bench/host_time.py --baseline /tmp/before --repeats 3
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import benchlib
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

STEPS = 40
BATCH = 2  # images a client and step


def thin_cnn4() -> nn.Sequential:
    """CNN4-MNIST's layers (names, kinds, order) at 2 channels a convolution, for 16 x 16 images."""
    layers, channels = [], 1
    for i in range(1, 5):
        layers += [(f"conv{i}", nn.Conv2d(channels, 2, 3, padding=1, bias=False)), (f"bn{i}", nn.BatchNorm2d(2)),
                   (f"pool{i}", nn.MaxPool2d(2)), (f"relu{i}", nn.ReLU())]  # fmt: skip
        channels = 2
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(2, 10, bias=False))]
    return nn.Sequential(OrderedDict(layers))


def seeded(k: int, stream: int) -> torch.Generator:
    """Client ``k``'s generator for every stream (``LocalTask.generator``): the same draws for each."""
    return torch.Generator().manual_seed(k)


def client_data(k: int, clients: int, steps: int):
    """Client ``k``'s data as a run holds it (``client/batches.py``): ``steps`` batches of ``BATCH`` rows of
    a training set of random images, drawn and read by the run's code."""
    from fedbat_mpi.client import batches  # noqa: PLC0415

    generator = torch.Generator().manual_seed(0)
    size = clients * steps * BATCH
    images = torch.randint(0, 256, (size, 1, 16, 16), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (size,), generator=generator)
    rows = torch.arange(k * steps * BATCH, (k + 1) * steps * BATCH)
    if not hasattr(batches, "TrainingSet"):  # a checkout before 2026-11-28: each client held a copy of its samples
        return batches.ClientData(images[rows], labels[rows], (0.5,), (0.25,), False)  # type: ignore[call-arg, arg-type]
    return batches.ClientData(batches.TrainingSet(images, labels, (0.5,), (0.25,), False), rows)


def measure(algorithm: str, clients: int, steps: int, repeats: int) -> tuple[float, float]:
    """Seconds per step of ``algorithm`` training ``clients`` clients at once (best of ``repeats``), and
    the operations it issues per step (top-level ATen calls: on a GPU, about one kernel launch each)."""
    from fedbat_mpi.client.algorithms import LocalTask, make_algorithm
    from fedbat_mpi.client.models import binarized_names
    from fedbat_mpi.layout import ModelLayout

    torch.manual_seed(0)
    model = thin_cnn4().train()
    layout = ModelLayout(model, binarized_names(model))
    data = [client_data(k, clients, steps) for k in range(clients)]
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.0)

    def batches(k: int) -> Iterator:
        return data[k].batches(1, BATCH, torch.Generator().manual_seed(k), torch.Generator().manual_seed(k))

    def train() -> None:
        trainer.train([LocalTask(k, model, layout, functools.partial(batches, k), steps, 0.01,
                                 functools.partial(seeded, k)) for k in range(clients)])  # fmt: skip

    train()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        train()
        best = min(best, time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        train()
    operations = sum(1 for e in trace.events() if e.name.startswith("aten::") and e.cpu_parent is None)
    return best / steps, operations / steps


def _measure_in(checkout: Path | None, options) -> list[dict]:
    """This script's measurement in a fresh process, with ``checkout``'s ``fedbat_mpi`` first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(checkout or ""), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, __file__, "--inner", "--algorithms", *options.algorithms,
               "--groups", *map(str, options.groups), "--steps", str(options.steps)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = benchlib.parser("host_time", __doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["fedbat", "fedavg"])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 10], help="clients trained at once")
    parser.add_argument("--steps", type=int, default=STEPS, help="local steps of each client")
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each checkout, in turn")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure in turn with this one")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # the measurement itself
    options = parser.parse_args()
    if options.quick:
        options.groups, options.steps = [2], 3
    torch.set_num_threads(1)
    if options.inner:
        rows = []
        for algorithm in options.algorithms:
            for clients in options.groups:
                seconds, operations = measure(algorithm, clients, options.steps, 3)
                rows.append({"algorithm": algorithm, "clients": clients, "host_ms_per_step": 1e3 * seconds,
                             "ops_per_step": operations})  # fmt: skip
        print(json.dumps(rows))
        return
    checkouts = {"this": None, **({"baseline": options.baseline.resolve()} if options.baseline else {})}
    results = []
    for repeat in range(options.repeats):
        for name, checkout in checkouts.items():
            for row in _measure_in(checkout, options):
                results.append({"checkout": name, "repeat": repeat, **row})
                print(f"  {name} {row['algorithm']} x{row['clients']}: {row['host_ms_per_step']:.2f} ms/step", flush=True)
    if options.baseline:
        mine = {(r["repeat"], r["algorithm"], r["clients"]): r["host_ms_per_step"] for r in results if r["checkout"] == "this"}
        for row in results:
            if row["checkout"] == "baseline":
                row["ratio"] = row["host_ms_per_step"] / mine[row["repeat"], row["algorithm"], row["clients"]]
    benchlib.print_table(results, [
        ("checkout", "checkout", ""), ("repeat", "repeat", "d"), ("algorithm", "algorithm", ""),
        ("clients", "clients", "d"), ("host ms/step", "host_ms_per_step", ".2f"), ("ops/step", "ops_per_step", ".1f"),
        ("baseline / this", "ratio", ".2f"),
    ])  # fmt: skip
    settings = {**vars(options), "baseline": str(options.baseline) if options.baseline else None}
    benchlib.write_json(options.json, "host_time", settings, results)


if __name__ == "__main__":
    main()
