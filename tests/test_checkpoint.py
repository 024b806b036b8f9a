"""HDF5 checkpoints: contents, atomic replacement, refusals, and the inspector."""

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedbat_mpi.checkpoint import describe
from fedbat_mpi.client.algorithms import options_of_other_algorithms
from fedbat_mpi.config import RESUMABLE_CHANGES, Config, resumed_config, threads_caveat
from fedbat_mpi.errors import UsageError
from fedbat_mpi.rounds.job import checkpoint_due
from fedbat_mpi.server import checkpoint
from fedbat_mpi.server.client_state import NO_ROW, ClientStateStore, StateIndex


def _state(round_index: int = 3, client_state: StateIndex | None = None) -> checkpoint.RunState:
    rng = np.random.default_rng(round_index)
    tensors = {"conv.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "bn.weight": np.ones(4, np.float32)}
    rows = [{"round": r, "clients": [r, r + 10], "test_acc": 0.1 * r, "uplink_bytes": 1000, "downlink_bytes": 2000,
             "model_sha256": f"{r:064x}"} for r in range(1, round_index + 1)]  # fmt: skip
    return checkpoint.RunState(round_index, Config(rounds=10).as_dict(), tensors, rows, 4, client_state)


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_round_trip_keeps_everything(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    state = _state()
    checkpoint.save(str(path), state)
    loaded = checkpoint.load(str(path))
    assert (loaded.round, loaded.num_ranks, loaded.metrics, loaded.config) == (3, 4, state.metrics, state.config)
    assert list(loaded.tensors) == list(state.tensors)
    for name, tensor in state.tensors.items():
        assert loaded.tensors[name].dtype == np.float32 and np.array_equal(loaded.tensors[name], tensor)
    assert loaded.package_version and loaded.created and loaded.client_state is None
    with h5py.File(path) as handle:
        assert handle.attrs["format_version"] == checkpoint.FORMAT_VERSION
        assert "keyed by (seed, stream, round, client id)" in handle.attrs["random_state"]


def test_per_client_state_is_one_byte_per_client_naming_its_store(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    slots = np.full(100_000, NO_ROW, np.int8)
    slots[::97], slots[::389] = 0, 1
    checkpoint.save(str(path), _state(client_state=StateIndex("error_memory", "ab12", 389_920, slots)))
    # The rows stay in client_state.h5: 100,000 clients add a few kB, not 100,000 x 1.56 MB.
    assert path.stat().st_size < 40_000
    loaded = checkpoint.load(str(path)).client_state
    assert loaded is not None
    assert (loaded.name, loaded.store_id, loaded.row_size) == ("error_memory", "ab12", 389_920)
    assert loaded.slots.dtype == np.int8 and np.array_equal(loaded.slots, slots)
    assert loaded.clients_with_rows() == np.count_nonzero(slots != NO_ROW)


def test_a_new_checkpoint_keeps_the_previous_one(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    (tmp_path / f".{checkpoint.FILE_NAME}.tmp-99999").write_bytes(b"left by a killed writer")
    checkpoint.save(str(path), _state(2))
    checkpoint.save(str(path), _state(3))
    assert checkpoint.load(str(path)).round == 3
    assert checkpoint.load(str(tmp_path / checkpoint.PREVIOUS_FILE_NAME)).round == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILE_NAME, checkpoint.PREVIOUS_FILE_NAME]
    checkpoint.save(str(path), _state(4))  # the previous one moves on too
    assert checkpoint.load(str(tmp_path / checkpoint.PREVIOUS_FILE_NAME)).round == 3


def test_a_writer_killed_after_keeping_the_previous_one_leaves_nothing_behind(tmp_path):
    # A kill between linking checkpoint.h5 to checkpoint.prev.h5 and replacing checkpoint.h5 leaves two
    # names of one file; the next save must neither fail nor leave its staging name behind (renaming a
    # link onto another link of the same file does nothing).
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), _state(round_index=1))
    os.link(path, tmp_path / checkpoint.PREVIOUS_FILE_NAME)
    checkpoint.save(str(path), _state(round_index=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILE_NAME, checkpoint.PREVIOUS_FILE_NAME]
    assert checkpoint.load(str(path)).round == 2
    assert checkpoint.load(str(tmp_path / checkpoint.PREVIOUS_FILE_NAME)).round == 1


def test_a_failed_write_leaves_the_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), _state(2))
    before = _fingerprint(path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", disk_full)
    with pytest.raises(OSError):
        checkpoint.save(str(path), _state(3))
    assert _fingerprint(path) == before and checkpoint.load(str(path)).round == 2
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILE_NAME]


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5_000])


