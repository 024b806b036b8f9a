"""Rank 0's server step against the number of clients per round: time, page faults and memory.

For each model, body kind and number of clients, a fresh Python process builds that many realistic
payloads (``testing.payloads.make_payload``: random signs with FedBAT-range step sizes, or FedAvg-like
float32 updates; BatchNorm tensors), encodes them into one buffer as rank 0 receives it from the gather,
builds the run's ``Aggregator`` (timed as ``setup``, the torch engine's warm-up included; once per
run) and times what the engine's ``aggregate`` phase does each round:

- ``decode``: ``read_round(buffer, shape)`` (every header, weight and scale checked; views, no copies);
- ``aggregate``: ``aggregator(global_vector, payloads)``;

for the ``first`` call (the run's first round) and the median of ``--repeats`` later calls (every
round after), with the minor page faults of each (a fault is a fresh page touched for the first time).
The later results must equal the first byte for byte; where the round is small enough (clients x d
<= 5e8), the result is also compared with the float64 reference (``testing.payloads
.reference_aggregate``) and the largest difference reported relative to the largest step.

Memory, two views:

- ``tracemalloc peak``: the most memory that one decode + aggregate call held above what existed
  before it (numpy and the package's own arrays report to tracemalloc; torch's do not, and the
  aggregator allocates none per call), i.e. the server step's working memory per round;
- ``max RSS``: the process's resident high-water mark (``ru_maxrss``), after the payloads were built and
  at the end (the received buffer, the aggregator's buffers, the interpreter with torch).

Issue 9's targets, read against the later calls' median of decode + aggregate (the first call
reported beside it, at most 1.5x a later one): 1,000 CNN4 payloads in 0.1 s and 1,000 ResNet-10
payloads in 2 s on the 2-core development machine; 1,000 ResNet-10 payloads in 0.1 s on an H100.

    python bench/aggregate.py                                     # CNN4-MNIST and ResNet-10 sign payloads
    python bench/aggregate.py --kinds float32 --models cnn4-mnist --clients 100 1000
    python bench/aggregate.py --threads 1 --engine torch           # the GPU's engine, on the CPU
"""

import argparse
import functools
import json
import os
import resource
import sys
import time
import tracemalloc

import benchlib
import numpy as np

from fedbat_mpi.testing import launch

