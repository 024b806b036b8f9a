"""Client partitions: coverage, determinism, the shape of each scheme, and small clients at scale."""

import hashlib

import numpy as np
import pytest

from fedbat_mpi.data import parse_scheme, partition
from fedbat_mpi.errors import UsageError

BALANCED = np.repeat(np.arange(10), 600)  # 6,000 samples, 600 per class


@pytest.mark.parametrize("scheme", ["iid", "dir:0.3", "labels:0.3"])
def test_every_sample_used_once_and_sorted(scheme: str) -> None:
    shards = partition(BALANCED, 100, scheme, seed=1234)
    assert len(shards) == 100
    assert all(s.dtype == np.int64 and np.all(np.diff(s) > 0) for s in shards)
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(len(BALANCED)))


@pytest.mark.parametrize("scheme", ["iid", "dir:0.3", "labels:0.3"])
def test_deterministic_per_seed(scheme: str) -> None:
    first = partition(BALANCED, 100, scheme, seed=1)
    again = partition(BALANCED, 100, scheme, seed=1)
    other = partition(BALANCED, 100, scheme, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


# sha256 (first 16 hex digits) of indices then offsets of partition(BALANCED, 100, scheme, seed=1234), as
# computed by the per-client implementation before partitions were stored flat: every result depends on them.
UNCHANGED = {"iid": "eb6c03ba5a9f6fce", "dir:0.3": "68bf3122214e7bfc", "labels:0.3": "8c7ff6960aa6d716"}


@pytest.mark.parametrize("scheme", UNCHANGED)
def test_partitions_are_the_ones_earlier_results_used(scheme: str) -> None:
    split = partition(BALANCED, 100, scheme, seed=1234)
    assert hashlib.sha256(split.indices.tobytes() + split.offsets.tobytes()).hexdigest()[:16] == UNCHANGED[scheme]


def test_iid_sizes_balanced() -> None:
    sizes = [len(s) for s in partition(np.zeros(1005, dtype=np.int64), 10, "iid", 0)]
    assert max(sizes) - min(sizes) <= 1


def test_uneven_iid_split_gives_the_extra_samples_to_the_first_clients() -> None:
    labels = np.repeat(np.arange(10), 601)  # 6,010 samples: 10 more than 100 clients x 60
    assert partition(labels, 100, "iid", seed=0).sizes().tolist() == [61] * 10 + [60] * 90


def test_uneven_labels_split_gives_the_extra_sample_of_a_class_to_its_first_holder() -> None:
    labels = np.repeat(np.arange(10), 601)  # 601 samples per class, 30 holders: one holds 21, the others 20
    shards = partition(labels, 100, "labels:0.3", seed=0)
    counts = np.array([np.bincount(labels[s], minlength=10) for s in shards])  # clients x classes
    for cls in range(10):
        holders = np.flatnonzero(counts[:, cls])
        assert counts[holders, cls].tolist() == [21] + [20] * 29, cls


def test_labels_share_assignment() -> None:
    shards = partition(BALANCED, 100, "labels:0.3", seed=1234)
    held = [set(BALANCED[s].tolist()) for s in shards]
    assert all(len(h) == 3 for h in held)
    holders = [sum(cls in h for h in held) for cls in range(10)]
    assert holders == [30] * 10
    assert all(len(s) == 3 * 20 for s in shards)  # 600 samples per class / 30 holders


def test_labels_share_counts_classes_without_float_error() -> None:
    labels = np.repeat(np.arange(100), 10)
    for fraction, classes in ((0.29, 29), (0.57, 57), (0.58, 58)):  # 0.29 x 100 = 28.999... in floats
        shards = partition(labels, 4, f"labels:{fraction}", seed=0)
        assert [len(np.unique(labels[s])) for s in shards] == [classes] * 4


def test_labels_share_hundred_classes() -> None:
    labels = np.repeat(np.arange(100), 50)
    shards = partition(labels, 100, "labels:0.1", seed=1234)
    holders = np.zeros(100, dtype=int)
    for s in shards:
        classes = np.unique(labels[s])
        assert len(classes) == 10
        holders[classes] += 1
    assert np.all(holders == 10)


def test_dirichlet_min_samples_and_skew() -> None:
    shards = partition(BALANCED, 100, "dir:0.3", seed=1234)
    assert min(len(s) for s in shards) >= 10
    dominant = [np.bincount(BALANCED[s], minlength=10).max() / len(s) for s in shards]
    assert np.mean(dominant) > 0.4  # label skew: iid would give about 0.1-0.2


def test_dirichlet_client_holding_exactly_min_samples_is_not_topped_up() -> None:
    """Setting --min-samples to what the smallest client already holds changes nothing."""
    default = partition(BALANCED, 100, "dir:0.3", seed=1234)
    smallest = int(default.sizes().min())
    assert smallest >= 10  # the default --min-samples
    exact = partition(BALANCED, 100, "dir:0.3", seed=1234, min_samples=smallest)
    assert np.array_equal(exact.indices, default.indices) and np.array_equal(exact.offsets, default.offsets)


def test_dirichlet_gives_no_class_to_clients_that_hold_their_share() -> None:
    """docs/FEDBAT.md §2.1: classes are dealt in turn, and a client already holding n/N samples gets no
    share of the next; with the shares unmasked (the NIID-Bench cap dropped), clients would pass it."""
    clients = 10
    shards = partition(BALANCED, clients, "dir:0.1", seed=5, min_samples=1)  # no top-up: every client has one
    counts = np.array([np.bincount(BALANCED[s], minlength=10) for s in shards])  # clients x classes
    cap, held, capped = len(BALANCED) / clients, np.zeros(clients), 0
    for cls in range(10):
        full = held >= cap
        assert np.all(counts[full, cls] == 0), (cls, counts[full, cls])
        capped += int(np.count_nonzero(full))
        held += counts[:, cls]
    assert capped > 0  # the cap was reached before the last class, so the check above was not empty


def test_dirichlet_small_clients_get_min_samples() -> None:
    """20,000 clients of 5 samples: most draws leave clients short, which are topped up from the others."""
    labels = np.random.default_rng(0).integers(0, 10, 100_000)
    split = partition(labels, 20_000, "dir:0.3", seed=3, min_samples=2)
    assert len(split) == 20_000 and split.sizes().min() == 2
    np.testing.assert_array_equal(np.sort(split.indices), np.arange(len(labels)))
    dominant = [np.bincount(labels[split[c]], minlength=10).max() / len(split[c]) for c in range(0, 20_000, 50)]
    assert np.mean(dominant) > 0.5  # still label-skewed: iid clients of 5 give 0.37
    again = partition(labels, 20_000, "dir:0.3", seed=3, min_samples=2)
    assert np.array_equal(split.indices, again.indices) and np.array_equal(split.offsets, again.offsets)


def test_parse_scheme() -> None:
    assert parse_scheme("iid") == ("iid", 0.0)
    assert parse_scheme("dir:0.3") == ("dir", 0.3)
    assert parse_scheme("labels:1") == ("labels", 1.0)


BAD_SCHEMES = ["", "foo", "iid:2", "dir:", "dir:abc", "dir:-1", "dir:inf", "dir:nan", "labels:0", "labels:1.5"]


@pytest.mark.parametrize("scheme", BAD_SCHEMES)
def test_bad_scheme(scheme: str) -> None:
    with pytest.raises(UsageError, match="--partition"):
        partition(BALANCED, 10, scheme, 0)


@pytest.mark.parametrize("clients", [0, -1, len(BALANCED) + 1])
def test_bad_client_count(clients: int) -> None:
    with pytest.raises(UsageError, match="--num-clients"):
        partition(BALANCED, clients, "iid", 0)


def test_impossible_partitions() -> None:
    with pytest.raises(UsageError, match="--partition labels:0.05"):
        partition(BALANCED, 10, "labels:0.05", 0)  # int(0.05 * 10) = 0 classes
    with pytest.raises(UsageError, match="--partition dir:0.3"):
        partition(BALANCED[:50], 10, "dir:0.3", 0)  # fewer than 10 samples per client
    with pytest.raises(UsageError, match="--num-clients"):
        partition(np.array([0, 1, 1, 1, 1, 1]), 4, "labels:0.5", 0)  # class 0's one sample, two holders
    with pytest.raises(UsageError, match=r"needs 61 samples per client \(--min-samples\)"):
        partition(BALANCED, 100, "dir:0.3", 0, min_samples=61)  # 6,000 samples < 61 x 100
    with pytest.raises(UsageError, match="--min-samples: expected a positive integer, got 0"):
        partition(BALANCED, 100, "dir:0.3", 0, min_samples=0)


def test_a_beta_beyond_what_a_draw_can_sum_asks_for_a_smaller_one_and_a_tiny_one_for_a_larger() -> None:
    """numpy's Dirichlet draw divides N gamma(β) draws by their sum, about Nβ: past the largest float
    it is inf and every share 0. A tiny β puts each class on one client, in time one holding its share."""
    expected = r"^--partition dir:1e\+307: BETA is too large for 10 clients: .+; use a smaller BETA"
    with pytest.raises(UsageError, match=expected):
        partition(BALANCED, 10, "dir:1e+307", 0)
    assert len(partition(BALANCED, 10, "dir:1e306", 0)) == 10
    with pytest.raises(UsageError, match=r"^--partition dir:1e-300: .+; use a larger BETA$"):
        partition(np.repeat(np.arange(100), 80), 5, "dir:1e-300", 0, min_samples=1)
