"""Who trains in a round: a uniform sample without replacement, new each round, the same on any rank
count, and the one a real run reports in every round."""

import numpy as np

from fedbat_mpi.rounds.schedule import clients_of_rank, sample_clients
from fedbat_mpi.testing.launch import TINY, launch, metrics

NUM_CLIENTS, PER_ROUND, ROUNDS = 20, 5, 2000


def test_rounds_sample_uniformly_without_replacement_and_anew():
    rounds = np.stack([sample_clients(0, r, NUM_CLIENTS, PER_ROUND) for r in range(1, ROUNDS + 1)])
    assert all(len(set(clients)) == PER_ROUND for clients in rounds.tolist())  # without replacement
    assert np.all(np.diff(rounds, axis=1) > 0) and rounds.min() >= 0 and rounds.max() < NUM_CLIENTS  # sorted ids
    assert len({tuple(clients) for clients in rounds.tolist()}) > 0.9 * ROUNDS  # a new draw each round
    # Each client in a round with probability m/N: counts binomial(R, m/N), mean 500, sd 19.4.
    counts = np.bincount(rounds.ravel(), minlength=NUM_CLIENTS)
    expected = ROUNDS * PER_ROUND / NUM_CLIENTS
    sd = np.sqrt(ROUNDS * PER_ROUND / NUM_CLIENTS * (1 - PER_ROUND / NUM_CLIENTS))
    assert np.all(np.abs(counts - expected) < 5 * sd), counts
    # Pairs as often as independence of the clients' draws says: P(both) = m(m-1) / (N(N-1)).
    together = np.zeros((NUM_CLIENTS, NUM_CLIENTS))
    for clients in rounds:
        together[np.ix_(clients, clients)] += 1
    pairs = together[~np.eye(NUM_CLIENTS, dtype=bool)]
    expected_pairs = ROUNDS * PER_ROUND * (PER_ROUND - 1) / (NUM_CLIENTS * (NUM_CLIENTS - 1))
    assert np.all(np.abs(pairs - expected_pairs) < 5 * np.sqrt(expected_pairs)), pairs.min()


def test_the_sample_depends_on_the_seed_and_round_only():
    assert np.array_equal(sample_clients(3, 7, NUM_CLIENTS, PER_ROUND), sample_clients(3, 7, NUM_CLIENTS, PER_ROUND))
    assert not np.array_equal(sample_clients(3, 7, 1000, 10), sample_clients(4, 7, 1000, 10))


def test_the_samples_are_pinned_across_versions():
    """A run resumed by a newer version must train the clients the older one would have (as
    test_partition.py pins the partitions): a change here breaks every resume of an older checkpoint."""
    assert sample_clients(0, 1, 40, 8).tolist() == [9, 13, 14, 17, 20, 21, 29, 34]
    assert sample_clients(0, 2, 40, 8).tolist() == [1, 5, 7, 14, 21, 25, 32, 39]
    assert sample_clients(7, 100, 100_000, 5).tolist() == [13048, 19751, 36652, 38733, 81305]


def test_every_rank_count_splits_the_round_into_its_blocks():
    clients = sample_clients(0, 1, NUM_CLIENTS, 7)
    for ranks in (1, 2, 3, 7):
        blocks = [clients_of_rank(clients, ranks, rank) for rank in range(ranks)]
        assert np.array_equal(np.concatenate(blocks), clients)
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_a_run_trains_each_rounds_sample(tmp_path):
    done = launch(2, [*TINY, "--rounds", "4", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    rows = metrics(tmp_path)
    assert [row["clients"] for row in rows] == [sample_clients(0, r, 40, 8).tolist() for r in range(1, 5)]  # TINY: 8 of 40
    assert len({tuple(row["clients"]) for row in rows}) == 4
