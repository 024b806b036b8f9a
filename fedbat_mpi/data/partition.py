"""Split a data set's samples among clients: IID, Dirichlet label skew, or a fixed share of the labels.

The schemes follow docs/FEDBAT.md §2.1 and are deterministic functions of (labels, num_clients, scheme,
seed, min_samples). Each is computed with whole-array numpy steps (a loop over classes, none over
clients) and stored flat (:class:`Partition`), so that 100,000+ clients take seconds and a few bytes
per sample, not a Python object per client.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fedbat_mpi.errors import UsageError

_PARTITION_STREAM = 0x70617274  # "part": keeps the partition's random stream apart from other seeded uses
DIRICHLET_MIN_SAMPLES = 10  # the default of --min-samples
_DIRICHLET_MAX_TRIES = 1000
# A draw that leaves this many clients short is not redrawn but topped up: a redraw would leave none
# short with a chance of about e^-30 (the count of short clients is close to Poisson).
_DIRICHLET_HOPELESS = 30


@dataclass(frozen=True, eq=False)
class Partition:
    """Each client's sorted sample indices, stored flat: client c holds ``indices[offsets[c]:offsets[c + 1]]``."""

    indices: np.ndarray  # int64: client 0's indices, then client 1's, ...
    offsets: np.ndarray  # int64, num_clients + 1 entries

    @classmethod
    def of_owners(cls, owners: np.ndarray, num_clients: int) -> "Partition":
        """The partition that gives sample i to client ``owners[i]`` (``num_clients``: to no client)."""
        sizes = np.bincount(owners, minlength=num_clients + 1)[:num_clients]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        order = np.argsort(owners, kind="stable")  # by client, each client's samples in index order
        return cls(order[: offsets[-1]].astype(np.int64), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, client: int) -> np.ndarray:
        return self.indices[self.offsets[client] : self.offsets[client + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[client] for client in range(len(self)))

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def parse_scheme(scheme: str) -> tuple[str, float]:
    """('iid', 0.0), ('dir', BETA) or ('labels', FRACTION) from a --partition string."""
    kind, _, value = scheme.partition(":")
    if kind == "iid" and not value:
        return kind, 0.0
    if kind in ("dir", "labels"):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if kind == "dir" and 0 < number < float("inf"):
            return kind, number
        if kind == "labels" and 0 < number <= 1:
            return kind, number
    raise UsageError(
        f"--partition: expected iid, dir:BETA (BETA > 0) or labels:FRACTION (0 < FRACTION <= 1), got {scheme!r}"
    )


def partition(
    labels: np.ndarray, num_clients: int, scheme: str, seed: int, min_samples: int = DIRICHLET_MIN_SAMPLES
) -> Partition:
    """Sorted sample indices for each of `num_clients` clients; each sample goes to at most one client.

    Every sample is used, except that `labels:` drops classes no client holds (when c·N < #classes).
    `min_samples`: under `dir:`, the fewest samples a client may hold.
    """
    kind, value = parse_scheme(scheme)
    if not 1 <= num_clients <= len(labels):
        raise UsageError(f"--num-clients: expected 1..{len(labels)} (the training samples), got {num_clients}")
    if min_samples < 1:
        raise UsageError(f"--min-samples: expected a positive integer, got {min_samples}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PARTITION_STREAM]))
    if kind == "iid":
        owners = np.empty(len(labels), dtype=np.int64)
        owners[rng.permutation(len(labels))] = _owners_of_split(np.arange(num_clients), len(labels))
    elif kind == "dir":
        owners = _dirichlet(labels, num_clients, value, min_samples, rng, scheme)
    else:
        owners = _label_share(labels, num_clients, value, rng, scheme)
    return Partition.of_owners(owners, num_clients)


def _owners_of_split(clients: np.ndarray, length: int) -> np.ndarray:
    """``np.array_split`` of ``length`` items among ``clients``: the client of each position."""
    smaller, larger = divmod(length, len(clients))
    return np.repeat(clients, smaller + (np.arange(len(clients)) < larger))


def _dirichlet(
    labels: np.ndarray, num_clients: int, beta: float, min_samples: int, rng: np.random.Generator, scheme: str
) -> np.ndarray:
    """Per class, Dir(β) shares over the clients not yet holding n/N samples; redraw until all hold
    ≥ ``min_samples``, or, when redraws cannot get there, top up the clients left short."""
    if math.isinf(2 * beta * num_clients):  # numpy divides N gamma(β) draws by their sum, about Nβ
        raise UsageError(
            f"--partition {scheme}: BETA is too large for {num_clients} clients: a Dirichlet draw's sum "
            "(about BETA x clients) overflows a float; use a smaller BETA (a large one is close to iid already)"
        )
    if len(labels) < min_samples * num_clients:
        raise UsageError(
            f"--partition {scheme}: needs {min_samples} samples per client (--min-samples), "
            f"but {len(labels)} samples < {min_samples} x {num_clients} clients"
        )
    classes = [np.flatnonzero(labels == cls) for cls in np.unique(labels)]
    drawn = None
    for _ in range(_DIRICHLET_MAX_TRIES):
        owners = _dirichlet_draw(classes, len(labels), num_clients, beta, rng)
        if owners is None:
            continue
        drawn = owners
        short = np.count_nonzero(np.bincount(owners, minlength=num_clients) < min_samples)
        if short == 0:
            return owners
        if short >= _DIRICHLET_HOPELESS:
            break
    if drawn is None:
        raise UsageError(  # a tiny β puts each class on one client, in time on one already holding n/N
            f"--partition {scheme}: every draw put a class wholly on clients already holding their share; "
            "use a larger BETA"
        )
    return _top_up(drawn, num_clients, min_samples, rng)


def _dirichlet_draw(
    classes: list[np.ndarray], num_samples: int, num_clients: int, beta: float, rng: np.random.Generator
) -> np.ndarray | None:
    """One draw of the Dirichlet split (each sample's client), or None when the shares degenerate
    (all-zero after masking)."""
    owners = np.empty(num_samples, dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    cap = num_samples / num_clients
    clients = np.arange(num_clients)
    for members in classes:
        indices = rng.permutation(members)
        shares = rng.dirichlet(np.full(num_clients, beta)) * (sizes < cap)
        if shares.sum() <= 0:
            return None
        cuts = (np.cumsum(shares / shares.sum()) * len(indices)).astype(np.int64)[:-1]
        counts = np.diff(cuts, prepend=0, append=len(indices))
        owners[indices] = np.repeat(clients, counts)
        sizes += counts
    return owners


def _top_up(owners: np.ndarray, num_clients: int, min_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Give each client holding fewer than ``min_samples`` the samples it lacks, taken at random from
    what the other clients hold beyond ``min_samples`` (so that none of them drops below it)."""
    sizes = np.bincount(owners, minlength=num_clients)
    lacking = np.maximum(min_samples - sizes, 0)
    spare = np.maximum(sizes - min_samples, 0)
    keys = rng.random(len(owners))
    by_client = np.argsort(owners + keys / 2, kind="stable")  # each client's samples in a random order
    rank = np.arange(len(owners)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    movable = by_client[rank < spare[owners[by_client]]]
    count = int(lacking.sum())
    first = np.argpartition(keys[movable], count - 1)[:count] if count else np.zeros(0, dtype=np.int64)
    taken = movable[first[np.argsort(keys[movable[first]], kind="stable")]]  # the `count` lowest keys
    owners = owners.copy()
    owners[taken] = np.repeat(np.arange(num_clients), lacking)
    return owners


def _label_share(
    labels: np.ndarray, num_clients: int, fraction: float, rng: np.random.Generator, scheme: str
) -> np.ndarray:
    """c = int(fraction·#classes) classes per client (0.29 x 100 is 29, not float's 28.999...), the c
    least used so far (ties: lowest class id).

    Taking the least used classes in turn is a cycle through the class list: client i holds classes
    (i·c + j) mod #classes for j < c.
    """
    classes = np.unique(labels)
    per_client = int(fraction * len(classes) + 1e-9)
    if per_client < 1:
        raise UsageError(f"--partition {scheme}: gives int({fraction} x {len(classes)} classes) = 0 classes per client")
    held = (np.arange(num_clients)[:, None] * per_client + np.arange(per_client)).ravel() % len(classes)
    holders = np.repeat(np.arange(num_clients), per_client)[np.argsort(held, kind="stable")]
    bounds = np.searchsorted(np.sort(held), np.arange(len(classes) + 1))
    owners = np.full(len(labels), num_clients, dtype=np.int64)
    for k, cls in enumerate(classes):
        if bounds[k] == bounds[k + 1]:
            continue
        indices = rng.permutation(np.flatnonzero(labels == cls))
        owners[indices] = _owners_of_split(holders[bounds[k] : bounds[k + 1]], len(indices))
    if np.bincount(owners, minlength=num_clients + 1)[:num_clients].min() == 0:
        raise UsageError(f"--num-clients: {num_clients} clients under --partition {scheme} leave a client empty")
    return owners
