"""Kept for the tests that still import ``tests.launch``: the names now live in fedbat_mpi.testing.launch."""

from fedbat_mpi.testing.launch import TINY, command, environment, launch, metrics, mpirun, without_timings

__all__ = ["TINY", "command", "environment", "launch", "metrics", "mpirun", "without_timings"]