def _corrupted(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:8] = b"\0" * 8  # the HDF5 signature
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as handle:
        handle["data"] = np.arange(10)


def _not_hdf5(path: Path) -> None:
    path.write_text("round: 3\n")


def _bit_flipped(path: Path) -> None:
    """One bit of a weight flipped on disk, as bit rot would: the file stays a readable checkpoint."""
    with h5py.File(path) as handle:
        offset = handle["model/conv.weight"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x10
    path.write_bytes(bytes(data))


def _edited(path: Path) -> None:
    """The stored configuration changed through HDF5 (another seed): a valid file, not the run's."""
    with h5py.File(path, "r+") as handle:
        handle.attrs["config"] = handle.attrs["config"].replace('"seed": 0', '"seed": 1')


def _round_infinite(path: Path) -> None:
    """The round attribute made a float too large for an integer: reading it overflows."""
    with h5py.File(path, "r+") as handle:
        handle.attrs["round"] = np.inf


def _downgraded(path: Path) -> None:
    """A bit flip that turns format 3 into 2 (0b11 -> 0b10), which is read without a digest otherwise."""
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = 2


@pytest.mark.parametrize("damage,message", [
    (_truncated, "cannot be read as a checkpoint"),
    (_corrupted, "not an HDF5 file"),
    (_foreign, "not a fedbat_mpi checkpoint"),
    (_not_hdf5, "not an HDF5 file"),
    (_bit_flipped, "is damaged: its contents no longer match the SHA-256"),
    (_edited, "is damaged: its contents no longer match the SHA-256"),
    (_downgraded, "is damaged: its contents no longer match the SHA-256"),
    (_round_infinite, "cannot be read as a checkpoint"),
])  # fmt: skip
def test_damaged_or_foreign_files_are_refused_with_one_line(tmp_path, damage, message):
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), _state())
    damage(path)
    before = _fingerprint(path)
    with pytest.raises(UsageError, match=message) as error:
        checkpoint.load(str(path))
    assert "\n" not in str(error.value) and str(error.value).startswith("--resume: ")
    assert _fingerprint(path) == before


@pytest.mark.parametrize("change,message", [
    ({"config": ["a list"]}, "its config is not a mapping"),
    ({"round": -5}, "its round is negative"),
    ({"metrics": [{"round": 1}]}, "a metrics row lacks one of"),
])  # fmt: skip
def test_a_checkpoint_with_contents_of_the_wrong_kind_is_refused(tmp_path, change, message):
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), replace(_state(), **change))  # the SHA-256 matches: written so
    with pytest.raises(UsageError, match=message):
        checkpoint.load(str(path))


