"""A sampling profile (py-spy) of a real run, every rank, with its samples sorted into the round's phases.

Runs ``py-spy record --subprocesses --idle`` around ``mpirun -n RANKS python -m fedbat_mpi.run ARGS``
(default: the embedded default, 3 rounds) and counts each rank's samples by the engine call they are
in: ``train`` (``Engine.train_within_memory``), ``pack``, ``gather`` (``gather_bytes``), ``aggregate``
(``read_round`` + ``Aggregator.__call__``), ``broadcast``, ``eval`` (``evaluate``), the rest of ``run_round``,
and ``outside rounds`` (start-up, data loading, checkpoints). With ``--idle`` a sample is taken
whatever the process is doing, so the counts are wall time (a process waiting for a CPU is sampled
too: py-spy cannot tell it from one running). Within train and eval, the hottest Python functions are
listed. This is the evidence behind BENCHMARKS.md's explanations; it needs py-spy (in the ``test``
extra, or ``pip install py-spy``; ptrace must be allowed, as it is for root in a container).

    python bench/profile_round.py                              # embedded default, 2 ranks, 3 rounds
    python bench/profile_round.py --ranks 1 -- --rounds 3 --local-epochs 1
"""

import collections
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib

from fedbat_mpi.client.evaluate import evaluate
from fedbat_mpi.client.folding import FoldedModel
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rounds.engine import Engine
from fedbat_mpi.server.aggregate import Aggregator
from fedbat_mpi.server.payloads import read_round
from fedbat_mpi.testing import launch
from fedbat_mpi.wire.comm import Communicator

# The calls in ``Engine.run_round`` and the phase engine.py times each in, named by the functions
# themselves: a renamed one fails here (tests/test_bench.py runs this script) instead of its samples
# moving to "round, other" unseen. The untimed gather of each rank's peak memory (8 bytes) counts as
# "gather" here.
PHASE_OF_CALL = {
    function.__qualname__: phase
    for function, phase in [
        (Engine.send_client_states, "broadcast"),
        (Engine.train_within_memory, "train"),
        (Engine.pack, "pack"),
        (Communicator.gather_bytes, "gather"),
        (Engine.collect_client_states, "gather"),
        (read_round, "aggregate"),
        (Aggregator.__call__, "aggregate"),
        (Communicator.broadcast, "broadcast"),
        (ModelLayout.load, "eval"),
        (FoldedModel.of, "eval"),
        (evaluate, "eval"),
    ]
}
RUN_ROUND = Engine.run_round.__qualname__
PHASES = ("train", "pack", "gather", "aggregate", "broadcast", "eval", "round, other", "outside rounds")


def share_of(phase: str) -> Callable[[dict], float]:
    """A table column: a process's share of its round samples in ``phase``, in % (0 for none)."""
    return lambda row: 100 * row["share_of_round_samples"].get(phase, 0)


def classify(frames: list[str]) -> str:
    """The phase of one stack (root first): the first engine call below ``Engine.run_round``."""
    for depth, frame in enumerate(frames):
        if frame.startswith(RUN_ROUND + " "):
            for callee in frames[depth + 1 :]:
                name = callee.split(" (", 1)[0]
                if name in PHASE_OF_CALL:
                    return PHASE_OF_CALL[name]
            return "round, other"
    return "outside rounds"


def hot_functions(stacks: list[tuple[list[str], int]], phase: str, top: int) -> list[tuple[str, int]]:
    """The innermost Python frames that hold most of a phase's samples."""
    counts: collections.Counter = collections.Counter()
    for frames, n in stacks:
        if classify(frames) == phase:
            counts[frames[-1]] += n
    return counts.most_common(top)


def parse(raw: Path) -> dict[str, list[tuple[list[str], int]]]:
    """py-spy's raw (collapsed) stacks, grouped by the ``fedbat_mpi.run`` process they belong to."""
    by_process: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        runs = [f for f in frames if f.startswith("process ") and "fedbat_mpi.run" in f and "mpirun" not in f]
        if not runs:
            continue
        pid = runs[-1].split(":", 1)[0].removeprefix("process ")
        inner = frames[frames.index(runs[-1]) + 1 :]
        by_process[pid].append((inner, int(count)))
    return by_process


def main(argv: list[str]) -> int:
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else ["--rounds", "3"]
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = benchlib.parser("profile_round", __doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rate", type=int, default=100, help="samples per second")
    args = p.parse_args(argv)
    if args.quick:
        run_args = "--num-clients 8 --clients-per-round 2 --local-epochs 1 --rounds 2".split()
        run_args += "--batch-size 64 --eval-batch-size 1000".split()
    try:
        py_spy = launch.program(
            "py-spy", "pip install py-spy (it is in the test extra: pip install -e '.[test]')"
        )
    except FileNotFoundError as error:
        sys.exit(f"bench: {error}")
    raw_path = Path(args.json).with_suffix(".raw.txt")
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedbat-bench-profile-") as tmp:
        run = launch.command(args.ranks, [*run_args, "--out", str(Path(tmp) / "run")])
        command = [
            py_spy,
            "record",
            "--subprocesses",
            "--idle",
            "--format",
            "raw",
            "--rate",
            str(args.rate),
            "--output",
            str(raw_path),
            "--",
            *run,
        ]
        benchlib.run(command, timeout=3600)
        rows = launch.metrics(Path(tmp) / "run")
    processes = parse(raw_path)
    results = []
    for pid, stacks in sorted(processes.items(), key=lambda item: int(item[0])):
        counts: collections.Counter[str] = collections.Counter()
        for frames, n in stacks:
            counts[classify(frames)] += n
        rank0 = counts["aggregate"] > 0 or args.ranks == 1
        in_rounds = sum(counts[phase] for phase in PHASES[:-1])
        row: dict[str, Any] = {
                "pid": int(pid),
                "rank": "0" if rank0 else "other",
                "samples": dict(counts),
                "share_of_round_samples": {phase: counts[phase] / in_rounds for phase in PHASES[:-1]}
                if in_rounds
                else {},
                "hot_train": hot_functions(stacks, "train", 8),
                "hot_eval": hot_functions(stacks, "eval", 8),
        }
        results.append(row)
    print(
        f"each rank's py-spy samples inside run_round, % ({args.rate} Hz, idle included; all rounds); "
        f"run: {' '.join(run_args)}"
    )
    benchlib.print_table(
        results,
        [
            ("process", lambda r: f"rank {r['rank']} (pid {r['pid']})", ""),
            ("samples (whole run)", lambda r: sum(r["samples"].values()), ","),
        ]
        + [(phase, share_of(phase), ".1f") for phase in PHASES[:-1]],
    )
    for r in results:
        for phase in ("train", "eval"):
            print(f"\nrank {r['rank']} (pid {r['pid']}), hottest frames in {phase}:")
            for frame, n in r[f"hot_{phase}"][:5]:
                print(f"  {n:6d}  {frame}")
    settings = {"ranks": args.ranks, "rate": args.rate, "run_args": run_args, "raw_profile": str(raw_path)}
    print(f"\nraw profile: {raw_path}")
    benchlib.write_json(args.json, "profile_round", settings, results, metrics=rows)
    if not any(r["samples"].get("train") for r in results):
        sys.exit(
            "bench: no sample in the train phase: PHASE_OF_CALL no longer matches Engine.run_round's calls"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
