"""Grouped training (``--client-group``) against one client at a time: steady seconds per round.

Cases, one rank each (issue 8's targets on one GPU):

- ``fmnist-iid``, ``fmnist-dir0.3``: the paper's Fashion-MNIST presets (E = 10, B = 64, 10 of 100
  clients a round), every algorithm grouped (``auto``), FedBAT and FedAvg also one at a time;
- ``fmnist-1000``: FedBAT, 1,000 of 1,000 clients a round, 1 local epoch, grouped: training seconds;
- ``cifar10-iid``: ResNet-10, ``--preset cifar10-iid --local-epochs 1``, FedBAT one at a time and grouped.

With ``--graphs``, every grouped FedBAT and FedAvg run also runs with ``--cuda-graphs on`` (column
``graphs``; its speed-up is over the same case's one-at-a-time run, like the others'). ``--groups``
names the grouped settings (default ``auto``, a rank's whole share on a GPU; ``auto`` is 1 on the
CPU, so there give sizes, e.g. ``--groups 5 10``), ``--run-args`` options added to every run (they
override the case's, e.g. fewer local epochs on a CPU).

Seconds per round are means over the rounds after the first (warm-up). The data are Fashion-MNIST
from ``--fmnist-dir`` when given (the real files: accuracies then mean something) or files generated
in the official formats (speed only). Each result row names its case, algorithm and grouping; the
speed-up of grouping is one-at-a-time seconds over grouped seconds of the same case, measured in
the same run; ``train TFLOP/s`` is the training arithmetic of a round (``bench/work.py``) over its
training seconds.

    python bench/grouping.py --device cuda                   # on an H100: about 8 minutes (measured)
    python bench/grouping.py --quick                         # tiny FedBAT runs (CNN4, ResNet-10) on the CPU (tests)
    python bench/grouping.py --device cpu --cases fmnist-iid --algorithms fedbat fedavg --groups 5 10 \
        --run-args="--local-epochs 2"                        # the CPU: about 5 minutes
"""

import sys
import tempfile
from pathlib import Path

import benchlib
from work import round_work

from fedbat_mpi.client.algorithms import ALGORITHMS
from fedbat_mpi.testing import formats

FMNIST_TRAIN, FMNIST_TEST = 60_000, 10_000
CASES = ["fmnist-iid", "fmnist-dir0.3", "fmnist-1000", "cifar10-iid"]
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def cases(
    quick: bool, graphs: bool = False, grouped: tuple[str, ...] = ("auto",), extra: tuple[str, ...] = ()
) -> list[dict]:
    """(case, algorithm, --client-group, --cuda-graphs, run options) of every run, in the order they run:
    FedBAT and FedAvg one at a time and in each of the ``grouped`` settings, the others grouped only;
    ``extra`` options end every run's options."""
    rounds = ["--rounds", "2" if quick else "3"]
    small = "--num-clients 4 --clients-per-round 2 --local-epochs 1 --batch-size 16".split() if quick else []
    options = [*small, *extra]  # the end of every run's options but fmnist-1000's (never quick)
    runs = []
    for preset in ("fmnist-dir0.3",) if quick else ("fmnist-iid", "fmnist-dir0.3"):
        for algorithm in ("fedbat",) if quick else ALGORITHMS:
            groups = ("1", *grouped) if algorithm in ("fedbat", "fedavg") else grouped
            for group in groups:
                args = ["--preset", preset, "--algorithm", algorithm, *rounds, *options]
                runs.append(dict(case=preset, algorithm=algorithm, group=group, graphs="off", args=args))
    if not quick:
        many = "--num-clients 1000 --clients-per-round 1000".split()
        runs += [dict(case="fmnist-1000", algorithm="fedbat", group=group, graphs="off",
                      args=["--preset", "fmnist-iid", *many, "--local-epochs", "1", *rounds, *extra])
                 for group in grouped]  # fmt: skip
    for group in ("1", *grouped):  # quick too: ResNet-10 and augmented batches
        runs.append(dict(case="cifar10-iid", algorithm="fedbat", group=group, graphs="off",
                         args=["--preset", "cifar10-iid", "--local-epochs", "1", *rounds, *options]))  # fmt: skip
    if not graphs:
        return runs
    with_graphs = []
    for run in runs:
        with_graphs.append(run)
        if run["group"] != "1" and run["algorithm"] in ("fedbat", "fedavg"):
            with_graphs.append(dict(run, graphs="on"))
    return with_graphs


