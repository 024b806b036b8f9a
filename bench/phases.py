"""Where a round's time goes: train, pack, gather, aggregate, broadcast, eval, on rank 0.

Launches real runs (``mpirun -n RANKS python -m fedbat_mpi.run ...``) and reads their ``metrics.jsonl``:
each row holds rank 0's wall seconds per phase (``phase_s``) and the round's wall time (``time_s``).
Means are over the rounds after the first (round 1 is warm-up: first-touch allocations, lazy imports,
the other ranks starting late). Shares are of the round's wall time:

- machinery = pack + gather + aggregate + broadcast: what the simulator adds beside the clients' work;
- eval = the test-set evaluation that every round ends with (the workload, not the machinery);
- non-training = everything but train (machinery + eval + the little outside any phase).

Rank 0's ``gather`` includes waiting for the slowest rank to finish training (a straggler shows up
there), and ``eval`` the wait for the other ranks' batches.

Cases: ``embedded`` (the embedded default, ``--rounds 3``), ``cnn4-svhn`` (CNN4 on small generated files
in the SVHN .mat format) and ``resnet10-cifar10`` (ResNet-10 on generated CIFAR-10 binary batches).
The generated sets are small so that a round takes seconds on a 2-core CPU; their train/eval balance is
this benchmark's choice, not the paper's.

    python bench/phases.py                      # all three cases at 2 ranks
    python bench/phases.py --cases embedded --ranks 2 --rounds 5
"""

import functools
import sys
import tempfile
from pathlib import Path

import benchlib

from fedbat_mpi.testing import formats

MACHINERY = ("pack", "gather", "aggregate", "broadcast")
PHASES = ("train", *MACHINERY, "eval")


def cases(data_dir: Path, rounds: int, quick: bool) -> dict[str, dict]:
    """Each case's run options and the files it needs (written once into ``data_dir``)."""
    tiny = "--num-clients 8 --clients-per-round 2 --local-epochs 1".split() if quick else []
    common = ["--rounds", str(rounds), "--device", "cpu"]
    return {
        "embedded": {
            "args": common + (tiny + "--batch-size 64 --eval-batch-size 1000".split() if quick else []),
            "write": None,
            "about": "embedded default: CNN4-MNIST, Fashion-MNIST sample, 8 of 40 clients, 2 epochs, B=32",
        },
        "cnn4-svhn": {
            # 5,000 train images over 20 clients (250 each, 4 batches of 64), 4 clients a round, 1 epoch.
            "args": ["--dataset", "svhn", "--data-dir", str(data_dir), *common]
            + "--num-clients 20 --clients-per-round 4 --local-epochs 1".split()
            + "--batch-size 64 --eval-batch-size 250".split()
            + tiny,
            "write": lambda: formats.write_svhn(data_dir, 400 if quick else 5000, 100 if quick else 500),
            "about": "CNN4, generated SVHN .mat (5,000 train / 500 test), 4 of 20 clients, 1 epoch, B=64",
        },
        "resnet10-cifar10": {
            # 640 train images over 10 clients (64 each, 2 batches of 32), 2 clients a round, 1 epoch.
            "args": ["--dataset", "cifar10", "--data-dir", str(data_dir), *common]
            + "--num-clients 10 --clients-per-round 2 --local-epochs 1".split()
            + "--batch-size 32 --eval-batch-size 32".split()
            + tiny[:2],
            "write": lambda: formats.write_cifar10(data_dir, 160 if quick else 640, 32 if quick else 64),
            "about": "ResNet-10, generated CIFAR-10 .bin (640 train / 64 test), 2/10 clients, 1 epoch, B=32",
        },
    }


def summarise(rows: list[dict]) -> dict:
    """Means over the rounds after the first, in seconds, and each phase's share of the round."""
    measured = rows[1:] if len(rows) > 1 else rows
    n = len(measured)
    mean = {phase: sum(r["phase_s"][phase] for r in measured) / n for phase in PHASES}
    round_s = sum(r["time_s"] for r in measured) / n
    machinery = sum(mean[p] for p in MACHINERY)
    other = round_s - sum(mean.values())
    return {
        "rounds_measured": [r["round"] for r in measured],
        "round_s": round_s,
        "phase_s": mean,
        "other_s": other,
        "machinery_s": machinery,
        "machinery_share": machinery / round_s,
        "eval_share": mean["eval"] / round_s,
        "non_training_share": (round_s - mean["train"]) / round_s,
        "uplink_bytes_per_round": measured[0]["uplink_bytes"],
        "downlink_bytes_per_round": measured[0]["downlink_bytes"],
    }


def main(argv: list[str]) -> int:
    p = benchlib.parser("phases", __doc__.split("\n\n")[0])
    p.add_argument(
        "--cases",
        nargs="+",
        default=["embedded", "cnn4-svhn", "resnet10-cifar10"],
        choices=["embedded", "cnn4-svhn", "resnet10-cifar10"],
    )
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks of each run")
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (the first is not counted)")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds: at least 2 (round 1 is warm-up and not counted)")
    results = []
    with tempfile.TemporaryDirectory(prefix="fedbat-bench-phases-") as folder:
        tmp = Path(folder)
        spec = cases(tmp / "data", args.rounds, args.quick)
        for name in args.cases:
            case = spec[name]
            if case["write"] is not None:
                case["write"]()
            rows, usage = benchlib.launch_run(args.ranks, case["args"], tmp / name)
            summary = summarise(rows)
            results.append(
                {
                    "case": name,
                    "about": case["about"],
                    "ranks": args.ranks,
                    "run_args": case["args"],
                    **summary,
                    "usage": usage,
                    "rows": rows,
                }
            )
            print(
                f"{name}: {case['about']}, {args.ranks} ranks, {args.rounds} rounds; cores used "
                f"{usage['cores_used']:.2f}, by other processes {usage['other_cores_busy'] or 0:.2f}",
                flush=True,
            )
    seconds = functools.partial(benchlib.field, "phase_s")
    print(f"\nmean seconds per round on rank 0, rounds 2..{args.rounds}; shares of the round in %")
    benchlib.print_table(
        results,
        [
            ("case", "case", ""),
            ("round s", "round_s", ".3f"),
            ("train", seconds("train"), ".3f"),
            ("pack", seconds("pack"), ".4f"),
            ("gather", seconds("gather"), ".4f"),
            ("aggregate", seconds("aggregate"), ".4f"),
            ("broadcast", seconds("broadcast"), ".4f"),
            ("eval", seconds("eval"), ".3f"),
            ("other", "other_s", ".4f"),
            ("machinery %", benchlib.field("machinery_share", scale=100), ".2f"),
            ("eval %", benchlib.field("eval_share", scale=100), ".1f"),
            ("non-training %", benchlib.field("non_training_share", scale=100), ".1f"),
        ],
    )
    for r in results:
        if r["case"] == "embedded" and not args.quick:
            met = "met" if r["machinery_share"] <= 0.03 else "missed"
            print(
                f"\ntarget (embedded default, {args.ranks} ranks): machinery <= 3% of a round: "
                f"{100 * r['machinery_share']:.2f}% ({met}); with eval counted as non-training: "
                f"{100 * r['non_training_share']:.1f}%"
            )
    settings = {
        "ranks": args.ranks,
        "rounds": args.rounds,
        "quick": args.quick,
        "means_over": "rounds 2..N (round 1 is warm-up)",
    }
    benchlib.write_json(args.json, "phases", settings, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
