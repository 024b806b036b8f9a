"""Random streams keyed by (seed, stream, round, client id), never by MPI rank.

Every random draw in a run comes from a generator made here, so a client's training is the same
whichever rank hosts it, and results do not depend on the number of ranks.
"""

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """What a generator is used for; part of its key so that streams never overlap."""

    MODEL_INIT = 1
    CLIENT_SAMPLING = 2
    DATA_ORDER = 3
    AUGMENTATION = 4
    BINARIZER = 5
    UPLOAD = 6


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, stream, *keys)``."""
    state = np.random.SeedSequence([seed, int(stream), *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def numpy_generator(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """A numpy generator for ``(seed, stream, *keys)``."""
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def torch_generator(seed: int, stream: Stream, *keys: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` for ``(seed, stream, *keys)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, stream, *keys))
    return generator
