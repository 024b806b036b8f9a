"""The payload gather: ``Communicator.gather_bytes`` against a raw uint8 ``Gatherv`` of the same sizes.

Each rank holds the encoded payloads of its block of the round's clients (contiguous blocks, as the
engine's schedule splits them), concatenated: ``--clients`` payloads of ``--models`` in all. Per turn,
after a barrier, rank 0 times

- ``fedbat``: ``Communicator.gather_bytes(buffer)`` without counts, as the engine called it until
  2026-11-27 (an ``Allgather`` of the byte counts, a fresh receive buffer, then ``Gatherv``; the engine
  now passes the counts and a reused buffer, which ``raw`` approximates);
- ``raw``: ``MPI.COMM_WORLD.Gatherv`` of the same uint8 buffers into a preallocated receive buffer with
  counts known in advance (the least any gather of these bytes can cost);
- ``counts``: the ``Allgather`` of one int64 per rank alone (the step ``gather_bytes`` adds before its
  ``Gatherv``: the byte counts), and ``raw_fresh``: the raw ``Gatherv`` into a receive buffer allocated
  anew each time (as ``gather_bytes`` does): together they show where a gap between the two comes from;

in turn, ``--repeats`` times, and reports medians. Bandwidth is the bytes rank 0 holds afterwards (every
rank's payloads, its own included, as ``uplink_bytes`` counts them) over rank 0's time.

    python bench/gather.py --ranks 2 4 8      # launches mpirun -n 2, 4, 8 itself
    mpirun -n 4 python bench/gather.py        # one size, under your own launcher
"""

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import numpy as np

from fedbat_mpi.testing import launch

# Set in every process that MPICH's or Open MPI's mpirun (or a PMIx launcher such as srun) starts.
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def measure(model: str, clients: int, repeats: int) -> dict | None:
    """Time both gathers on this MPI job; the result on rank 0, ``None`` elsewhere."""
    from mpi4py import MPI  # noqa: PLC0415

    from fedbat_mpi.server.payloads import read_round  # noqa: PLC0415
    from fedbat_mpi.testing.payloads import make_payload, model_layout  # noqa: PLC0415
    from fedbat_mpi.wire import codec  # noqa: PLC0415
    from fedbat_mpi.wire.comm import Communicator  # noqa: PLC0415

    comm = Communicator()
    world = MPI.COMM_WORLD
    layout, _ = model_layout(model)
    mine = np.array_split(np.arange(clients), comm.size)[comm.rank]
    parts = [codec.encode(make_payload(layout, int(c))) for c in mine]
    data = np.concatenate([np.zeros(0, np.uint8), *parts])
    counts = np.array(world.allgather(data.size), dtype=np.int64)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    raw_recv = np.empty(int(counts.sum()), dtype=np.uint8) if comm.is_root else None
    raw_spec = [raw_recv, counts.tolist(), displs.tolist(), MPI.BYTE] if comm.is_root else None

    def fedbat():
        comm.gather_bytes(data)

    def raw():
        world.Gatherv([data, MPI.BYTE], raw_spec, root=0)

    def raw_fresh():  # as raw, into a new receive buffer each time (as gather_bytes allocates one)
        fresh = np.empty(int(counts.sum()), dtype=np.uint8) if comm.is_root else None
        spec = [fresh, counts.tolist(), displs.tolist(), MPI.BYTE] if comm.is_root else None
        world.Gatherv([data, MPI.BYTE], spec, root=0)

    count_send, count_recv = np.array([data.size], dtype=np.int64), np.empty(comm.size, dtype=np.int64)

    def counts_only():  # the Allgather of byte counts that gather_bytes does before its Gatherv
        world.Allgather(count_send, count_recv)

    received, _ = comm.gather_bytes(data)  # check what arrives before timing it
    if comm.is_root:
        assert received is not None
        shape = codec.PayloadShape.of(layout, codec.BodyKind.SIGNS)
        assert read_round(received, shape).client_ids.tolist() == list(range(clients))
    variants = {"fedbat": fedbat, "raw": raw, "raw_fresh": raw_fresh, "counts": counts_only}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for turn in range(repeats + 1):  # turn 0 is untimed warm-up
        for name, function in variants.items():
            world.Barrier()
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            if turn:
                times[name].append(elapsed)
    if not comm.is_root:
        return None
    total = int(counts.sum())
    med = {name: benchlib.median(values) for name, values in times.items()}
    return {
        "ranks": comm.size,
        "model": model,
        "clients": clients,
        "payload_bytes": int(parts[0].size) if parts else None,
        "total_bytes": total,
        "bytes_per_rank": counts.tolist(),
        "median_s": med,
        "quartiles_s": {name: benchlib.quartiles(values) for name, values in times.items()},
        "gb_per_s": {name: total / med[name] / benchlib.GB for name in ("fedbat", "raw")},
        "fedbat_vs_raw": med["raw"] / med["fedbat"],
        "mpi_library": MPI.Get_library_version().splitlines()[0].strip(),
    }


