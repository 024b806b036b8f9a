"""Federated algorithms, each a client-side rule on the shared engine; looked up by name."""

from ..errors import UsageError
from .base import Algorithm, LocalTask, LocalUpdate
from .fedavg import FedAvg
from .fedbat import FedBAT

ALGORITHMS = ("fedbat", "fedavg")


def make_algorithm(name: str, rho: float, warmup: float) -> Algorithm:
    """The algorithm called ``name`` (``--algorithm``) with its options."""
    if name == "fedbat":
        return FedBAT(rho=rho, warmup=warmup)
    if name == "fedavg":
        return FedAvg()
    raise UsageError(f"--algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}")


__all__ = ["ALGORITHMS", "Algorithm", "FedAvg", "FedBAT", "LocalTask", "LocalUpdate", "make_algorithm"]
