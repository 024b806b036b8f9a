"""Client updates per second on 1, 2, ... ranks: the same work with the same seed on each.

Each run is ``mpirun -n N python -m fedbat_mpi.run`` on the embedded data (CNN4-MNIST, 40 clients, 8 a
round, ``--local-epochs`` epochs, ``--device cpu`` unless given; ``--quick`` uses a tiny generated
Fashion-MNIST in its IDX files instead), so every rank count trains the same clients on the same
batches and ends with the same model (checked: ``model_sha256`` must agree).
Updates per second = clients per round x rounds after the first / their summed ``time_s`` (round 1 is
warm-up and not counted; ``time_s`` includes training, the machinery and the evaluation).

The rank counts run in turn, ``--repeats`` times (1, 2, 1, 2, ...), so that a change in background
load hits each of them alike; the speed-up is the median of the per-turn ratios. Beside each run the
CPU seconds of all its processes (``RUSAGE_CHILDREN``) over its wall seconds tell how many cores it
actually got (close to N on a quiet machine with N free cores; start-up included), and the machine's
busy time (``/proc/stat``) less the run's own, how many cores other processes kept busy meanwhile.

    python bench/scaling.py                         # 1 and 2 ranks (the 2-core development machine)
    python bench/scaling.py --ranks 1 2 4 8 --device cuda     # on a GPU machine
"""

import sys
import tempfile
from pathlib import Path

import benchlib

from fedbat_mpi.testing import formats


def one_run(ranks: int, args: list[str], out: Path) -> dict:
    rows, usage = benchlib.launch_run(ranks, args, out)
    measured = rows[1:]
    updates = sum(len(r["clients"]) for r in measured)
    seconds = sum(r["time_s"] for r in measured)
    return {
        "ranks": ranks,
        "updates": updates,
        "round_seconds": seconds,
        "updates_per_s": updates / seconds,
        "train_s": sum(r["phase_s"]["train"] for r in measured),
        **usage,
        "model_sha256": rows[-1]["model_sha256"],
        "time_s_by_round": [r["time_s"] for r in rows],
    }


def main(argv: list[str]) -> int:
    p = benchlib.parser("scaling", __doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (the first is not counted)")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--clients-per-round", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="turns over the rank counts")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.local_epochs, args.clients_per_round, args.repeats = 2, 1, 2, 1
        args.ranks = [r for r in args.ranks if r <= 2]
    if args.rounds < 2:
        p.error("--rounds: at least 2 (round 1 is warm-up and not counted)")
    run_args = [
        "--num-clients",
        "40",
        "--clients-per-round",
        str(args.clients_per_round),
        "--local-epochs",
        str(args.local_epochs),
        "--rounds",
        str(args.rounds),
        "--device",
        args.device,
        "--seed",
        "0",
        "--checkpoint-every",
        "0",
    ]
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedbat-bench-scaling-") as tmp:
        if args.quick:  # a tiny generated Fashion-MNIST instead of the embedded 8,000 + 2,000 images
            formats.write_fmnist(Path(tmp) / "data", 400, 100)
            run_args += [
                "--dataset",
                "fmnist",
                "--data-dir",
                str(Path(tmp) / "data"),
                "--batch-size",
                "64",
                "--eval-batch-size",
                "50",
            ]
        for turn in range(args.repeats):
            for ranks in args.ranks:
                run = one_run(ranks, run_args, Path(tmp) / f"{turn}-{ranks}")
                runs.append({"turn": turn, **run})
                print(
                    f"turn {turn + 1}/{args.repeats}, {ranks} rank(s): {run['updates_per_s']:.2f} updates/s, "
                    f"{run['cores_used']:.2f} cores used, other processes {run['other_cores_busy']:.2f}",
                    flush=True,
                )
    hashes = {r["model_sha256"] for r in runs}
    if len(hashes) != 1:
        sys.exit(f"bench: the runs ended with different models: {sorted(hashes)}")
    base = min(args.ranks)
    summary = []
    for ranks in args.ranks:
        mine = [r for r in runs if r["ranks"] == ranks]
        ratios = [
            m["updates_per_s"] / b["updates_per_s"]
            for m, b in zip(mine, [r for r in runs if r["ranks"] == base], strict=True)
        ]
        summary.append(
            {
                "ranks": ranks,
                "updates_per_s": benchlib.median([r["updates_per_s"] for r in mine]),
                "speedup_vs_min_ranks": benchlib.median(ratios),
                "efficiency": benchlib.median(ratios) * base / ranks,
                "cores_used": benchlib.median([r["cores_used"] for r in mine]),
                "other_cores_busy": benchlib.median([r["other_cores_busy"] or 0.0 for r in mine]),
                "round_s": benchlib.median([r["round_seconds"] / (args.rounds - 1) for r in mine]),
            }
        )
    print(f"\nmedian over {args.repeats} turn(s); rounds 2..{args.rounds}; speed-up against {base} rank(s)")
    benchlib.print_table(
        summary,
        [
            ("ranks", "ranks", ""),
            ("s/round", "round_s", ".2f"),
            ("updates/s", "updates_per_s", ".2f"),
            ("speed-up", "speedup_vs_min_ranks", ".2f"),
            ("efficiency", "efficiency", ".2f"),
            ("cores used", "cores_used", ".2f"),
            ("others' cores", "other_cores_busy", ".2f"),
        ],
    )
    two = [s for s in summary if s["ranks"] == 2]
    if two and base == 1 and not args.quick:
        s = two[0]["speedup_vs_min_ranks"]
        print(
            f"\ntarget: 2 ranks >= 1.8x the updates/s of 1 rank: {s:.2f}x ({'met' if s >= 1.8 else 'missed'})"
        )
    settings = {"ranks": args.ranks, "rounds": args.rounds, "repeats": args.repeats, "run_args": run_args}
    benchlib.write_json(args.json, "scaling", settings, summary, runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
