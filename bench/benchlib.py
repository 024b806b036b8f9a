"""What every benchmark in ``bench/`` shares: the machine record, timing, tables, JSON, launching runs.

The benchmarks are scripts (``python bench/NAME.py``); this module sits beside them and is imported as
``benchlib``. Nothing here is part of the package: it only drives ``fedbat_mpi``'s public pieces.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


def write_json(
    path: str | Path, benchmark: str, command: list[str], settings: dict, results: list[dict], **extra
) -> Path:
    """Write one benchmark's results with the machine and command that produced them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": benchmark,
        "command": " ".join(command),
        "machine": machine(),
        "settings": settings,
        "results": results,
        **extra,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """A plain-text table: ``columns`` are (key, header, format spec) triples."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([_cell(row.get(key), spec) for key, _, spec in columns])
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


def mpirun_path() -> str:
    """The ``mpirun`` beside this Python (the venv's MPICH wheel), else the one on PATH."""
    beside = Path(sys.executable).with_name("mpirun")
    found = str(beside) if beside.exists() else shutil.which("mpirun")
    if found is None:
        sys.exit("bench: no mpirun beside this python or on PATH (see README, MPI)")
    return found


def environment() -> dict[str, str]:
    """One OpenMP thread per rank, as the runs themselves use (``--threads 1``)."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def launch_run(ranks: int, args: list[str], out: Path, timeout: float = 1800) -> tuple[list[dict], dict]:
    """``mpirun -n RANKS python -m fedbat_mpi.run ARGS --out OUT``: its ``metrics.jsonl`` rows, and the
    cores it used and the cores the rest of the machine used meanwhile (start-up included)."""
    command = [
        mpirun_path(),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "fedbat_mpi.run",
        *args,
        "--out",
        str(out),
    ]
    own, busy, start = children_cpu_seconds(), busy_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment())
    wall, own = time.perf_counter() - start, children_cpu_seconds() - own
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed with status {done.returncode}:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    after = busy_cpu_seconds()
    usage = {
        "wall_s": wall,
        "cpu_s": own,
        "cores_used": own / wall,
        "other_cores_busy": None if busy is None or after is None else max(0.0, (after - busy - own) / wall),
    }
    return rows, usage


# ---- payloads like the clients' ----


def model_layout(model: str, num_classes: int = 10):
    """The :class:`ModelLayout` of a freshly built model (the sizes a payload of that model has)."""
    from fedbat_mpi.layout import ModelLayout  # noqa: PLC0415
    from fedbat_mpi.models import binarized_names, build_model  # noqa: PLC0415

    net = build_model(model, num_classes)
    return ModelLayout(net, binarized_names(net)), net


def make_payload(layout, client_id: int, kind=None):
    """A realistic client payload, a function of the client id: random signs (half positive), step
    sizes in FedBAT's clamp range [5e-4, 5e-2], N(0, 1) BatchNorm tensors, a weight of 1..19 batches.
    ``kind`` FLOAT32 gives FedAvg's N(0, 0.01) float32 update instead of signs."""
    from fedbat_mpi import codec  # noqa: PLC0415

    kind = codec.BodyKind.SIGNS if kind is None else kind
    rng = np.random.default_rng(client_id)
    if kind is codec.BodyKind.SIGNS:
        scales = rng.uniform(5e-4, 5e-2, len(layout.binarized)).astype(np.float32)
        # Fair coin signs drawn as packed bytes, eight at once; bits past d are zero, as packbits leaves them.
        body = np.frombuffer(rng.bytes(-(-layout.update_size // 8)), dtype=np.uint8).copy()
        if layout.update_size % 8:
            body[-1] &= (0xFF << (8 - layout.update_size % 8)) & 0xFF
    else:
        scales = np.zeros(0, dtype=np.float32)
        body = rng.normal(0, 1e-2, layout.update_size).astype(np.float32)
    dense = rng.normal(0, 1, layout.dense_size).astype(np.float32)
    weight = float(rng.integers(1, 20))
    return codec.Payload(
        client_id, weight, float(rng.random()), kind, scales, dense, body, layout.update_size
    )


# ---- small data sets in the official file formats (for --dataset svhn / cifar10) ----


def write_fmnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``root/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte``: IDX files (uncompressed)."""
    rng = np.random.default_rng(seed)
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1", rng.integers(0, 10, n, dtype=np.uint8)),
        ):
            header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())


def write_svhn(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``root/svhn/{train,test}_32x32.mat``: MATLAB v5 with X (uint8 32×32×3×N) and y (double, 1..10)."""
    rng = np.random.default_rng(seed)
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.float64)
        header = b"MATLAB 5.0 MAT-file, written by fedbat_mpi bench".ljust(116) + b"\0" * 8
        header += struct.pack("<H", 0x0100) + b"IM"
        body = _mat_matrix("X", x, mx_class=9, mi_type=2, dtype="u1") + _mat_matrix("y", y, 6, 9, "f8")
        (root / "svhn" / f"{split}_32x32.mat").write_bytes(header + body)


def _mat_element(mtype: int, payload: bytes) -> bytes:
    if len(payload) <= 4:  # small data element: size and type share the tag
        return struct.pack("<I", (len(payload) << 16) | mtype) + payload.ljust(4, b"\0")
    return struct.pack("<II", mtype, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _mat_matrix(name: str, array: np.ndarray, mx_class: int, mi_type: int, dtype: str) -> bytes:
    """One miMATRIX element: array flags, dimensions, name, real part (column-major)."""
    flags = _mat_element(6, struct.pack("<II", mx_class, 0))
    dims = _mat_element(5, np.array(array.shape, "<i4").tobytes())
    real = _mat_element(mi_type, array.ravel(order="F").astype("<" + dtype).tobytes())
    return _mat_element(14, flags + dims + _mat_element(1, name.encode()) + real)


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """``root/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``: 1 label byte + 3072 pixels a record."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        (folder / f"{name}.bin").write_bytes(np.hstack([labels, pixels]).tobytes())
