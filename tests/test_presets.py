"""Every paper preset runs end to end, on small files written here in each data set's official format
(the real files are too large to ship; Fashion-MNIST's are used when the Debian package is there)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedbat_mpi.config import PRESETS

from .test_data import DEBIAN_DATASETS, cifar_arrays, svhn_matrices, write_cifar_bin, write_fmnist, write_mat

PAPER_PRESETS = [name for name in PRESETS if name != "embedded"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    if (DEBIAN_DATASETS / "fashion-mnist").is_dir():
        shutil.copytree(DEBIAN_DATASETS / "fashion-mnist", root / "fashion-mnist")
    else:
        write_fmnist(root, 3000, 200, gz=True)
    (root / "svhn").mkdir()
    for split, n in (("train", 3000), ("test", 200)):
        write_mat(root / "svhn" / f"{split}_32x32.mat", svhn_matrices(n, "<", y_as_uint8=False)[2])
    for folder, classes, files in (("cifar-10-batches-bin", 10, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
                                   ("cifar-100-binary", 100, ["train", "test"])):  # fmt: skip
        (root / folder).mkdir()
        for name in files:
            # CIFAR-100's dir:0.1 needs enough samples for every client to get 10 (it redraws until then).
            size = {"test_batch": 200, "test": 200, "train": 10_000}.get(name, 1500)
            images, labels = cifar_arrays(size, classes)
            write_cifar_bin(root / folder / f"{name}.bin", images, [labels] if classes == 10 else [labels // 20, labels])
    return root


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_every_paper_preset_runs(preset, data_dir, tmp_path):
    # The preset as given, for one round of one local epoch with 2 clients.
    args = ["--preset", preset, "--data-dir", str(data_dir), "--rounds", "1", "--local-epochs", "1",
            "--clients-per-round", "2", "--out", str(tmp_path), "--eval-batch-size", "1000"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.run", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    config = (tmp_path / "config.yaml").read_text()
    dataset, partition = preset.split("-", 1)
    assert f"dataset: {dataset}" in config and "num_clients: 100" in config and "batch_size: 64" in config
    assert "round    1/1" in done.stdout
