"""Launching real runs for end-to-end tests: ``mpirun -n N python -m fedbat_mpi.run ...``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# A small run of the embedded default: 40 clients, 8 per round, 1 local epoch (about 1 s a round).
TINY = ["--num-clients", "40", "--clients-per-round", "8", "--local-epochs", "1", "--rounds", "2",
        "--batch-size", "64", "--eval-batch-size", "1000"]  # fmt: skip


def mpirun() -> str:
    beside_python = Path(sys.executable).with_name("mpirun")
    found = str(beside_python) if beside_python.exists() else shutil.which("mpirun")
    if found is None:
        pytest.fail("no mpirun beside the test's python or on PATH: set up MPI first (README)")
    return found


def command(ranks: int | None, args: list[str], script: list[str] | None = None) -> list[str]:
    """The command line of a run on ``ranks`` ranks (plain python when ``ranks`` is None)."""
    line = [sys.executable, *(script or ["-m", "fedbat_mpi.run"]), *args]
    return [mpirun(), "-n", str(ranks), *line] if ranks is not None else line


def environment(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def launch(ranks: int | None, args: list[str], timeout: float = 300, script: list[str] | None = None, **env: str):
    """Run to completion and return the CompletedProcess (text stdout and stderr)."""
    return subprocess.run(
        command(ranks, args, script), capture_output=True, text=True, timeout=timeout, env=environment(**env)
    )


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("time_s", "phase_s")} for row in rows]
