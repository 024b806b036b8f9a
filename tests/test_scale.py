"""Many clients: a run's memory does not grow with the client count (real 2-rank runs)."""

from fedbat_mpi.testing import formats
from fedbat_mpi.testing.launch import launch, metrics

# 18,000 more clients may cost at most this much more on a rank: 1 kB a client would pass it, a copy
# of the model (1.6 MB) a client by far. The two runs share the data and train 4 clients a round.
GROWTH_LIMIT_MIB = 16


def test_peak_memory_does_not_grow_with_the_client_count(tmp_path):
    data = tmp_path / "data"
    formats.write_fmnist(data, 40_000, 100)
    peaks = {}
    for clients in (2_000, 20_000):
        out = tmp_path / str(clients)
        options = ["--dataset", "fmnist", "--data-dir", str(data), "--num-clients", str(clients),
                   "--clients-per-round", "4", "--rounds", "2", "--local-epochs", "1", "--eval-batch-size", "100",
                   "--partition", "dir:0.3", "--min-samples", "1", "--out", str(out)]  # fmt: skip
        done = launch(2, options, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = metrics(out)
        assert [len(row["peak_rss_mib"]) for row in rows] == [2, 2]  # one value per rank, each round
        peaks[clients] = rows[-1]["peak_rss_mib"]
    growth = [large - small for small, large in zip(peaks[2_000], peaks[20_000])]
    assert max(growth) <= GROWTH_LIMIT_MIB, peaks