def worker(args) -> int:
    from mpi4py import MPI  # noqa: PLC0415

    results = [measure(model, args.clients, args.repeats) for model in args.models]
    if MPI.COMM_WORLD.Get_rank() == 0:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results))
    return 0


def driver(args) -> int:
    """Launch ``mpirun -n N`` for each N of ``--ranks``, then print and write every result."""
    results = []
    with tempfile.TemporaryDirectory(prefix="fedbat-bench-gather-") as tmp:
        for ranks in args.ranks:
            part = Path(tmp) / f"gather-{ranks}.json"
            options = ["--worker", "--models", *args.models, "--clients", str(args.clients)]
            options += ["--repeats", str(args.repeats), "--json", str(part)]
            benchlib.run(launch.command(ranks, options, script=[__file__]), timeout=900)
            results += json.loads(part.read_text())
    report(args, results)
    return 0


def report(args, results: list[dict]) -> None:
    """Print the table and write the JSON (on rank 0, or in the driver)."""
    ms = functools.partial(benchlib.field, "median_s", scale=1e3)
    gb = functools.partial(benchlib.field, "gb_per_s")
    print(f"median of {args.repeats} interleaved turns, barrier before each; rank 0's time")
    benchlib.print_table(
        results,
        [
            ("ranks", "ranks", ""),
            ("model", "model", ""),
            ("clients", "clients", ""),
            ("bytes gathered", "total_bytes", ","),
            ("gather_bytes ms", ms("fedbat"), ".3f"),
            ("raw Gatherv ms", ms("raw"), ".3f"),
            ("raw, fresh buffer ms", ms("raw_fresh"), ".3f"),
            ("Allgather of counts ms", ms("counts"), ".3f"),
            ("gather_bytes GB/s", gb("fedbat"), ".2f"),
            ("raw GB/s", gb("raw"), ".2f"),
            ("gather_bytes/raw %", benchlib.field("fedbat_vs_raw", scale=100), ".0f"),
        ],
    )
    settings = {"ranks": args.ranks, "models": args.models, "clients": args.clients, "repeats": args.repeats}
    benchlib.write_json(args.json, "gather", settings, results)


def main(argv: list[str]) -> int:
    p = benchlib.parser("gather", __doc__.split("\n\n")[0])
    p.add_argument(
        "--ranks",
        type=int,
        nargs="+",
        default=[2, 4, 8],
        help="launch mpirun -n N for each N (ignored when already started by mpirun with N > 1)",
    )
    p.add_argument(
        "--models", nargs="+", default=["cnn4", "resnet10"], choices=["cnn4-mnist", "cnn4", "resnet10"]
    )
    p.add_argument("--clients", type=int, default=10, help="payloads in all, spread over the ranks")
    p.add_argument("--repeats", type=int, default=30, help="timed turns of each gather")
    p.add_argument("--worker", action="store_true", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.clients, args.repeats = ["cnn4"], 2, 3
    if args.worker:
        return worker(args)
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return driver(args)
    # Started by the user's launcher (mpirun, srun): measure this job's size only.
    from mpi4py import MPI  # noqa: PLC0415

    args.ranks = [MPI.COMM_WORLD.Get_size()]
    results = [measure(model, args.clients, args.repeats) for model in args.models]
    if MPI.COMM_WORLD.Get_rank() == 0:
        report(args, [r for r in results if r is not None])  # all of them on rank 0
    return 0


def argparse_hidden() -> str:
    import argparse  # noqa: PLC0415

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
