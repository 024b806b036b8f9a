"""Rank 0's server step against the number of clients per round: time and peak memory.

For each model and number of clients, a fresh Python process builds that many realistic sign payloads
(random signs, FedBAT-range step sizes, BatchNorm tensors), encodes them into one buffer as rank 0
receives it from the gather, and times

- ``decode``: ``codec.decode_all(buffer, shape)`` (header parsing and checks; the payloads stay views into
  the buffer);
- ``aggregate``: ``aggregate.aggregate(layout, global_vector, payloads)``: its first call (``cold``:
  fresh pages for its temporaries) and the median of ``--repeats`` further calls (``warm``: what
  every round after the first costs in a long run), with the minor page faults of each (a fault is a
  fresh page touched for the first time: the cold call's extra cost). The engine's ``aggregate``
  phase is decode + aggregate.
- ``sketch``: :func:`sketch_aggregate`, a sketch (here, not in the package) of a server step without
  the per-client float temporaries, timed in turn with ``aggregate`` and checked against it.

Memory, two views:

- ``tracemalloc peak``: the most memory that one ``aggregate`` call held above what existed before it
  (numpy reports its array buffers to tracemalloc), i.e. the aggregation's own working memory;
- ``max RSS``: the process's resident high-water mark (``ru_maxrss``), after the payloads were built and
  at the end: the second includes the received buffer, the payloads and the interpreter with torch.

The issue's target: 1,000 CNN4 payloads aggregated in under a second (read against the warm median of
decode + aggregate, with the cold call reported beside it).

    python bench/aggregate.py                                      # CNN4-MNIST 10/100/1000, ResNet-10 10/100
    python bench/aggregate.py --models resnet10 --clients 1000     # ResNet-10 at 1,000 (~660 MB of payloads)
"""

import functools
import json
import resource
import sys
import time
import tracemalloc

import benchlib
import numpy as np

from fedbat_mpi.testing import launch

