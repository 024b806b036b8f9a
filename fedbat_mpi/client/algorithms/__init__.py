"""Federated algorithms, each one file that registers itself (``base.register``) with its options.

Adding an algorithm: a module here with an ``Algorithm`` subclass decorated with ``@register``,
imported below; its ``hyperparameters`` become command-line options, configuration fields, ``--help``
lines, start-up checks and resume rules.
"""

from typing import Any

from fedbat_mpi.errors import UsageError

# Each module registers its algorithms, in this order: the order of --help and of error messages.
# isort: off
from . import fedbat, fedavg, signs, signs_classical  # noqa: F401
# isort: on
from .base import REGISTRY, Algorithm, HyperParameter, LocalTask, LocalUpdate, on_host

ALGORITHMS = tuple(REGISTRY)


def hyperparameters() -> tuple[HyperParameter, ...]:
    """Every registered algorithm's options, each once, in registration order."""
    declared: dict[str, HyperParameter] = {}
    for cls in REGISTRY.values():
        declared.update({option.name: option for option in cls.hyperparameters})
    return tuple(declared.values())


def options_of_other_algorithms(name: str) -> frozenset[str]:
    """The declared options that algorithm ``name`` does not use (all of them for an unknown name)."""
    own = {option.name for option in REGISTRY[name].hyperparameters} if name in REGISTRY else set()
    return frozenset(option.name for option in hyperparameters() if option.name not in own)


def make_algorithm(name: str, **options: Any) -> Algorithm:
    """The algorithm called ``name`` (``--algorithm``) with its options (others are ignored)."""
    if name not in REGISTRY:
        raise UsageError(f"--algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}")
    cls = REGISTRY[name]
    return cls(**{option.name: options[option.name] for option in cls.hyperparameters if option.name in options})


__all__ = ["ALGORITHMS", "Algorithm", "HyperParameter", "LocalTask", "LocalUpdate", "hyperparameters", "make_algorithm",
           "on_host"]
