"""What a checkpoint of a run with per-client state costs: EF-SignSGD's error memory (CNN4-MNIST rows,
389,920 float32 values = 1.56 MB a client) in ``ClientStateStore``, by clients in the run and rows
changed since the last checkpoint.

For each number of clients, a store is created in ``--dir`` and ``--held`` clients' rows are written and
committed (the rows a long run holds). Then, ``--repeats`` times for each number of changed rows k
(in turn): k held clients' rows are written (what the rounds do, in their gather phase: ``write_s``),
then a checkpoint is timed as rounds/job.py makes it, ``checkpoint.save_committing`` (fsync of the
store, the checkpoint file with the real model, the commit: ``checkpoint_s``). Medians are reported.
For contrast, ``copy_all_s`` is one write and fsync of every held row to a new file: the least a
checkpoint that copies the rows (format 1) would cost. Last, what checking a row read costs: the
store's ``row_sum`` against ``zlib.crc32`` on one row, side by side.

    python bench/client_state.py                        # 1,000 and 100,000 clients; 0, 10, 100, 1,000 rows changed
    python bench/client_state.py --clients 10000 --held 200 --changed 10 200
"""

import os
import shutil
import sys
import tempfile
import time
import timeit
import zlib
from dataclasses import replace

import benchlib
import numpy as np

from fedbat_mpi.server import checkpoint
from fedbat_mpi.server.client_state import FILE_NAME, ClientStateStore, row_sum
from fedbat_mpi.testing.payloads import model_layout


def _fsynced_copy(folder: str, rows: np.ndarray, copies: int) -> float:
    """Seconds to write ``copies`` rows to a new file and fsync it."""
    path = os.path.join(folder, "copy.bin")
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for i in range(copies):
            handle.write(rows[i % len(rows)].tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - start
    os.remove(path)
    return elapsed


def measure(folder: str, clients: int, held: int, changed: list[int], row_size: int, repeats: int,
            tensors: dict) -> list[dict]:  # fmt: skip
    """Every (clients, k) point for one number of clients, in a fresh store in ``folder``."""
    rng = np.random.default_rng(clients)
    rows = rng.standard_normal((max(changed), row_size)).astype(np.float32)
    held_clients = np.sort(rng.choice(clients, held, replace=False))
    store = ClientStateStore.create(folder, "error_memory", clients, row_size)
    for start in range(0, held, len(rows)):
        part = held_clients[start : start + len(rows)].tolist()
        store.write(part, rows[: len(part)])
    path = os.path.join(folder, checkpoint.FILE_NAME)
    state = checkpoint.RunState(0, {"num_clients": clients}, tensors, [], 1)
    round_index = 0

    def write_and_checkpoint(k: int) -> tuple[float, float]:
        nonlocal round_index
        round_index += 1
        some = np.sort(rng.choice(held_clients, k, replace=False)).tolist()
        start = time.perf_counter()
        store.write(some, rows[:k])
        written = time.perf_counter()
        checkpoint.save_committing(path, replace(state, round=round_index), store)
        return written - start, time.perf_counter() - written

    write_and_checkpoint(1)  # the first checkpoint commits every held row
    times: dict[int, list[tuple[float, float]]] = {k: [] for k in changed}
    for _ in range(repeats):
        for k in changed:
            times[k].append(write_and_checkpoint(k))
    stat = os.stat(os.path.join(folder, FILE_NAME))
    store.close()
    copy_all_s = _fsynced_copy(folder, rows, held)
    results = []
    for k in changed:
        results.append({
            "clients": clients, "held_rows": held, "changed_rows": k, "row_bytes": 4 * row_size,
            "write_s": benchlib.median([w for w, _ in times[k]]),
            "checkpoint_s": benchlib.median([c for _, c in times[k]]),
            "checkpoint_bytes": os.path.getsize(path),
            "store_disk_bytes": 512 * stat.st_blocks, "store_apparent_bytes": stat.st_size,
            "copy_all_s": copy_all_s,
        })  # fmt: skip
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    return results


def row_check_ms(row_size: int) -> dict[str, float]:
    """Milliseconds to check one row of ``row_size`` float32 values: ``row_sum`` and ``zlib.crc32`` (the
    best of 5 runs of 100 calls each, one method after the other)."""
    row = np.random.default_rng(0).random(row_size, dtype=np.float32)
    checks = {"row_sum": lambda: row_sum(row), "crc32": lambda: zlib.crc32(row.data)}
    best = {name: min(timeit.repeat(check, number=100, repeat=5)) for name, check in checks.items()}
    return {name: 1e3 * seconds / 100 for name, seconds in best.items()}


def main() -> None:
    p = benchlib.parser("client_state", __doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1_000, 100_000], help="clients in the run")
    p.add_argument("--held", type=int, default=1_000, help="clients holding a row (written before timing)")
    p.add_argument("--changed", type=int, nargs="+", default=[0, 10, 100, 1_000], help="rows written between checkpoints")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the store goes (default: a temporary folder)")
    args = p.parse_args()
    layout, net = model_layout("cnn4-mnist")
    row_size = layout.update_size
    if args.quick:
        args.clients, args.held, args.changed, args.repeats, row_size = [100], 20, [2, 20], 1, 1_000
    if max(args.changed) > args.held:
        sys.exit("--changed: at most --held rows")
    tensors = {name: value.detach().numpy() for name, value in net.state_dict().items()}
    folder = tempfile.mkdtemp(prefix="client-state-", dir=args.dir)
    try:
        results = [row for clients in args.clients
                   for row in measure(folder, clients, args.held, args.changed, row_size, args.repeats, tensors)]  # fmt: skip
    finally:
        shutil.rmtree(folder)
    benchlib.print_table(results, [
        ("clients", "clients", ","), ("held rows", "held_rows", ","), ("changed", "changed_rows", ","),
        ("write rows ms", benchlib.field("write_s", scale=1e3), ".0f"),
        ("checkpoint ms", benchlib.field("checkpoint_s", scale=1e3), ".0f"),
        ("checkpoint bytes", "checkpoint_bytes", ","),
        ("store on disk MB", benchlib.field("store_disk_bytes", scale=1e-6), ",.0f"),
        ("store apparent GB", benchlib.field("store_apparent_bytes", scale=1e-9), ",.1f"),
        ("copy all held ms", benchlib.field("copy_all_s", scale=1e3), ".0f"),
    ])  # fmt: skip
    check = row_check_ms(row_size)
    print(f"checking a row read ({row_size:,} float32): row_sum {check['row_sum']:.3f} ms, "
          f"zlib.crc32 {check['crc32']:.3f} ms")  # fmt: skip
    settings = {"clients": args.clients, "held": args.held, "changed": args.changed, "repeats": args.repeats,
                "row_size": row_size, "row_check_ms": check}  # fmt: skip
    benchlib.write_json(args.json, "client_state", settings, results)


if __name__ == "__main__":
    main()
