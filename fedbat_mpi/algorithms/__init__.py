"""Federated algorithms, each a client-side rule on the shared engine; looked up by name."""

from ..errors import UsageError
from .base import Algorithm, LocalTask, LocalUpdate
from .fedavg import FedAvg
from .fedbat import FedBAT
from .signs import EFSignSGD, SignSGD, StochasticSign, ZSign

ALGORITHMS = ("fedbat", "fedavg", "signsgd", "ef-signsgd", "stosign", "zsign")


def make_algorithm(name: str, rho: float, warmup: float, zsign_sigma: float) -> Algorithm:
    """The algorithm called ``name`` (``--algorithm``) with its options."""
    if name == "fedbat":
        return FedBAT(rho=rho, warmup=warmup)
    if name == "zsign":
        return ZSign(sigma=zsign_sigma)
    simple = {"fedavg": FedAvg, "signsgd": SignSGD, "ef-signsgd": EFSignSGD, "stosign": StochasticSign}
    if name in simple:
        return simple[name]()
    raise UsageError(f"--algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}")


__all__ = ["ALGORITHMS", "Algorithm", "LocalTask", "LocalUpdate", "make_algorithm"]
