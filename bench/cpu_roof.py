"""A CPU round against the machine's own limit: the FMNIST round of issue #8 over the sgemm rate of the cores.

Runs ``mpirun -n RANKS python -m fedbat_mpi.run --preset fmnist-iid --local-epochs 2 --device cpu`` on the
real Fashion-MNIST files (``--data-dir``, default the Debian package ``dataset-fashion-mnist``) and reads
each round's wall time from ``metrics.jsonl``. The *roof* is the round's arithmetic at the machine's
matrix-multiply rate measured in the same run: one single-threaded float32 2048 x 2048 product per rank,
all ranks at once, summed, each rank's with the faster of torch's ``mm`` (MKL) and numpy's ``matmul``
(OpenBLAS). The round's arithmetic is counted from the model (multiply-adds of every Conv2d and Linear
for one image, from forward hooks): 3 forward passes' worth per trained image (forward, and the two
products of the backward pass) and one per test image. ``roof share`` = roof time / round
time: 1.0 would be every core multiplying matrices at full rate the whole round.

``--baseline DIR`` runs the same round from another checkout (e.g. ``git worktree add /tmp/before
COMMIT``) in turn with this one, so the two are compared under the same background load.

    python bench/cpu_roof.py                                  # 3 rounds, 2 ranks
    python bench/cpu_roof.py --baseline /tmp/before --repeats 2
"""

import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import torch
from work import multiply_adds_per_image, round_work

ROUND = "--preset fmnist-iid --local-epochs 2 --device cpu".split()
QUICK = "--num-clients 40 --clients-per-round 2 --local-epochs 1 --batch-size 64".split()


def _sgemm_rates(seconds: float) -> dict[str, float]:
    """FLOP/s of one thread multiplying 2048 x 2048 float32 matrices, for about ``seconds`` with each BLAS
    the wheels ship: torch's ``mm`` (MKL on x86) and numpy's ``matmul`` (OpenBLAS). Which is faster
    depends on the CPU: on an AMD EPYC (Zen 4) core OpenBLAS, by 10-20 % (BENCHMARKS.md §10)."""
    torch.set_num_threads(1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    products = {"torch_mm": lambda: a @ b, "numpy_matmul": lambda: a.numpy() @ b.numpy()}
    rates = {}
    for name, product in products.items():
        product()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            product()
            done += 1
        rates[name] = 2 * 2048**3 * done / (time.perf_counter() - start)
    return rates


def sgemm_rates(processes: int, seconds: float = 3.0) -> list[dict[str, float]]:
    """Each of ``processes`` single-threaded processes' ``_sgemm_rates``, all running at once. The
    processes start with one OpenBLAS thread (numpy reads the variable when it loads)."""
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            return pool.map(_sgemm_rates, [seconds] * processes)
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def roof_rate(measured: list[dict[str, float]]) -> float:
    """The machine's roof from one ``sgemm_rates`` measurement: each process's faster BLAS, summed."""
    return sum(max(rates.values()) for rates in measured)


def machine_rate(processes: int, seconds: float = 3.0) -> float:
    """FLOP/s of ``processes`` single-threaded matrix multiplications running at once: ``roof_rate``."""
    return roof_rate(sgemm_rates(processes, seconds))


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
    seconds = 1.0 if args.quick else 3.0
    blas = [sgemm_rates(args.ranks, seconds)]
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
    blas.append(sgemm_rates(args.ranks, seconds))
    rates = [roof_rate(measured) for measured in blas]
    rate = max(rates)
    for r in results:
        r["roof_s"] = r["flops"] / rate
        r["roof_share"] = r["roof_s"] / r["time_s"]
    summary: dict[str, Any] = {}
    for name in checkouts:
        mine = [r for r in results if r["checkout"] == name]
        summary[name] = {key: benchlib.median([r[key] for r in mine]) for key in ("time_s", "roof_s", "roof_share")}
        summary[name]["eval_s"] = benchlib.median([r["phase_s"]["eval"] for r in mine])
        summary[name]["train_s"] = benchlib.median([r["phase_s"]["train"] for r in mine])
    if "baseline" in summary:
        summary["speedup_over_baseline"] = summary["baseline"]["time_s"] / summary["this"]["time_s"]
    for name in blas[0][0]:
        summed = [sum(process[name] for process in measured) / 1e9 for measured in blas]
        print(f"{args.ranks} single-threaded sgemm at once, {name}: {' and '.join(f'{x:.1f}' for x in summed)} GFLOP/s")
    print(f"roof: {rate / 1e9:.1f} GFLOP/s (the faster BLAS of each process, the larger of the two measurements); "
          f"{mac / 1e6:.2f} M multiply-adds per image forward")  # fmt: skip
    benchlib.print_table(
        [{"checkout": k, **v} for k, v in summary.items() if isinstance(v, dict)],
        [("checkout", "checkout", ""), ("round s", "time_s", ".2f"), ("train s", "train_s", ".2f"),
         ("eval s", "eval_s", ".2f"), ("roof s", "roof_s", ".2f"), ("roof share", "roof_share", ".2f")],
    )  # fmt: skip
    if "speedup_over_baseline" in summary:
        print(f"this / baseline round time: {1 / summary['speedup_over_baseline']:.3f}")
    settings = {"run_args": run_args, "ranks": args.ranks, "baseline": str(args.baseline) if args.baseline else None}
    if args.json:
        benchlib.write_json(args.json, "cpu_roof", settings, results, machine_flops=rates, sgemm_rates=blas,
                            summary=summary, multiply_adds_per_image=mac)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
