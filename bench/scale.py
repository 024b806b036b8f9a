"""Start-up and rounds at 100,000 clients: partition time, round time, each rank's peak memory, checkpoints.

Partitions (in this process): seconds to split 5 labels a client among N clients, ``iid`` and
``dir:0.3`` with ``--min-samples 1``, for N = 100,000 and 1,000,000.

Runs: generated Fashion-MNIST in its IDX files (``fedbat_mpi.testing.formats``) with 5 training images a
client, so 100,000 clients hold 500,000 images, and 1,000 test images; on 2 ranks:

    mpirun -n 2 python -m fedbat_mpi.run --dataset fmnist --data-dir D --num-clients N
        --clients-per-round P --local-epochs 1 --rounds R --checkpoint-every 0 --device cpu

FedBAT with P = 1,000 for N = 10,000 and 100,000 (a round does the same work at either N: the cost of
the client count is the ratio of their round times), and EF-SignSGD with P = 500 for N = 100,000 (its
per-client error memory is what threatens rank 0's memory). Reported: the steady round time (median ``time_s`` of rounds 2..R; round 1 warms up),
each rank's peak resident memory (``peak_rss_mib`` of the last round), the wall time outside the rounds
(start-up, and the checkpoint at the end), the checkpoint's size and the seconds its write took (the
run's own progress line), and a resume: the FedBAT run at the largest N is continued for one more round
with ``--resume``, which must keep the first R rows of ``metrics.jsonl`` and add round R + 1. A run still
going after ``--timeout`` seconds is killed and reported with the rounds it finished.

    python bench/scale.py            # 10 to 15 minutes on the shared 2-core development machine
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import numpy as np

from fedbat_mpi.data import partition
from fedbat_mpi.testing import formats, launch

IMAGES_PER_CLIENT = 5
TEST_IMAGES = 1000
SAVED = re.compile(r"^checkpoint after round (\d+): .* \(.*, ([0-9.]+) s\)$", re.MULTILINE)


def time_partitions(sizes: list[int]) -> list[dict]:
    """Seconds of ``partition`` for each client count and scheme (5 labels a client, 10 classes)."""
    rows = []
    for clients in sizes:
        labels = np.random.default_rng(0).integers(0, 10, IMAGES_PER_CLIENT * clients)
        for scheme in ("iid", "dir:0.3"):
            start = time.perf_counter()
            split = partition(labels, clients, scheme, seed=0, min_samples=1)
            seconds = time.perf_counter() - start
            sizes_of = split.sizes()
            rows.append({"clients": clients, "scheme": scheme, "partition_s": seconds,
                         "min_size": int(sizes_of.min()), "max_size": int(sizes_of.max())})  # fmt: skip
            print(f"partition {clients:,} clients {scheme}: {seconds:.2f} s", flush=True)
    return rows


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def one_run(args: list[str], out: Path, timeout: float) -> tuple[list[dict], str, float, bool]:
    """A 2-rank run: its metrics rows, its stdout, its wall seconds and whether it ended within ``timeout``
    (if not, its processes are killed and the rows are those it wrote in time)."""
    start = time.perf_counter()
    process = subprocess.Popen(launch.command(2, [*args, "--out", str(out)]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=launch.environment())  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in descendants(process.pid):  # the launcher puts each rank in a process group of its own
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return launch.metrics(out), stdout, time.perf_counter() - start, False
    if process.returncode != 0:
        sys.exit(f"bench: {' '.join(args)} failed with status {process.returncode}:\n{stderr[-3000:]}")
    return launch.metrics(out), stdout, time.perf_counter() - start, True


def measure(algorithm: str, clients: int, per_round: int, rounds: int, data: Path, out: Path, timeout: float) -> dict:
    args = ["--algorithm", algorithm, "--dataset", "fmnist", "--data-dir", str(data),
            "--num-clients", str(clients), "--clients-per-round", str(per_round), "--local-epochs", "1",
            "--rounds", str(rounds), "--checkpoint-every", "0", "--device", "cpu"]  # fmt: skip
    rows, stdout, wall, finished = one_run(args, out, timeout)
    saved = SAVED.findall(stdout)
    result = {
        "algorithm": algorithm,
        "clients": clients,
        "per_round": per_round,
        "rounds": len(rows),
        "finished_in_timeout": finished,
        "round_s": benchlib.median([r["time_s"] for r in rows[1:]]) if len(rows) > 1 else None,
        "time_s_by_round": [r["time_s"] for r in rows],
        "phase_s_by_round": [r["phase_s"] for r in rows],
        "peak_rss_mib_by_rank": rows[-1]["peak_rss_mib"] if rows else None,
        "peak_rss_mib": max(rows[-1]["peak_rss_mib"]) if rows else None,
        "outside_rounds_s": wall - sum(r["time_s"] for r in rows) if finished else None,
        "checkpoint_mb": (out / "checkpoint.h5").stat().st_size / 1e6 if saved else None,
        "checkpoint_write_s": float(saved[0][1]) if saved else None,
        "args": args,
    }
    if finished and [int(r) for r, _ in saved] != [rounds]:
        sys.exit(f"bench: expected one checkpoint after round {rounds}, the run printed {saved}")
    ending = (f"checkpoint {result['checkpoint_mb']:.1f} MB in {result['checkpoint_write_s']:.2f} s" if finished
              else f"NOT FINISHED in {timeout:.0f} s ({len(rows)} of {rounds} rounds; killed)")  # fmt: skip
    print(f"{algorithm} {clients:,} clients, {per_round} a round: {result['round_s'] or float('nan'):.2f} s a round, "
          f"peak RSS {result['peak_rss_mib_by_rank']} MiB, {ending}", flush=True)  # fmt: skip
    return result


def resume(result: dict, out: Path, timeout: float) -> dict:
    """Continue ``result``'s run for one more round; check that it kept the rows and added the round."""
    before = launch.metrics(out)
    rows, stdout, wall, finished = one_run(["--resume", "--rounds", str(result["rounds"] + 1)], out, timeout)
    if not finished:
        sys.exit(f"bench: the resumed run did not finish in {timeout:.0f} s")
    if f"resuming after round {result['rounds']}" not in stdout:
        sys.exit(f"bench: the resumed run did not say it resumed:\n{stdout[-2000:]}")
    if rows[:-1] != before or rows[-1]["round"] != result["rounds"] + 1:
        sys.exit(f"bench: the resumed run's metrics.jsonl does not continue the first run's ({out})")
    print(f"resumed {result['algorithm']} {result['clients']:,} clients: round {rows[-1]['round']} "
          f"in {rows[-1]['time_s']:.2f} s, {wall:.1f} s in all", flush=True)  # fmt: skip
    return {"resumed_round_s": rows[-1]["time_s"], "resume_wall_s": wall,
            "resumed_peak_rss_mib_by_rank": rows[-1]["peak_rss_mib"]}  # fmt: skip


