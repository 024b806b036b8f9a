"""A CPU round against the machine's own limit: the FMNIST round of issue #8 over the sgemm rate of the cores.

Runs ``mpirun -n RANKS python -m fedbat_mpi.run --preset fmnist-iid --local-epochs 2 --device cpu`` on the
real Fashion-MNIST files (``--data-dir``, default the Debian package ``dataset-fashion-mnist``) and reads
each round's wall time from ``metrics.jsonl``. The *roof* is the round's arithmetic at the machine's
matrix-multiply rate measured in the same run: one single-threaded float32 ``mm`` (2048 x 2048) per rank,
all ranks at once, summed. The round's arithmetic is counted from the model (multiply-adds of every
Conv2d and Linear for one image, from forward hooks): 3 forward passes' worth per trained image (forward,
and the two products of the backward pass) and one per test image. ``roof share`` = roof time / round
time: 1.0 would be every core multiplying matrices at full rate the whole round.

``--baseline DIR`` runs the same round from another checkout (e.g. ``git worktree add /tmp/before
COMMIT``) in turn with this one, so the two are compared under the same background load.

    python bench/cpu_roof.py                                  # 3 rounds, 2 ranks
    python bench/cpu_roof.py --baseline /tmp/before --repeats 2
"""

import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import torch
from work import multiply_adds_per_image, round_work

ROUND = "--preset fmnist-iid --local-epochs 2 --device cpu".split()
QUICK = "--num-clients 40 --clients-per-round 2 --local-epochs 1 --batch-size 64".split()


def _sgemm_rate(seconds: float) -> float:
    """FLOP/s of one thread multiplying 2048 x 2048 float32 matrices for about ``seconds``."""
    torch.set_num_threads(1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2 * 2048**3 * done / (time.perf_counter() - start)


def machine_rate(processes: int, seconds: float = 3.0) -> float:
    """FLOP/s of ``processes`` single-threaded matrix multiplications running at once, summed."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.map(_sgemm_rate, [seconds] * processes))


def main(argv: list[str]) -> int:
    p = benchlib.parser("cpu_roof", __doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets", help="Fashion-MNIST IDX files (default: %(default)s)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="rounds a run (the first is not counted)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each checkout, in turn")
    p.add_argument("--baseline", type=Path, help="another checkout to run in turn with this one")
    args = p.parse_args(argv)
    run_args = ["--rounds", str(args.rounds)]
    if args.quick:
        args.rounds, args.repeats, data_dir = 2, 1, None
        run_args = ["--rounds", "2", "--device", "cpu", *QUICK]
    else:
        data_dir = args.data_dir
        run_args += [*ROUND, "--data-dir", data_dir]
    work = round_work(run_args, data_dir, args.rounds)
    mac = multiply_adds_per_image("cnn4-mnist", (1, 28, 28), 10)
    checkouts = {"this": None, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    rates = [machine_rate(args.ranks, 1.0 if args.quick else 3.0)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, checkout in checkouts.items():
                rows, usage = benchlib.launch_run(args.ranks, run_args, Path(tmp) / f"{name}-{repeat}", checkout=checkout)
                for row, round_work_ in zip(rows[1:], work[1:]):
                    flops = round_work_["train_flops"] + round_work_["test_flops"]
                    results.append({"checkout": name, "repeat": repeat, "round": row["round"], "time_s": row["time_s"],
                                    "phase_s": row["phase_s"], "flops": flops, "cores_used": usage["cores_used"],
                                    "other_cores_busy": usage["other_cores_busy"], **round_work_})  # fmt: skip
    rates.append(machine_rate(args.ranks, 1.0 if args.quick else 3.0))
    rate = max(rates)
    for r in results:
        r["roof_s"] = r["flops"] / rate
        r["roof_share"] = r["roof_s"] / r["time_s"]
    summary = {}
    for name in checkouts:
        mine = [r for r in results if r["checkout"] == name]
        summary[name] = {key: benchlib.median([r[key] for r in mine]) for key in ("time_s", "roof_s", "roof_share")}
        summary[name]["eval_s"] = benchlib.median([r["phase_s"]["eval"] for r in mine])
        summary[name]["train_s"] = benchlib.median([r["phase_s"]["train"] for r in mine])
    if "baseline" in summary:
        summary["speedup_over_baseline"] = summary["baseline"]["time_s"] / summary["this"]["time_s"]
    print(f"machine: {args.ranks} single-threaded sgemm at once: {[f'{x / 1e9:.1f}' for x in rates]} GFLOP/s "
          f"(the roof uses the larger); {mac / 1e6:.2f} M multiply-adds per image forward")  # fmt: skip
    benchlib.print_table(
        [{"checkout": k, **v} for k, v in summary.items() if isinstance(v, dict)],
        [("checkout", "checkout", ""), ("round s", "time_s", ".2f"), ("train s", "train_s", ".2f"),
         ("eval s", "eval_s", ".2f"), ("roof s", "roof_s", ".2f"), ("roof share", "roof_share", ".2f")],
    )  # fmt: skip
    if "speedup_over_baseline" in summary:
        print(f"this / baseline round time: {1 / summary['speedup_over_baseline']:.3f}")
    settings = {"run_args": run_args, "ranks": args.ranks, "baseline": str(args.baseline) if args.baseline else None}
    if args.json:
        benchlib.write_json(args.json, "cpu_roof", settings, results, machine_flops=rates, summary=summary,
                            multiply_adds_per_image=mac)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
