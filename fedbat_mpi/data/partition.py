"""Split a data set's samples among clients: IID, Dirichlet label skew, or a fixed share of the labels.

The schemes follow FEDBAT.md §2.1 and are deterministic functions of (labels, num_clients, scheme, seed).
"""

import numpy as np

from fedbat_mpi.errors import UsageError

_PARTITION_STREAM = 0x70617274  # "part": keeps the partition's random stream apart from other seeded uses
_DIRICHLET_MIN_SAMPLES = 10
_DIRICHLET_MAX_TRIES = 1000


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


def partition(labels: np.ndarray, num_clients: int, scheme: str, seed: int) -> list[np.ndarray]:
    """Sorted sample indices for each of `num_clients` clients; each sample goes to at most one client.

    Every sample is used, except that `labels:` drops classes no client holds (when c·N < #classes).
    """
    kind, value = parse_scheme(scheme)
    if not 1 <= num_clients <= len(labels):
        raise UsageError(f"--num-clients: expected 1..{len(labels)} (the training samples), got {num_clients}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PARTITION_STREAM]))
    if kind == "iid":
        shards = np.array_split(rng.permutation(len(labels)), num_clients)
    elif kind == "dir":
        shards = _dirichlet(labels, num_clients, value, rng, scheme)
    else:
        shards = _label_share(labels, num_clients, value, rng, scheme)
    return [np.sort(shard).astype(np.int64) for shard in shards]


def _dirichlet(
    labels: np.ndarray, num_clients: int, beta: float, rng: np.random.Generator, scheme: str
) -> list[np.ndarray]:
    """Per class, Dir(β) shares over the clients not yet holding n/N samples; redraw until all hold ≥ 10."""
    if len(labels) < _DIRICHLET_MIN_SAMPLES * num_clients:
        raise UsageError(
            f"--partition {scheme}: needs {_DIRICHLET_MIN_SAMPLES} samples per client, "
            f"but {len(labels)} samples < {_DIRICHLET_MIN_SAMPLES} x {num_clients} clients"
        )
    for _ in range(_DIRICHLET_MAX_TRIES):
        shards = _dirichlet_draw(labels, num_clients, beta, rng)
        if shards is not None and min(len(s) for s in shards) >= _DIRICHLET_MIN_SAMPLES:
            return shards
    raise UsageError(
        f"--partition {scheme}: no draw in {_DIRICHLET_MAX_TRIES} gave every one of {num_clients} clients "
        f"{_DIRICHLET_MIN_SAMPLES} samples; use a larger BETA or fewer --num-clients"
    )


def _dirichlet_draw(
    labels: np.ndarray, num_clients: int, beta: float, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """One draw of the Dirichlet split, or None when the shares degenerate (all-zero after masking)."""
    shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    cap = len(labels) / num_clients
    for cls in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_clients, beta)) * (sizes < cap)
        if shares.sum() <= 0:
            return None
        cuts = (np.cumsum(shares / shares.sum()) * len(indices)).astype(np.int64)[:-1]
        for client, part in enumerate(np.split(indices, cuts)):
            shards[client].append(part)
            sizes[client] += len(part)
    return [np.concatenate(parts) for parts in shards]


def _label_share(
    labels: np.ndarray, num_clients: int, fraction: float, rng: np.random.Generator, scheme: str
) -> list[np.ndarray]:
    """c = int(fraction·#classes) classes per client, the c least used so far (ties: lowest class id)."""
    classes = np.unique(labels)
    per_client = int(fraction * len(classes))
    if per_client < 1:
        raise UsageError(f"--partition {scheme}: gives int({fraction} x {len(classes)} classes) = 0 classes per client")
    holders: list[list[int]] = [[] for _ in classes]
    usage = np.zeros(len(classes), dtype=np.int64)
    for client in range(num_clients):
        chosen = np.argsort(usage, kind="stable")[:per_client]
        usage[chosen] += 1
        for k in chosen:
            holders[k].append(client)
    shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for k, cls in enumerate(classes):
        if not holders[k]:
            continue
        indices = rng.permutation(np.flatnonzero(labels == cls))
        for client, part in zip(holders[k], np.array_split(indices, len(holders[k]))):
            shards[client].append(part)
    result = [np.concatenate(parts) for parts in shards]
    if min(len(s) for s in result) == 0:
        raise UsageError(f"--num-clients: {num_clients} clients under --partition {scheme} leave a client empty")
    return result
