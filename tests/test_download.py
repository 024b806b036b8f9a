"""Downloads verified against their MD5 and unpacked safely, fetched here from file:// sources."""

import hashlib
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedbat_mpi.data import load_dataset
from fedbat_mpi.data.download import Source, download, md5_of
from fedbat_mpi.errors import UsageError
from fedbat_mpi.testing.formats import write_cifar10


def _cifar10_archive(tmp_path: Path) -> Path:
    """A small archive in the layout of the official cifar-10-binary.tar.gz."""
    write_cifar10(tmp_path / "staging", 15, 3)
    staging = tmp_path / "staging" / "cifar-10-batches-bin"
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-bin")
    return archive


def _sources(archive: Path, md5: str) -> dict:
    return {"cifar10": (Source(archive.as_uri(), md5, ".", unpack=True),)}


def test_a_verified_archive_is_unpacked_where_the_loader_reads_it(tmp_path):
    archive = _cifar10_archive(tmp_path)
    data_dir = tmp_path / "data"
    [saved] = download("cifar10", str(data_dir), _sources(archive, md5_of(archive)))
    assert saved == data_dir / "cifar-10-binary.tar.gz"
    dataset = load_dataset("cifar10", str(data_dir))
    assert dataset.train_x.shape == (15, 3, 32, 32) and dataset.test_x.shape == (3, 3, 32, 32)
    # A verified copy is not fetched again: the source can be gone.
    archive.unlink()
    assert download("cifar10", str(data_dir), _sources(archive, md5_of(saved))) == [saved]


def test_a_damaged_copy_already_there_is_fetched_again(tmp_path):
    archive = _cifar10_archive(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-binary.tar.gz").write_bytes(b"damaged")  # an earlier download cut short
    [saved] = download("cifar10", str(data_dir), _sources(archive, md5_of(archive)))
    assert md5_of(saved) == md5_of(archive)
    assert load_dataset("cifar10", str(data_dir)).train_x.shape == (15, 3, 32, 32)


def test_a_wrong_checksum_keeps_nothing(tmp_path):
    archive = _cifar10_archive(tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(UsageError, match="has MD5 .* expected 0{32}; nothing was kept"):
        download("cifar10", str(data_dir), _sources(archive, "0" * 32))
    assert list(data_dir.iterdir()) == []


def test_an_archive_escaping_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("../outside.txt")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))
    with pytest.raises(UsageError, match="cannot unpack"):
        download("cifar10", str(tmp_path / "data"), _sources(archive, md5_of(archive)))
    assert not (tmp_path / "outside.txt").exists()


def test_without_the_data_filter_nothing_is_fetched_and_one_line_says_why(tmp_path, monkeypatch):
    archive = _cifar10_archive(tmp_path)
    monkeypatch.delattr(tarfile, "data_filter")  # as in Python before 3.10.12 and 3.11.4
    with pytest.raises(UsageError, match=r"cifar10's archive is unpacked with tarfile's 'data' filter, which this Python"):
        download("cifar10", str(tmp_path / "data"), _sources(archive, md5_of(archive)))
    assert not (tmp_path / "data").exists()


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path):
    archive, blocker = _cifar10_archive(tmp_path), tmp_path / "file"
    blocker.write_text("not a folder\n")
    with pytest.raises(UsageError, match=f"--data-dir: cannot use {re.escape(str(blocker))}"):
        download("cifar10", str(blocker), _sources(archive, md5_of(archive)))
    assert blocker.read_text() == "not a folder\n"


def test_md5_of_a_file_in_blocks(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"0123456789" * 300_000)  # several 1 MiB blocks
    assert md5_of(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_partition_stats_prints_sizes_and_histograms():
    done = subprocess.run(
        [sys.executable, "-m", "fedbat_mpi.data", "partition-stats", "--num-clients", "10", "--partition", "labels:0.3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:-1]]
    assert len(rows) == 10
    histograms = np.array([[int(v) for v in row[2:]] for row in rows])
    assert histograms.shape == (10, 10) and histograms.sum() == 8000
    assert all(np.count_nonzero(h) == 3 for h in histograms)
    assert all(int(row[1]) == h.sum() for row, h in zip(rows, histograms))
    assert "10 clients, 8000 samples" in done.stdout


def test_partition_stats_checks_the_seed_as_a_run_does():
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.data", "partition-stats", "--num-clients", "10",
                           "--seed", "-1"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "fedbat_mpi.data: error: --seed: expected an integer >= 0, got -1\n"


def test_data_command_errors_are_one_line():
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.data", "download", "imagenet", "--data-dir", "/tmp"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
