"""End to end through ``mpirun``: same model on any number of ranks, bytes on the wire, failures.

Bad input (exit 2, one line) is tested option by option in test_bad_input.py."""

import re
import time
from dataclasses import fields
from pathlib import Path

import pytest

from fedbat_mpi.client.algorithms.base import flag
from fedbat_mpi.config import Config
from fedbat_mpi.testing.launch import TINY, launch, metrics, without_timings


@pytest.fixture(scope="module")
def fedbat_runs(tmp_path_factory) -> dict:
    """The tiny FedBAT run on 1 rank (no mpirun), 2, 4 and 8 ranks."""
    runs = {}
    for ranks in (None, 2, 4, 8):
        out = tmp_path_factory.mktemp(f"fedbat-{ranks}")
        done = launch(ranks, [*TINY, "--out", str(out)])
        assert done.returncode == 0, done.stderr
        runs[ranks or 1] = (out, done)
    return runs


def test_same_model_sha256_for_1_2_4_and_8_ranks(fedbat_runs):
    rows = {ranks: metrics(out) for ranks, (out, _) in fedbat_runs.items()}
    assert len(rows[1]) == 2
    for ranks in (2, 4, 8):
        assert without_timings(rows[ranks]) == without_timings(rows[1])


def test_metrics_rows_have_every_field_and_plausible_values(fedbat_runs):
    out, done = fedbat_runs[2]
    rows = metrics(out)
    fields = {"round", "test_acc", "test_loss", "train_loss", "uplink_bytes", "downlink_bytes", "time_s", "phase_s", "model_sha256"}
    global_model_bytes = 4 * (389_920 + 4 * (32 + 64 + 128 + 256) + 4)  # CNN4-MNIST, its 4 batch counters too
    for row in rows:
        assert fields <= row.keys()
        assert row["downlink_bytes"] == len(row["clients"]) * global_model_bytes
        assert set(row["phase_s"]) == {"train", "pack", "gather", "aggregate", "broadcast", "eval"}
        assert 0 <= row["test_acc"] <= 1 and len(row["model_sha256"]) == 64
    # What a run without per-client state writes: no client_state.h5 (nor anything else unlisted).
    written = {path.name for path in out.iterdir()}
    assert written == {"config.yaml", "metrics.jsonl", "checkpoint.h5", "run.lock"}, written
    assert "float32 FedAvg would have sent" in done.stdout and done.stdout.count("round ") >= 2


def test_uplink_is_one_bit_per_weight_and_fedavg_sends_25x_more(fedbat_runs, tmp_path):
    fedbat_row = metrics(fedbat_runs[2][0])[0]
    done = launch(2, [*TINY, "--rounds", "1", "--algorithm", "fedavg", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    fedavg_row = metrics(tmp_path)[0]
    per_client = fedbat_row["uplink_bytes"] / 8
    d, tensors, batchnorm = 389_920, 5, 4 * 4 * (32 + 64 + 128 + 256)  # CNN4-MNIST: BN weight, bias, mean, var
    ideal = d / 8 + 4 * tensors + batchnorm
    assert ideal <= per_client <= 1.03 * ideal
    assert fedavg_row["uplink_bytes"] >= 25 * fedbat_row["uplink_bytes"]


FAIL_ON_RANK = [str(Path(__file__).with_name("fail_on_rank.py"))]


def test_a_failure_on_one_rank_ends_every_rank(tmp_path):
    start = time.monotonic()
    done = launch(3, [*TINY, "--out", str(tmp_path)], timeout=120, script=FAIL_ON_RANK, FAIL_RANK="2")
    assert done.returncode != 0
    assert "injected failure on rank 2" in done.stderr
    assert time.monotonic() - start < 60


def test_bad_input_seen_by_one_rank_alone_is_one_line_from_that_rank_and_every_rank_exits_2(tmp_path):
    done = launch(3, [*TINY, "--out", str(tmp_path / "run")], timeout=120, script=FAIL_ON_RANK, FAIL_RANK="1",
                  FAIL_AT="setup")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "fedbat_mpi: error (on rank 1): --data-dir: injected: not found on rank 1's node\n"
    assert not (tmp_path / "run").exists()


def test_help_explains_every_option_and_shows_its_default():
    done = launch(None, ["--help"], timeout=60)
    assert done.returncode == 0
    assert "--preset" in done.stdout and "--config" in done.stdout and "--resume" in done.stdout
    described = re.findall(r"^  (--[a-z-]+) [A-Z_]+\s+(.*?)(?=^  --|\Z)", done.stdout, re.MULTILINE | re.DOTALL)
    said = {option: " ".join(text.split()) for option, text in described}
    assert set(said) >= {flag(field.name) for field in fields(Config)}
    for field in fields(Config):
        text = said[flag(field.name)]
        assert re.fullmatch(r".+ \(default: .+\)", text), f"{flag(field.name)} says only: {text}"
    assert said["--algorithm"].endswith("(default: fedbat)") and "ef-signsgd" in said["--algorithm"]