def test_metrics_rows_are_checked_as_stored_whatever_json_makes_of_them(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    rows = [{**row, "phase_s": {10: 1.5, 9: 0.5}, "test_loss": float("nan")} for row in _state().metrics]
    checkpoint.save(str(path), replace(_state(), metrics=rows))  # int keys come back as strings, reordered
    assert checkpoint.load(str(path)).metrics[0]["phase_s"] == {"10": 1.5, "9": 0.5}


def test_a_checkpoint_of_format_2_from_before_the_digest_is_still_read(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    slots = np.array([0, NO_ROW, 1], np.int8)  # and its client state without row sums: read unchecked
    state = _state(client_state=StateIndex("error_memory", "ab12", 10, slots))
    checkpoint.save(str(path), state)
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = 2
        del handle.attrs["content_sha256"]
    loaded = checkpoint.load(str(path))
    assert loaded.format_version == 2 and loaded.metrics == state.metrics
    assert loaded.client_state is not None and loaded.client_state.sums is None
    with h5py.File(path, "r+") as handle:  # a version-3 file must carry its digest
        handle.attrs["format_version"] = 3
    with pytest.raises(UsageError, match="is damaged"):
        checkpoint.load(str(path))


def test_the_data_sets_digest_is_kept_and_covered_and_a_format_3_file_without_it_is_read(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), replace(_state(), data_sha256="d" * 64))
    assert checkpoint.load(str(path)).data_sha256 == "d" * 64
    with h5py.File(path, "r+") as handle:  # another data set's digest: the contents' SHA-256 no longer matches
        handle.attrs[checkpoint.DATA_SHA256] = "e" * 64
    with pytest.raises(UsageError, match="is damaged"):
        checkpoint.load(str(path))
    with h5py.File(path, "r+") as handle:  # as format 3 wrote it: no data digest, the rest covered
        del handle.attrs[checkpoint.DATA_SHA256]
        handle.attrs["format_version"] = 3
        state = _state()
        rows = [json.dumps(row) for row in state.metrics]
        handle.attrs["content_sha256"] = checkpoint.content_sha256(
            checkpoint._header(handle.attrs), state.tensors, rows, None)  # fmt: skip
    loaded = checkpoint.load(str(path))
    assert (loaded.format_version, loaded.data_sha256, loaded.metrics) == (3, "", state.metrics)
    assert "data set SHA-256: not recorded" in describe(str(path))


def test_resuming_may_change_only_what_does_not_change_results():
    saved = Config(rounds=10, model="cnn4-mnist").as_dict()
    config = resumed_config(saved, {"rounds": 20, "device": "cpu", "threads": 2, "out": "x"}, finished_round=10)
    assert (config.rounds, config.device, config.lr) == (20, "cpu", 0.1)
    with pytest.raises(UsageError, match="--lr: the checkpoint was made with 0.1, got 0.5"):
        resumed_config(saved, {"lr": 0.5}, finished_round=3)
    with pytest.raises(UsageError, match="--rounds: the checkpoint has already finished round 10"):
        resumed_config(saved, {"rounds": 5}, finished_round=10)
    assert resumed_config(saved, {}, finished_round=10).rounds == 10  # a finished run may be resumed (a no-op)
    with pytest.raises(UsageError, match="unknown options"):
        resumed_config({**saved, "momentum": 0.9}, {}, finished_round=3)
    older = {name: value for name, value in saved.items() if name != "client_group"}  # before the option
    assert resumed_config(older, {"client_group": "auto"}, finished_round=3).client_group == "auto"
    with pytest.raises(UsageError, match="--client-group: the checkpoint was made with 'auto', got 4"):
        resumed_config(older, {"client_group": 4}, finished_round=3)
    # A config file's null for the model or the data folder sets nothing: the checkpoint's values stand.
    unset = resumed_config({**saved, "data_dir": "/data"}, {"model": None, "data_dir": None}, finished_round=3)
    assert (unset.model, unset.data_dir) == ("cnn4-mnist", "/data")


def test_a_run_resumed_on_other_threads_is_told_it_is_not_bitwise_the_same():
    saved = Config(rounds=10, model="cnn4-mnist").as_dict()
    assert threads_caveat(saved, resumed_config(saved, {}, finished_round=3)) is None
    caveat = threads_caveat(saved, resumed_config(saved, {"threads": 2}, finished_round=3))
    assert caveat is not None and caveat.startswith("note: --threads 2, the checkpoint's run had 1: ")
    assert "\n" not in caveat and "not bit for bit" in caveat


def test_every_option_that_changes_results_is_refused_on_resume():
    """The README's list of what a resumed run may change; every other option, the run's algorithm's
    too, must equal the checkpoint's."""
    assert RESUMABLE_CHANGES == {"rounds", "out", "checkpoint_every", "device", "threads", "data_dir", "cuda_graphs"}
    saved = Config(rounds=10, model="cnn4-mnist").as_dict()
    for field in fields(Config):
        if field.name not in RESUMABLE_CHANGES | options_of_other_algorithms(saved["algorithm"]):
            with pytest.raises(UsageError, match=f"^--{field.name.replace('_', '-')}: the checkpoint was made with"):
                resumed_config(saved, {field.name: "another value"}, finished_round=3)


def test_inspector_prints_round_configuration_and_sizes_without_mpi(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), _state())
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.checkpoint", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "round 3 of 10" in out and "on 4 ranks" in out and "2 tensors, 40 values" in out
    assert "algorithm: fedbat" in out and f"{3:064x}" in out
    check = subprocess.run([sys.executable, "-c", "import sys, fedbat_mpi.checkpoint; print('mpi4py' in sys.modules)"],
                           capture_output=True, text=True)  # fmt: skip
    assert check.stdout.strip() == "False"


