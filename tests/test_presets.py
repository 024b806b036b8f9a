"""Every paper preset runs end to end, on small files written here in each data set's official format
(the real files are too large to ship; Fashion-MNIST's are used when the Debian package is there)."""

import shutil
from pathlib import Path

import pytest
import yaml

from fedbat_mpi.config import PRESETS, Config, parse_command_line
from fedbat_mpi.testing.formats import write_cifar10, write_cifar100, write_fmnist, write_svhn
from fedbat_mpi.testing.launch import launch

from .test_data import DEBIAN_DATASETS

PAPER_PRESETS = [name for name in PRESETS if name != "embedded"]


def test_options_come_from_the_defaults_then_the_preset_then_the_config_file_then_the_command_line(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("rounds: 3\nlocal-epochs: 2\n")
    invocation = parse_command_line(["--preset", "fmnist-iid", "--config", str(config_file), "--rounds", "7"])
    config = Config(**invocation.options)
    assert (config.rounds, config.local_epochs, config.num_clients) == (7, 2, PRESETS["fmnist-iid"]["num_clients"])
    assert config.eval_batch_size == Config().eval_batch_size  # set by none of them


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    if (DEBIAN_DATASETS / "fashion-mnist").is_dir():
        shutil.copytree(DEBIAN_DATASETS / "fashion-mnist", root / "fashion-mnist")
    else:
        write_fmnist(root, 3000, 200, gz=True)
    write_svhn(root, 3000, 200)
    write_cifar10(root, 7500, 200)
    write_cifar100(root, 10_000, 200)  # dir:0.1 needs enough samples for every client to get 10 (it redraws)
    return root


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_every_paper_preset_runs(preset, data_dir, tmp_path):
    # The preset as given, for one round of one local epoch with 2 clients.
    args = ["--preset", preset, "--data-dir", str(data_dir), "--rounds", "1", "--local-epochs", "1",
            "--clients-per-round", "2", "--out", str(tmp_path), "--eval-batch-size", "1000"]  # fmt: skip
    done = launch(None, args, timeout=600)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    given = {"rounds": 1, "local_epochs": 1, "clients_per_round": 2}
    assert {key: config[key] for key in PRESETS[preset]} == {k: given.get(k, v) for k, v in PRESETS[preset].items()}
    assert "round    1/1" in done.stdout


# docs/FEDBAT.md §2.1, written out: (data set, rounds, the partitions' suffixes and schemes).
PAPER = [
    ("fmnist", 100, {"iid": "iid", "dir0.3": "dir:0.3", "labels0.3": "labels:0.3"}),
    ("svhn", 100, {"iid": "iid", "dir0.3": "dir:0.3", "labels0.3": "labels:0.3"}),
    ("cifar10", 200, {"iid": "iid", "dir0.3": "dir:0.3", "labels0.3": "labels:0.3"}),
    ("cifar100", 200, {"iid": "iid", "dir0.1": "dir:0.1", "labels0.1": "labels:0.1"}),
]
EVERY_SETTING = dict(num_clients=100, clients_per_round=10, local_epochs=10, batch_size=64, lr=0.1, rho=6.0,
                     warmup=0.5, weighting="batches")  # fmt: skip


def test_the_presets_are_the_papers_settings():
    expected = {f"{dataset}-{suffix}": dict(EVERY_SETTING, dataset=dataset, rounds=rounds, partition=scheme)
                for dataset, rounds, schemes in PAPER for suffix, scheme in schemes.items()}  # fmt: skip
    assert set(PAPER_PRESETS) == set(expected)
    for name, settings in expected.items():
        assert PRESETS[name] == settings, name
