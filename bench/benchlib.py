"""What every benchmark in ``bench/`` shares: the machine record, timing, tables, JSON, launching runs.

The benchmarks are scripts (``python bench/NAME.py``); this module sits beside them and is imported as
``benchlib``. What the tests use too (launching runs, payloads, data files in the official formats) is
in :mod:`fedbat_mpi.testing`.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedbat_mpi.testing import launch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
GB = 1e9  # bandwidths in decimal gigabytes per second, as memory and network bandwidths are quoted


# ---- the record of where and when a result was measured ----


def cpu_model() -> str:
    """``lscpu``'s model name (``/proc/cpuinfo`` when lscpu is missing), or the platform's processor."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU, core count, load average, versions and the UTC time: stored with every result."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1_5_15min": load,
        "python": platform.python_version(),
        **{name: _version(name) for name in ("numpy", "torch", "mpi4py", "mpich")},
        "hostname": platform.node(),
    }


def _version(distribution: str) -> str | None:
    """An installed distribution's version, read from its metadata (importing torch would cost seconds)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``), or None off Linux.

    Its growth over a run, divided by the run's wall time, is how many cores were busy; less the run's
    own CPU seconds, how many cores other work took from it.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user and nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children and their descendants (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- command line, JSON, tables ----


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--json`` and ``--quick``."""
    p = argparse.ArgumentParser(
        prog=f"python bench/{name}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--json", default=str(RESULTS_DIR / f"{name}.json"), help="where to write the results")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the benchmark runs (tests)")
    return p


def write_json(path: str | Path, benchmark: str, settings: dict, results: list[dict], *, announce: bool = True,
               **extra: object) -> Path:  # fmt: skip
    """Write one benchmark's results with the machine and the command line that produced them (and say
    where, unless ``announce`` is False: a record rewritten as results come in)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": benchmark,
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine(),
        "settings": settings,
        "results": results,
        **extra,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    if announce:
        print(f"\nwrote {path}")
    return path


Column = tuple[str, str | Callable[[dict], object], str]


def print_table(rows: Sequence[dict], columns: Sequence[Column]) -> None:
    """A plain-text table, a line per row: ``columns`` are (header, value, format spec) triples, the
    value a key of the row or a function of it; a missing value (None) prints as "-"."""
    cells = [[header for header, _, _ in columns]]
    for row in rows:
        cells.append(
            [_cell(value(row) if callable(value) else row.get(value), spec) for _, value, spec in columns]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if n and i else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def field(*keys: str, scale: float = 1.0) -> Callable[[dict], float | None]:
    """A table column's value: ``row[key1][key2]...`` times ``scale`` (1e3: seconds as ms; 100: a share
    as %), or None where the value is None."""

    def value(row: dict) -> float | None:
        item: Any = row
        for key in keys:
            item = item[key]
        return None if item is None else scale * item

    return value


def _cell(value, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


# ---- timing ----


def interleaved(
    functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each function, called in turn ``repeats`` times (after ``warmup`` untimed turns).

    Interleaving puts every function under the same background load: on a shared machine a burst of
    other work slows all of them in the same turn, so their ratios stay meaningful even when the
    absolute times do not.
    """
    times: dict[str, list[float]] = {name: [] for name in functions}
    for turn in range(warmup + repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            if turn >= warmup:
                times[name].append(elapsed)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def quartiles(values: list[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the spread reported beside each median)."""
    q1, _, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q3)


# ---- launching real runs ----


def run(command: list[str], timeout: float, checkout: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to completion with the runs' environment (importing ``fedbat_mpi`` from ``checkout``
    when given, e.g. an earlier commit's ``git worktree``); exit with its stderr's end if it fails."""
    env = launch.environment(**({"PYTHONPATH": str(checkout)} if checkout else {}))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=checkout)
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed with status {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def launch_run(
    ranks: int, args: list[str], out: Path, timeout: float = 1800, checkout: Path | None = None
) -> tuple[list[dict], dict]:
    """``mpirun -n RANKS python -m fedbat_mpi.run ARGS --out OUT`` (from ``checkout``, see :func:`run`): its
    ``metrics.jsonl`` rows, and the cores it used and the cores the rest of the machine used meanwhile
    (start-up included)."""
    command = launch.command(ranks, [*args, "--out", str(out)])
    own, busy, start = children_cpu_seconds(), busy_cpu_seconds(), time.perf_counter()
    run(command, timeout, checkout)
    wall, own = time.perf_counter() - start, children_cpu_seconds() - own
    after = busy_cpu_seconds()
    usage = {
        "wall_s": wall,
        "cpu_s": own,
        "cores_used": own / wall,
        "other_cores_busy": None if busy is None or after is None else max(0.0, (after - busy - own) / wall),
    }
    return launch.metrics(out), usage
