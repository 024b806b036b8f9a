"""``python -m fedbat_mpi.data``: fetch data sets, and show how a partition splits one among clients.

    python -m fedbat_mpi.data download NAME --data-dir DIR
    python -m fedbat_mpi.data partition-stats --dataset NAME [--data-dir DIR] --num-clients N --partition SCHEME
"""

import argparse
import sys

import numpy as np

from fedbat_mpi.config import Config
from fedbat_mpi.errors import OneLineParser, run_command

from .datasets import DATASET_NAMES, load_dataset
from .download import SOURCES, download
from .partition import Partition, partition


def _parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = OneLineParser(prog="python -m fedbat_mpi.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="fetch a data set from its official source (MD5-checked)")
    fetch.add_argument("name", choices=sorted(SOURCES))
    fetch.add_argument("--data-dir", required=True)
    stats = commands.add_parser("partition-stats", help="per-client sizes and class histograms")
    stats.add_argument("--dataset", default=defaults.dataset, choices=DATASET_NAMES)
    stats.add_argument("--data-dir")
    stats.add_argument("--num-clients", type=int, default=defaults.num_clients)
    stats.add_argument("--partition", default=defaults.partition)
    stats.add_argument("--min-samples", type=int, default=defaults.min_samples)
    stats.add_argument("--seed", type=int, default=defaults.seed)
    return parser


def partition_stats(labels: np.ndarray, shards: Partition, num_classes: int) -> str:
    """A table of each client's size and class histogram, then a summary line."""
    sizes = shards.sizes()
    width = max(len(str(sizes.max())), 5)
    lines = ["client " + "samples".rjust(width) + "  " + " ".join(f"{c:>{width}}" for c in range(num_classes))]
    held = []
    for client, shard in enumerate(shards):
        histogram = np.bincount(labels[shard], minlength=num_classes)
        held.append(int(np.count_nonzero(histogram)))
        lines.append(f"{client:6d} {len(shard):>{width}}  " + " ".join(f"{n:>{width}}" for n in histogram))
    lines.append(
        f"{len(shards)} clients, {sizes.sum()} samples: size min {sizes.min()}, median {int(np.median(sizes))}, "
        f"max {sizes.max()}; classes per client min {min(held)}, max {max(held)}"
    )
    return "\n".join(lines)


def _command(argv: list[str] | None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "download":
        for path in download(args.name, args.data_dir):
            print(f"verified {path}")
    else:
        Config(seed=args.seed).validate()  # the seed's check, as a run's
        dataset = load_dataset(args.dataset, args.data_dir)
        labels = dataset.train_y.numpy()
        shards = partition(labels, args.num_clients, args.partition, args.seed, args.min_samples)
        print(partition_stats(labels, shards, dataset.num_classes))


def main(argv: list[str] | None = None) -> int:
    return run_command("fedbat_mpi.data", lambda: _command(argv))


if __name__ == "__main__":
    sys.exit(main())