DEFAULT_CLIENTS = {"cnn4-mnist": [10, 100, 1000], "cnn4": [10, 100, 1000], "resnet10": [10, 100, 1000]}
REFERENCE_LIMIT = 5e8  # clients x d up to which the float64 reference is computed


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def minor_faults() -> int:
    """Minor page faults of this process so far: each is a fresh page of memory touched for the first time."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(model: str, kind_name: str, clients: int, threads: int, engine: str | None, repeats: int,
            device: str = "cpu") -> dict:  # fmt: skip
    """One point, in this process."""
    from fedbat_mpi.server.aggregate import Aggregator  # noqa: PLC0415
    from fedbat_mpi.server.payloads import read_round  # noqa: PLC0415
    from fedbat_mpi.testing.payloads import make_payload, model_layout, reference_aggregate  # noqa: PLC0415
    from fedbat_mpi.wire import codec  # noqa: PLC0415

    load_start = os.getloadavg()
    kind = codec.BodyKind[kind_name.upper()]
    layout, net = model_layout(model)
    global_vector = layout.global_vector(net)
    rss_start = max_rss_mb()
    shape = codec.PayloadShape.of(layout, kind)
    size = shape.size
    start = time.perf_counter()
    aggregator = Aggregator(layout, shape, device, threads, engine=engine)
    setup_s = time.perf_counter() - start

    buffer = aggregator.receive_buffer(clients * size)  # what rank 0's gather delivers, where it does
    for client in range(clients):
        buffer[client * size : (client + 1) * size] = codec.encode(make_payload(layout, client, kind))
    rss_payloads = max_rss_mb()

    def timed() -> tuple[float, float, int, np.ndarray]:
        """Seconds of decode and of aggregate, the minor page faults of both, the new model."""
        faults, start = minor_faults(), time.perf_counter()
        payloads = read_round(buffer, shape)
        decoded = time.perf_counter()
        new = aggregator(global_vector, payloads)
        return decoded - start, time.perf_counter() - decoded, minor_faults() - faults, new

    decode_first, aggregate_first, faults_first, result = timed()
    decodes, aggregates, faults = [], [], []
    for _ in range(repeats):
        decode_s, aggregate_s, fault_count, again = timed()
        assert np.array_equal(again, result), "a later call differs from the first"
        decodes.append(decode_s)
        aggregates.append(aggregate_s)
        faults.append(fault_count)
    difference = None
    if clients * layout.update_size <= REFERENCE_LIMIT:
        expected = reference_aggregate(
            layout, global_vector, [make_payload(layout, c, kind) for c in range(clients)]
        )
        difference = float(np.abs(result - expected).max() / np.abs(expected - global_vector).max())
        del expected
    del result, again
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    aggregator(global_vector, read_round(buffer, shape))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    aggregator.close()
    first_s = decode_first + aggregate_first
    decode_s, aggregate_s = benchlib.median(decodes), benchlib.median(aggregates)
    later_s = benchlib.median([d + a for d, a in zip(decodes, aggregates, strict=True)])
    return {
        "model": model,
        "kind": kind.name.lower(),
        "clients": clients,
        "threads": threads,
        "engine": aggregator.engine,
        "update_size": layout.update_size,
        "payload_bytes": size,
        "received_bytes": int(buffer.size),
        "setup_s": setup_s,
        "decode_first_s": decode_first,
        "aggregate_first_s": aggregate_first,
        "first_call_s": first_s,
        "decode_s": decode_s,
        "aggregate_s": aggregate_s,
        "decode_plus_aggregate_s": later_s,
        "decode_plus_aggregate_quartiles_s": benchlib.quartiles(
            [d + a for d, a in zip(decodes, aggregates, strict=True)]
        ),
        "first_over_later": first_s / later_s,
        "per_client_ms": 1e3 * later_s / clients,
        "minor_page_faults_first": faults_first,
        "minor_page_faults_later": int(np.median(faults)),
        "max_difference_relative_to_largest_step": difference,
        "tracemalloc_peak_mb": (peak - before) / 2**20,
        "max_rss_before_payloads_mb": rss_start,
        "max_rss_with_payloads_mb": rss_payloads,
        "max_rss_end_mb": max_rss_mb(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }


def main(argv: list[str]) -> int:
    p = benchlib.parser("aggregate", __doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["cnn4-mnist", "resnet10"], choices=list(DEFAULT_CLIENTS))
    p.add_argument("--kinds", nargs="+", default=["signs"], choices=["signs", "float32"], help="body kinds")
    p.add_argument("--clients", type=int, nargs="+", help="clients per round (default: 10 100 1000)")
    p.add_argument("--threads", type=int, default=2, help="the aggregator's threads (--threads of a run)")
    p.add_argument("--engine", choices=["table", "torch"], help="default: the device's (table on the CPU)")
    p.add_argument("--device", default="cpu", help="rank 0's device: cpu, or cuda (the torch engine)")
    p.add_argument("--repeats", type=int, default=5, help="later calls timed per point")
    p.add_argument("--child", nargs=3, metavar=("MODEL", "KIND", "CLIENTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        model, kind, clients = args.child
        print(json.dumps(measure(model, kind, int(clients), args.threads, args.engine, args.repeats, args.device)))
        return 0
    if args.quick:
        args.clients, args.repeats, args.models, args.kinds = [2], 1, ["cnn4-mnist"], ["signs", "float32"]
    results = []
    for model in args.models:
        for kind in args.kinds:
            for clients in args.clients or DEFAULT_CLIENTS[model]:
                # A fresh process per point, so that its max RSS and first call are its own.
                child = ["--child", model, kind, str(clients), "--repeats", str(args.repeats),
                         "--threads", str(args.threads), "--device", args.device,
                         *(["--engine", args.engine] if args.engine else [])]  # fmt: skip
                done = benchlib.run(launch.command(None, child, script=[__file__]), timeout=3600)
                results.append(json.loads(done.stdout.splitlines()[-1]))
                r = results[-1]
                print(f"{model} {kind} x {clients}: {r['decode_plus_aggregate_s']:.3f} s later, "
                      f"{r['first_call_s']:.3f} s first (load {r['load_average_start'][0]:.1f})", flush=True)  # fmt: skip
    ms, field = functools.partial(benchlib.field, scale=1e3), benchlib.field
    print(f"\nlater = median of {args.repeats} calls after the first; memory in MiB; {args.threads} threads")
    benchlib.print_table(
        results,
        [
            ("model", "model", ""),
            ("kind", "kind", ""),
            ("clients", "clients", ","),
            ("received MB", field("received_bytes", scale=1e-6), ".1f"),
            ("decode ms", ms("decode_s"), ".2f"),
            ("aggregate ms", ms("aggregate_s"), ".1f"),
            ("decode+aggregate ms", ms("decode_plus_aggregate_s"), ".1f"),
            ("setup ms", ms("setup_s"), ".1f"),
            ("first call ms", ms("first_call_s"), ".1f"),
            ("first/later", "first_over_later", ".2f"),
            ("ms/client", "per_client_ms", ".3f"),
            ("faults first", "minor_page_faults_first", ","),
            ("faults later", "minor_page_faults_later", ","),
            ("max diff/step", "max_difference_relative_to_largest_step", ".1e"),
            ("tracemalloc peak", "tracemalloc_peak_mb", ".1f"),
            ("max RSS end", "max_rss_end_mb", ".0f"),
        ],
    )
    targets = {"cnn4": 0.1, "cnn4-mnist": 0.1, "resnet10": 2.0 if args.device == "cpu" else 0.1}
    for r in results:
        if r["kind"] == "signs" and r["clients"] == 1000:
            t, target = r["decode_plus_aggregate_s"], targets[r["model"]]
            print(f"\ntarget: 1,000 {r['model']} payloads aggregated in <= {target} s: {t:.3f} s "
                  f"({'met' if t <= target else 'missed'}); first call {r['first_call_s']:.3f} s "
                  f"({r['first_call_s'] / t:.2f}x, target <= 1.5x)")  # fmt: skip
    settings = {k: getattr(args, k) for k in ("models", "kinds", "clients", "threads", "engine", "repeats")}
    benchlib.write_json(args.json, "aggregate", settings, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
