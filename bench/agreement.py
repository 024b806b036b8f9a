"""Do grouped and one-at-a-time training reach the same accuracy? Issue 8's check on the GPU.

For each preset (``fmnist-iid`` and ``fmnist-dir0.3`` by default: the paper's Fashion-MNIST setting,
E = 10) FedBAT runs ``--rounds`` rounds twice on one rank, ``--client-group 1`` and ``--client-group
auto``, on the real Fashion-MNIST files (``--data-dir``). The two runs draw the same samples, noise and
data order; only float rounding differs (a group's convolutions add in another order), and training
amplifies it, so the runs agree in accuracy, not in bits. The mean test accuracies of the last
``--window`` rounds are compared (a single round under ``dir:0.3`` swings by more than the tolerance
from one round to the next; the final rounds are reported too): the script exits 1 when a preset's
two runs differ by more than ``--tolerance`` points.

The runs are independent processes, started ``--jobs`` at a time (default: all at once on a GPU,
where the small model's steps leave it mostly idle and 16 host cores serve four runs; one at a time
elsewhere). Nothing here is timed, so sharing the device costs only wall time, and results do not
depend on it (cuDNN is deterministic in a run, ``client/device.py``).

    python bench/agreement.py --device cuda --data-dir .gpu_data     # on a GPU: about 3 minutes
    python bench/agreement.py --quick                                # tiny, on the CPU (tests)
"""

import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchlib

QUICK = "--dataset embedded --num-clients 40 --clients-per-round 2 --local-epochs 1 --batch-size 32".split()


def main() -> int:
    parser = benchlib.parser("agreement", __doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="--device of the runs (cuda on a GPU machine)")
    parser.add_argument("--data-dir", default="/usr/share/datasets", help="a folder holding fashion-mnist/")
    parser.add_argument("--presets", nargs="+", default=["fmnist-iid", "fmnist-dir0.3"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=0.5, help="largest accepted difference, in points")
    parser.add_argument("--window", type=int, default=5, help="the last rounds whose mean accuracy is compared")
    parser.add_argument("--jobs", type=int, default=0, help="runs at once (0: all on cuda, else one)")
    options = parser.parse_args()
    rounds = 1 if options.quick else options.rounds
    grouped = "2" if options.quick else "auto"  # on the CPU "auto" is one at a time
    runs = [(preset, group) for preset in options.presets for group in ("1", grouped)]
    jobs = options.jobs or (len(runs) if options.device == "cuda" else 1)
    with tempfile.TemporaryDirectory() as scratch:

        def accuracies(run: tuple[str, str]) -> list[float] | None:
            """The run's test accuracy by round, in %; None (its error printed) when it failed."""
            preset, group = run
            args = ["--preset", preset, "--rounds", str(rounds), "--client-group", group, "--device",
                    options.device, "--checkpoint-every", "0"]  # fmt: skip
            args += QUICK if options.quick else ["--data-dir", options.data_dir]
            try:
                rows, usage = benchlib.launch_run(1, args, Path(scratch) / f"{preset}-{group}")
            except SystemExit as failure:  # the other runs go on, and the record is written
                print(f"  {preset} --client-group {group}: FAILED {failure}", flush=True)
                return None
            print(f"  {preset} --client-group {group}: {100 * rows[-1]['test_acc']:.2f} % after {rounds} rounds "
                  f"({usage['wall_s']:.0f} s)", flush=True)  # fmt: skip
            return [100 * row["test_acc"] for row in rows]

        with ThreadPoolExecutor(jobs) as pool:
            accuracy = dict(zip(runs, pool.map(accuracies, runs)))
    results = []
    window = min(options.window, rounds)
    for preset in options.presets:
        one, together = accuracy[preset, "1"], accuracy[preset, grouped]
        if one is None or together is None:
            results.append({"preset": preset, "rounds": rounds, "failed": True, "within_tolerance": False})
            continue
        one_mean, together_mean = sum(one[-window:]) / window, sum(together[-window:]) / window
        difference = abs(together_mean - one_mean)
        results.append({"preset": preset, "rounds": rounds, "window": window, "one_at_a_time_acc": one_mean,
                        "grouped_acc": together_mean, "difference_points": difference,
                        "one_at_a_time_final_acc": one[-1], "grouped_final_acc": together[-1],
                        "within_tolerance": difference <= options.tolerance})  # fmt: skip
    benchlib.print_table(results, [
        ("preset", "preset", ""), ("rounds", "rounds", "d"), ("mean of last", "window", "d"),
        ("one at a time %", "one_at_a_time_acc", ".2f"), ("grouped %", "grouped_acc", ".2f"),
        ("difference (points)", "difference_points", ".2f"), ("final, one at a time %", "one_at_a_time_final_acc", ".2f"),
        ("final, grouped %", "grouped_final_acc", ".2f"),
    ])  # fmt: skip
    benchlib.write_json(options.json, "agreement", vars(options), results)
    failed = any(r.get("failed") for r in results)
    return 0 if not failed and (options.quick or all(r["within_tolerance"] for r in results)) else 1


if __name__ == "__main__":
    sys.exit(main())
