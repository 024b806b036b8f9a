"""Real runs as a user starts them (``mpirun -n N python -m fedbat_mpi.run ...``) and what they write."""

import json
import os
import subprocess
import sys
from pathlib import Path

from fedbat_mpi.study_driver import find_program

# A small run of the embedded default: 40 clients, 8 per round, 1 local epoch (about 1 s a round).
TINY = ["--num-clients", "40", "--clients-per-round", "8", "--local-epochs", "1", "--rounds", "2",
        "--batch-size", "64", "--eval-batch-size", "1000"]  # fmt: skip
# The metrics that measure the machine (wall-clock times, peak memory): the only ones that differ between
# two runs of one configuration.
MEASURED = ("time_s", "phase_s", "peak_rss_mib")


def program(name: str, hint: str) -> str:
    """The executable ``name`` beside this Python (a virtual environment's), else the one on PATH.

    Raises FileNotFoundError, ending with ``hint`` (how to install it), when there is neither.
    """
    found = find_program(name)
    if found is None:
        raise FileNotFoundError(f"no {name} beside {sys.executable} or on PATH: {hint}")
    return found


def mpirun() -> str:
    """The ``mpirun`` beside this Python (the mpich wheel's, from the ``mpich`` extra), else on PATH."""
    return program("mpirun", "set up MPI first (README, MPI)")


def command(ranks: int | None, args: list[str], script: list[str] | None = None) -> list[str]:
    """The command line of a run on ``ranks`` ranks (plain python when ``ranks`` is None); ``script``
    replaces ``-m fedbat_mpi.run`` (a script path and its leading arguments)."""
    line = [sys.executable, *(script or ["-m", "fedbat_mpi.run"]), *args]
    return [mpirun(), "-n", str(ranks), *line] if ranks is not None else line


def environment(**extra: str) -> dict[str, str]:
    """This process's environment with one OpenMP thread per rank, plus ``extra``."""
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def launch(
    ranks: int | None, args: list[str], timeout: float = 300, script: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run :func:`command` to completion, with :func:`environment` plus ``env``; text stdout and stderr."""
    return subprocess.run(
        command(ranks, args, script), capture_output=True, text=True, timeout=timeout, env=environment(**env)
    )


def metrics(out: str | Path) -> list[dict]:
    """The rows of a run's ``OUT/metrics.jsonl``, one per round."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    """``rows`` without the :data:`MEASURED` times and memory: what runs of one configuration must agree on."""
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]