def main(argv: list[str]) -> int:
    p = benchlib.parser("scale", __doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10_000, 100_000], help="client counts of the runs")
    p.add_argument("--partition-clients", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--rounds", type=int, default=2, help="rounds per run (the first is not counted)")
    p.add_argument("--fedbat-per-round", type=int, default=1000)
    p.add_argument("--ef-per-round", type=int, default=500)
    p.add_argument("--timeout", type=float, default=240, help="seconds a run may take before it is killed")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.partition_clients, args.rounds = [200, 2000], [10_000, 20_000], 2
        args.fedbat_per_round = args.ef_per_round = 4
    if args.rounds < 2:
        p.error("--rounds: at least 2 (round 1 is warm-up and not counted)")
    partitions = time_partitions(args.partition_clients)
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedbat-bench-scale-") as tmp:
        for clients in args.clients:
            data = Path(tmp) / f"data-{clients}"
            formats.write_fmnist(data, IMAGES_PER_CLIENT * clients, TEST_IMAGES)
            for algorithm, per_round in (("fedbat", args.fedbat_per_round), ("ef-signsgd", args.ef_per_round)):
                if algorithm == "ef-signsgd" and clients != max(args.clients):
                    continue
                out = Path(tmp) / f"{algorithm}-{clients}"
                result = measure(algorithm, clients, per_round, args.rounds, data, out, args.timeout)
                if clients == max(args.clients) and algorithm == "fedbat":
                    result.update(resume(result, out, args.timeout))
                runs.append(result)
            for folder in Path(tmp).glob(f"*-{clients}"):  # the next size's data and runs need the disk
                shutil.rmtree(folder)
    print("\npartitions of 5 labels a client (dir:0.3 with --min-samples 1)")
    benchlib.print_table(partitions, [("clients", "clients", ","), ("scheme", "scheme", ""),
                                      ("seconds", "partition_s", ".2f"), ("min size", "min_size", ""),
                                      ("max size", "max_size", "")])  # fmt: skip
    print(f"\nruns on 2 ranks, {IMAGES_PER_CLIENT} images a client, rounds 2..{args.rounds}")
    benchlib.print_table(
        runs,
        [
            ("algorithm", "algorithm", ""),
            ("clients", "clients", ","),
            ("a round", "per_round", ""),
            ("s/round", "round_s", ".2f"),
            ("peak RSS rank 0/1 (MiB)", lambda r: " / ".join(f"{m:.0f}" for m in r["peak_rss_mib_by_rank"]), ""),
            ("outside rounds (s)", "outside_rounds_s", ".1f"),
            ("checkpoint (MB)", "checkpoint_mb", ".1f"),
            ("write (s)", "checkpoint_write_s", ".2f"),
            ("resumed round (s)", "resumed_round_s", ".2f"),
        ],
    )
    small, large = min(args.clients), max(args.clients)
    fedbat = {r["clients"]: r for r in runs if r["algorithm"] == "fedbat"}
    if fedbat[large]["round_s"] is not None and fedbat[small]["round_s"] is not None:
        ratio = fedbat[large]["round_s"] / fedbat[small]["round_s"]
        print(f"\nFedBAT: a round of {large:,} clients costs {ratio:.2f}x one of {small:,} "
              f"(target <= 1.2x: {'met' if ratio <= 1.2 else 'missed'})")  # fmt: skip
    for run in (r for r in runs if r["clients"] == large and r["peak_rss_mib"] is not None):
        print(f"{run['algorithm']}: peak RSS at {large:,} clients after {run['rounds']} rounds of {run['per_round']}: "
              f"{run['peak_rss_mib']:.0f} MiB (target <= 2048: {'met' if run['peak_rss_mib'] <= 2048 else 'missed'})")  # fmt: skip
    settings = {"clients": args.clients, "partition_clients": args.partition_clients, "rounds": args.rounds,
                "fedbat_per_round": args.fedbat_per_round, "ef_per_round": args.ef_per_round,
                "images_per_client": IMAGES_PER_CLIENT, "test_images": TEST_IMAGES, "ranks": 2}  # fmt: skip
    benchlib.write_json(args.json, "scale", settings, runs, partitions=partitions)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
