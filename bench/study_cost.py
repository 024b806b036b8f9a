"""What the paper's SVHN and CIFAR grid would cost: one steady round of each preset, projected to the grid.

SVHN and CIFAR cannot be downloaded on the development machine, so the runs read files generated in the
official formats at the official sizes (SVHN 73,257 / 26,032; CIFAR 50,000 / 10,000 images): the time
of a round does not depend on what the pixels show. For each data set (its ``-iid`` preset: the paper's
clients, epochs, batch size and model) FedBAT and FedAvg run ``--rounds`` rounds on one rank with
``--client-group auto``; the mean of the rounds after the first is the steady round. The sign baselines
train as FedAvg does (plain local SGD) and are projected at FedAvg's round.

The projection: every (data set x partition x algorithm x seed) run of the grid, the preset's rounds
(100 for SVHN, 200 for CIFAR) at the measured steady round, one run per GPU at a time, spread over
``--gpus`` GPUs (a node of 8 by default) with no idle GPU: ``sum of run times / GPUs``. Partitions
change the clients' sizes, not the work of a round, and are costed as the iid preset.

    python bench/study_cost.py --device cuda                 # on one GPU: about 4 minutes
    python bench/study_cost.py --quick                       # tiny, on the CPU (tests)
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

import benchlib

from fedbat_mpi.config import PRESETS
from fedbat_mpi.testing import formats

DATA = {"svhn": (73_257, 26_032), "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}
WRITERS: dict[str, Callable[..., object]] = {"svhn": formats.write_svhn, "cifar10": formats.write_cifar10, "cifar100": formats.write_cifar100}
PARTITIONS, SEEDS = 3, 3  # iid, dir:β, labels:c (docs/FEDBAT.md §2.1); seeds per setting
MEASURED = ("fedbat", "fedavg")
COSTED_AS_FEDAVG = ("signsgd", "ef-signsgd", "stosign", "zsign", "signsgd-mv", "z-signfedavg")


def steady_round(dataset: str, algorithm: str, data_dir: Path, device: str, rounds: int, quick: bool,
                 out: Path) -> dict:  # fmt: skip
    """Seconds of a steady round of ``dataset``'s iid preset (tiny when ``quick``)."""
    tiny = "--num-clients 4 --clients-per-round 2 --local-epochs 1 --batch-size 16".split() if quick else []
    args = ["--preset", f"{dataset}-iid", "--algorithm", algorithm, "--data-dir", str(data_dir),
            "--device", device, "--rounds", str(rounds), "--checkpoint-every", "0", *tiny]  # fmt: skip
    rows, usage = benchlib.launch_run(1, args, out)
    steady = rows[1:]
    return {
        "dataset": dataset,
        "algorithm": algorithm,
        "round_s": sum(r["time_s"] for r in steady) / len(steady),
        "train_s": sum(r["phase_s"]["train"] for r in steady) / len(steady),
        "eval_s": sum(r["phase_s"]["eval"] for r in steady) / len(steady),
        "wall_s": usage["wall_s"],
    }


def projection(results: list[dict], gpus: int) -> dict:
    """GPU hours of the whole grid and its wall hours on ``gpus`` GPUs, one run per GPU at a time."""
    round_s = {(r["dataset"], r["algorithm"]): r["round_s"] for r in results}
    per_dataset = {}
    for dataset in DATA:
        rounds = PRESETS[f"{dataset}-iid"]["rounds"]
        algorithms = [*MEASURED, *COSTED_AS_FEDAVG]
        seconds = sum(round_s[dataset, a if a in MEASURED else "fedavg"] for a in algorithms)
        per_dataset[dataset] = PARTITIONS * SEEDS * rounds * seconds / 3600
    total = sum(per_dataset.values())
    return {"gpu_hours_by_dataset": per_dataset, "gpu_hours": total, "gpus": gpus, "wall_hours": total / gpus,
            "runs": len(DATA) * PARTITIONS * SEEDS * (len(MEASURED) + len(COSTED_AS_FEDAVG))}  # fmt: skip


def main() -> None:
    parser = benchlib.parser("study_cost", __doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="--device of the runs (cuda on a GPU machine)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a run (the first is not counted)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the node the projection is for")
    options = parser.parse_args()
    datasets = ["svhn"] if options.quick else list(DATA)  # quick: the cheapest model
    rounds = 2 if options.quick else options.rounds
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        for dataset in datasets:
            train, test = (400, 100) if options.quick else DATA[dataset]
            WRITERS[dataset](data_dir, train, test)
            for algorithm in MEASURED:
                out = Path(scratch) / f"{dataset}-{algorithm}"
                results.append(steady_round(dataset, algorithm, data_dir, options.device, rounds, options.quick, out))
                print(f"  {dataset} {algorithm}: {results[-1]['round_s']:.3f} s/round", flush=True)
    benchlib.print_table(results, [
        ("data set", "dataset", ""), ("algorithm", "algorithm", ""), ("s/round", "round_s", ".3f"),
        ("train s", "train_s", ".3f"), ("eval s", "eval_s", ".3f"),
    ])  # fmt: skip
    p = None if options.quick else projection(results, options.gpus)  # the grid's cost
    if p is not None:
        print(f"the grid: {p['runs']} runs, {p['gpu_hours']:.1f} GPU hours, {p['wall_hours']:.1f} h on {p['gpus']} GPUs "
              f"(one run per GPU at a time)")  # fmt: skip
    benchlib.write_json(options.json, "study_cost", vars(options), results, projection=p)


if __name__ == "__main__":
    main()