def write_data(folder: Path, fmnist_dir: str | None, quick: bool) -> Path:
    """The data sets the cases read: generated in the official formats (or the real Fashion-MNIST)."""
    scale = 100 if quick else 1
    if fmnist_dir:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fashion-mnist").symlink_to(Path(fmnist_dir).resolve() / "fashion-mnist")
    else:
        formats.write_fmnist(folder, FMNIST_TRAIN // scale, FMNIST_TEST // scale, gz=False)
    formats.write_cifar10(folder, CIFAR_TRAIN // scale, CIFAR_TEST // scale)
    return folder


def measure(run: dict, data_dir: Path, device: str, out: Path) -> dict:
    args = [*run["args"], "--data-dir", str(data_dir), "--device", device, "--client-group", run["group"],
            "--cuda-graphs", run["graphs"], "--checkpoint-every", "0"]  # fmt: skip
    rows, usage = benchlib.launch_run(1, args, out)
    measured, flops = rows[1:], round_work(args, str(data_dir), len(rows))[1:]
    train_s = sum(r["phase_s"]["train"] for r in measured) / len(measured)
    return {
        **{key: run[key] for key in ("case", "algorithm", "group", "graphs")},
        "round_s": sum(r["time_s"] for r in measured) / len(measured),
        "train_s": train_s,
        "train_tflops": sum(w["train_flops"] for w in flops) / len(flops) / train_s / 1e12,
        "clients_per_round": len(rows[-1]["clients"]),
        "final_test_acc": rows[-1]["test_acc"],
        "wall_s": usage["wall_s"],
    }


def with_speedups(results: list[dict]) -> list[dict]:
    """Each grouped row gets the one-at-a-time seconds of its case and algorithm over its own."""
    alone = {(r["case"], r["algorithm"]): r["round_s"] for r in results if r["group"] == "1"}
    for row in results:
        key = (row["case"], row["algorithm"])
        row["speedup"] = alone[key] / row["round_s"] if row["group"] != "1" and key in alone else None
    return results


def main() -> None:
    parser = benchlib.parser("grouping", __doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="--device of the runs (cuda on a GPU machine)")
    parser.add_argument("--fmnist-dir", help="a --data-dir holding the real fashion-mnist/ files")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES,
                        help="the cases to run, in this order (e.g. the ones a lease cut short)")
    parser.add_argument("--graphs", action="store_true", help="grouped FedBAT and FedAvg also with --cuda-graphs on")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS),
                        help="the algorithms to run (default: all; fmnist-1000 and cifar10-iid run FedBAT only)")
    parser.add_argument("--groups", nargs="+", default=["auto"],
                        help="the --client-group settings compared with one at a time (default: auto)")
    parser.add_argument("--run-args", default="", help="options added to every run, e.g. \"--local-epochs 2\"")
    options = parser.parse_args()
    results, failed = [], []
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = write_data(Path(scratch) / "data", options.fmnist_dir, options.quick)
        runs = cases(options.quick, options.graphs, tuple(options.groups), tuple(options.run_args.split()))
        runs = [run for case in options.cases for run in runs
                if run["case"] == case and run["algorithm"] in options.algorithms]  # fmt: skip
        for index, run in enumerate(runs):
            label = f"{run['case']} {run['algorithm']} --client-group {run['group']} --cuda-graphs {run['graphs']}"
            try:
                results.append(measure(run, data_dir, options.device, Path(scratch) / f"run-{index}"))
            except SystemExit as failure:  # one failed run is reported; the other cases still run
                failed.append(label)
                print(f"  {label}: FAILED {failure}", flush=True)
                continue
            print(f"  {label}: {results[-1]['round_s']:.3f} s/round", flush=True)
            # The record so far: a lease cut short keeps the runs done.
            benchlib.write_json(options.json, "grouping", vars(options), with_speedups(results), announce=False,
                                runs_left=len(runs) - index - 1)  # fmt: skip
    benchlib.print_table(with_speedups(results), [
        ("case", "case", ""), ("algorithm", "algorithm", ""), ("group", "group", ""), ("graphs", "graphs", ""),
        ("clients", "clients_per_round", "d"), ("s/round", "round_s", ".3f"), ("train s", "train_s", ".3f"),
        ("train TFLOP/s", "train_tflops", ".2f"), ("speed-up", "speedup", ".2f"), ("test acc", "final_test_acc", ".4f"),
    ])  # fmt: skip
    benchlib.write_json(options.json, "grouping", vars(options), results, runs_left=0)
    if failed:
        sys.exit(f"grouping: {len(failed)} runs failed: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
