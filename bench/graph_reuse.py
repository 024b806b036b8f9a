"""How much of a round's training replays CUDA graphs under ``--cuda-graphs on``, measured on the CPU.

A step of a group runs one *bucket* per phase and batch size (``group.GroupStep``); a bucket replays a
graph when its signature (phase, whole group or not, shapes) was captured before, in this round or an earlier
one; its first occurrence runs eagerly and its second is captured. Which buckets those are depends
only on the clients' sample counts, the batch size, the local epochs and FedBAT's warm-up, not on the
model or the device. This script runs the real
group training (``Algorithm.train`` with ``graphs``, on the CPU the same restructured steps without a
GPU) of a preset's rounds on one rank, with the clients' real sample counts (the preset's partition of
the real Fashion-MNIST labels) and a model too thin to compute (``host_time.thin_cnn4``, 16 x 16
random images), and counts each round's eager steps, captures and replays.

    python bench/graph_reuse.py --preset fmnist-dir0.3 --rounds 5
"""

import functools

import benchlib
import numpy as np
import torch
from host_time import seeded, thin_cnn4

from fedbat_mpi.client.algorithms import LocalTask, make_algorithm
from fedbat_mpi.client.algorithms.group import GroupStep
from fedbat_mpi.client.models import binarized_names
from fedbat_mpi.config import PRESETS
from fedbat_mpi.data import load_dataset, partition
from fedbat_mpi.data.partition import DIRICHLET_MIN_SAMPLES
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rounds.schedule import sample_clients


class Counting:
    """Counts what ``GroupStep`` does with each bucket: eager, captured (then replayed once), replayed."""

    def __init__(self):
        self.counts = {"eager": 0, "captured": 0, "replayed": 0}
        replayed, capture = GroupStep.replayed, GroupStep.capture
        counting = self

        def counted_replayed(step: GroupStep, bucket) -> None:
            counting.counts["replayed" if bucket.signature() in step.captured else "eager"] += 1
            replayed(step, bucket)

        def counted_capture(step: GroupStep, run):
            counting.counts["eager"] -= 1  # that bucket is a capture, not an eager one
            counting.counts["captured"] += 1
            return capture(step, run)

        GroupStep.replayed, GroupStep.capture = counted_replayed, counted_capture  # type: ignore[method-assign, assignment]

    def take(self) -> dict:
        counts, self.counts = self.counts, {key: 0 for key in self.counts}
        return counts


def main() -> None:
    parser = benchlib.parser("graph_reuse", __doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist-dir0.3", help="a Fashion-MNIST preset (default: %(default)s)")
    parser.add_argument("--algorithm", default="fedbat")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", default="/usr/share/datasets", help="the real Fashion-MNIST (labels only)")
    options = parser.parse_args()
    preset = PRESETS[options.preset]
    epochs, batch, clients = preset["local_epochs"], preset["batch_size"], preset["num_clients"]
    if options.quick:
        options.rounds, epochs = 2, 2
    labels = load_dataset("fmnist", options.data_dir).train_y.numpy() if not options.quick else \
        load_dataset("embedded", None).train_y.numpy()  # fmt: skip
    owners = partition(labels, clients, preset["partition"], 0, DIRICHLET_MIN_SAMPLES)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = thin_cnn4().train()
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(options.algorithm, rho=6.0, warmup=preset["warmup"])
    counting = Counting()
    results = []
    for round_index in range(1, options.rounds + 1):
        chosen = sample_clients(0, round_index, clients, preset["clients_per_round"])
        tasks = []
        for k, client in enumerate(chosen):
            size = len(owners[client])
            data = [(torch.randn(n, 1, 16, 16), torch.randint(0, 10, (n,)))
                    for _ in range(epochs) for n in np.diff([*range(0, size, batch), size])]  # fmt: skip
            tasks.append(LocalTask(int(client), model, layout, functools.partial(iter, data), len(data), 0.01,
                                   functools.partial(seeded, k), graphs=True))  # fmt: skip
        trainer.train(tasks)
        counts = counting.take()
        buckets = sum(counts.values())
        results.append({"round": round_index, "buckets": buckets, **counts, "replayed_share": counts["replayed"] / buckets,
                        "largest_client_steps": max(t.num_steps for t in tasks)})  # fmt: skip
        print(f"  round {round_index}: {counts}", flush=True)
    print(f"{options.preset}, {options.algorithm}, {preset['clients_per_round']} clients a round in one group")
    benchlib.print_table(results, [
        ("round", "round", "d"), ("buckets run", "buckets", "d"), ("largest client's steps", "largest_client_steps", "d"),
        ("eager", "eager", "d"), ("captured", "captured", "d"), ("replayed", "replayed", "d"),
        ("replayed share", "replayed_share", ".2f"),
    ])  # fmt: skip
    benchlib.write_json(options.json, "graph_reuse", vars(options), results)


if __name__ == "__main__":
    main()