DEFAULT_CLIENTS = {"cnn4-mnist": [10, 100, 1000], "cnn4": [10, 100, 1000], "resnet10": [10, 100]}


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def minor_faults() -> int:
    """Minor page faults of this process so far: each is a fresh page of memory touched for the first time."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def sketch_aggregate(layout, global_vector: np.ndarray, payloads: list) -> np.ndarray:
    """Not the package's code: a sketch of a server step without per-client float temporaries.

    ``aggregate`` turns each client's bits into a float32 ±1 array, expands the step sizes to one float
    per entry (``np.repeat``) and multiplies: about six passes over 4d bytes per client. Here the 0/1
    bytes are multiplied by each tensor's coefficient c = p_k alpha_k straight into one reused buffer,
    and sum_k c (2b - 1) = 2 sum_k c b - sum_k c is corrected once at the end. Sign payloads only.
    """
    payloads = sorted(payloads, key=lambda p: p.client_id)
    weights = np.array([p.weight for p in payloads], dtype=np.float64)
    shares = weights / weights.sum()
    slices = [slice(seg.offset, seg.offset + seg.size) for seg in layout.binarized]
    weighted_bits = np.zeros(layout.update_size, dtype=np.float32)  # sum_k c_k b_k, b in {0, 1}
    scratch = np.empty(layout.update_size, dtype=np.float32)
    coefficient_sums = np.zeros(len(slices), dtype=np.float64)  # sum_k c_k per tensor
    dense = np.zeros(layout.dense_size, dtype=np.float32)
    for share, payload in zip(shares, payloads, strict=True):
        bits = np.unpackbits(payload.body, count=payload.update_size)
        coefficients = (share * payload.scales).astype(np.float32)
        for coefficient, part in zip(coefficients, slices, strict=True):
            np.multiply(bits[part], coefficient, out=scratch[part])
        weighted_bits += scratch
        coefficient_sums += coefficients
        dense += np.float32(share) * payload.dense
    new = global_vector.astype(np.float32, copy=True)
    for seg, part, total in zip(layout.binarized, slices, coefficient_sums, strict=True):
        new[seg.global_offset : seg.global_offset + seg.size] += 2 * weighted_bits[part] - np.float32(total)
    for seg in layout.dense:
        new[seg.global_offset : seg.global_offset + seg.size] = dense[seg.offset : seg.offset + seg.size]
    return new


def measure(model: str, clients: int, repeats: int) -> dict:
    """One (model, clients) point, in this process."""
    from fedbat_mpi.server.aggregate import aggregate  # noqa: PLC0415
    from fedbat_mpi.testing.payloads import make_payload, model_layout  # noqa: PLC0415
    from fedbat_mpi.wire import codec  # noqa: PLC0415

    layout, net = model_layout(model)
    global_vector = layout.global_vector(net)
    rss_start = max_rss_mb()
    shape = codec.PayloadShape.of(layout, codec.BodyKind.SIGNS)
    size = shape.size
    buffer = np.empty(clients * size, dtype=np.uint8)  # what rank 0's gather delivers
    for client in range(clients):
        buffer[client * size : (client + 1) * size] = codec.encode(make_payload(layout, client))
    rss_payloads = max_rss_mb()

    start = time.perf_counter()
    payloads = codec.decode_all(buffer, shape)
    decode_s = time.perf_counter() - start
    faults = minor_faults()
    start = time.perf_counter()
    result = aggregate(layout, global_vector, payloads)
    cold_s = time.perf_counter() - start
    cold_faults = minor_faults() - faults
    sketch = sketch_aggregate(layout, global_vector, payloads)  # its cold call, untimed
    warm, warm_faults, sketch_warm = [], [], []
    for _ in range(repeats):  # aggregate and the sketch in turn
        faults = minor_faults()
        start = time.perf_counter()
        again = aggregate(layout, global_vector, payloads)
        warm.append(time.perf_counter() - start)
        warm_faults.append(minor_faults() - faults)
        start = time.perf_counter()
        sketch_aggregate(layout, global_vector, payloads)
        sketch_warm.append(time.perf_counter() - start)
    assert np.array_equal(result, again)
    step = np.abs(result - global_vector).max()
    sketch_error = float(np.abs(sketch - result).max() / step)
    assert sketch_error < 1e-4, sketch_error
    decodes = []
    for _ in range(repeats):
        start = time.perf_counter()
        codec.decode_all(buffer, shape)
        decodes.append(time.perf_counter() - start)
    del result, again
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    aggregate(layout, global_vector, payloads)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    warm_s = benchlib.median(warm)
    decode_warm_s = benchlib.median(decodes)
    return {
        "model": model,
        "clients": clients,
        "update_size": layout.update_size,
        "payload_bytes": size,
        "received_bytes": int(buffer.size),
        "decode_first_s": decode_s,
        "decode_s": decode_warm_s,
        "aggregate_cold_s": cold_s,
        "aggregate_warm_s": warm_s,
        "aggregate_warm_quartiles_s": benchlib.quartiles(warm),
        "sketch_warm_s": benchlib.median(sketch_warm),
        "sketch_speedup": warm_s / benchlib.median(sketch_warm),
        "sketch_max_difference_relative_to_largest_step": sketch_error,
        "minor_page_faults_cold": cold_faults,
        "minor_page_faults_warm": int(np.median(warm_faults)),
        "decode_plus_aggregate_s": decode_warm_s + warm_s,
        "per_client_ms": 1e3 * warm_s / clients,
        "tracemalloc_peak_mb": (peak - before) / 2**20,
        "max_rss_before_payloads_mb": rss_start,
        "max_rss_with_payloads_mb": rss_payloads,
        "max_rss_end_mb": max_rss_mb(),
    }


def main(argv: list[str]) -> int:
    p = benchlib.parser("aggregate", __doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["cnn4-mnist", "resnet10"], choices=list(DEFAULT_CLIENTS))
    p.add_argument(
        "--clients",
        type=int,
        nargs="+",
        help="clients per round (default: 10 100 1000 for CNN4, 10 100 for ResNet-10)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed warm calls per point")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "CLIENTS"), help=_hidden())
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.repeats)))
        return 0
    if args.quick:
        args.clients, args.repeats, args.models = [2], 1, ["cnn4-mnist"]
    results = []
    for model in args.models:
        for clients in args.clients or DEFAULT_CLIENTS[model]:
            # A fresh process per point, so that its max RSS is its own.
            child = ["--child", model, str(clients), "--repeats", str(args.repeats)]
            done = benchlib.run(launch.command(None, child, script=[__file__]), timeout=3600)
            results.append(json.loads(done.stdout.splitlines()[-1]))
            r = results[-1]
            print(f"{model} x {clients}: {r['decode_plus_aggregate_s']:.3f} s", flush=True)
    ms, field = functools.partial(benchlib.field, scale=1e3), benchlib.field
    print(f"\nwarm = median of {args.repeats} calls after the first (cold) one; memory in MiB")
    benchlib.print_table(
        results,
        [
            ("model", "model", ""),
            ("clients", "clients", ","),
            ("received MB", field("received_bytes", scale=1e-6), ".1f"),
            ("decode ms", ms("decode_s"), ".2f"),
            ("aggregate cold ms", ms("aggregate_cold_s"), ".1f"),
            ("aggregate warm ms", ms("aggregate_warm_s"), ".1f"),
            ("decode+aggregate ms", ms("decode_plus_aggregate_s"), ".1f"),
            ("ms/client", "per_client_ms", ".3f"),
            ("faults cold", "minor_page_faults_cold", ","),
            ("faults warm", "minor_page_faults_warm", ","),
            ("sketch warm ms", ms("sketch_warm_s"), ".1f"),
            ("tracemalloc peak", "tracemalloc_peak_mb", ".1f"),
            ("max RSS w/ payloads", "max_rss_with_payloads_mb", ".0f"),
            ("max RSS end", "max_rss_end_mb", ".0f"),
        ],
    )
    for r in results:
        if r["model"] in ("cnn4", "cnn4-mnist") and r["clients"] == 1000:
            t = r["decode_plus_aggregate_s"]
            print(
                f"\ntarget: 1,000 {r['model']} payloads aggregated in < 1 s: {t:.3f} s warm "
                f"({'met' if t < 1 else 'missed'}); cold first call {r['aggregate_cold_s']:.3f} s"
            )
    settings = {"models": args.models, "clients": args.clients, "repeats": args.repeats}
    benchlib.write_json(args.json, "aggregate", settings, results)
    return 0


def _hidden() -> str:
    import argparse  # noqa: PLC0415

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
