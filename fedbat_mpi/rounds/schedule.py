"""Which clients train in a round, and which rank hosts each: pure functions of (seed, round)."""

import numpy as np

from fedbat_mpi.rng import Stream, numpy_generator


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """The round's clients: ``per_round`` of ``num_clients`` without replacement, sorted by id."""
    generator = numpy_generator(seed, Stream.CLIENT_SAMPLING, round_index)
    return np.sort(generator.choice(num_clients, size=per_round, replace=False))


def clients_of_rank(clients: np.ndarray, num_ranks: int, rank: int) -> np.ndarray:
    """A rank's share of the round's clients: contiguous, balanced blocks in id order."""
    return np.array_split(clients, num_ranks)[rank]