def test_inspector_shows_the_last_and_the_best_test_accuracy(tmp_path):
    path = tmp_path / checkpoint.FILE_NAME
    state = _state()
    for row, accuracy in zip(state.metrics, [0.1, 0.3, 0.2]):  # not monotone: the best is not the last
        row["test_acc"] = accuracy
    checkpoint.save(str(path), state)
    assert "metrics: 3 rounds, last test_acc 20.00%, best 30.00%" in describe(str(path))


def test_inspector_refuses_a_bad_file_with_exit_2(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("nope")
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.checkpoint", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_inspector_summarises_the_client_state_and_its_file(tmp_path):
    store = ClientStateStore.create(str(tmp_path), "error_memory", 40, 1_000)
    store.write([3, 17], np.ones((2, 1_000), np.float32))
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save_committing(str(path), _state(), store)
    text = describe(str(path))
    assert "client state error_memory: 2 of 40 clients hold a row of 1,000 float32 values" in text
    stat = (tmp_path / "client_state.h5").stat()
    assert f"in client_state.h5 ({512 * stat.st_blocks:,} bytes on disk, {stat.st_size:,} apparent)" in text
    assert stat.st_size > 2 * 40 * 4_000  # every client's two slots
    (tmp_path / "client_state.h5").unlink()
    assert "in client_state.h5 (missing)" in describe(str(path))


def test_the_checkpoint_policy_saves_every_k_rounds_the_last_and_on_a_stop():
    def due(every: int, stopping: bool = False) -> list[int]:
        config = Config(rounds=7, checkpoint_every=every)
        return [r for r in range(1, 8) if checkpoint_due(config, r, stopping)]

    assert due(3) == [3, 6, 7] and due(2) == [2, 4, 6, 7] and due(1) == list(range(1, 8))
    assert due(0) == [7]  # 0: only at the end
    assert due(10) == [7] and due(0, stopping=True) == list(range(1, 8))


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """A kill cannot show it, a power cut could: the new file is fsynced before the rename that makes
    it the checkpoint, and the folder after it (so the rename itself is durable)."""
    path = tmp_path / checkpoint.FILE_NAME
    checkpoint.save(str(path), _state())
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(source: str, target: str) -> None:
        calls.append(("replace", str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    checkpoint.save(str(path), _state())
    temporary = next(name for kind, name in calls if kind == "fsync" and ".tmp-" in name)
    order = [(kind, "new" if name == temporary else name) for kind, name in calls]
    assert order.index(("fsync", "new")) < order.index(("replace", str(path))) < order.index(("fsync", str(tmp_path)))
