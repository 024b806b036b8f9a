"""Exact resume through real runs: after a clean stop, a stop signal (SIGUSR1 or SIGTERM, to any rank), or a
rank killed with SIGKILL."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedbat_mpi.errors import UsageError
from fedbat_mpi.rounds import out_lock
from fedbat_mpi.server import checkpoint, client_state
from fedbat_mpi.testing.formats import write_fmnist
from fedbat_mpi.testing.launch import TINY, command, environment, launch, metrics, without_timings

from .test_client_state import flip_a_bit_of_each_row

ROUNDS = 6
RUN = [*TINY, "--rounds", str(ROUNDS)]
SIGNAL_IN_ROUND = [str(Path(__file__).with_name("signal_in_round.py"))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = launch(2, [*RUN, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return without_timings(metrics(out))


def _rank_pids(out: Path) -> dict[int, int]:
    """The pids of the rank processes of the run writing to ``out``, by rank (from /proc)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"fedbat_mpi.run" not in argv or str(out).encode() not in argv or b"-n" in argv:
            continue
        for item in env:
            key, _, value = item.partition(b"=")
            if key in (b"PMI_RANK", b"OMPI_COMM_WORLD_RANK"):
                pids[int(value)] = int(entry.name)
    return pids


def _start_and_wait_for_rows(out: Path, rows: int, extra: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(command(2, [*RUN, "--out", str(out), *extra]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment())  # fmt: skip
    deadline = time.monotonic() + 120
    metrics_file = out / "metrics.jsonl"
    while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= rows):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"run ended or stalled before {rows} rounds: {process.communicate()}")
        time.sleep(0.1)
    return process


def test_resume_equals_the_uninterrupted_run_on_same_and_other_rank_counts(tmp_path, uninterrupted):
    first = tmp_path / "first"
    done = launch(None, [*TINY, "--rounds", "3", "--out", str(first)])
    assert done.returncode == 0, done.stderr
    for ranks in (1, 2, 4):
        out = tmp_path / f"resumed-{ranks}"
        shutil.copytree(first, out)
        done = launch(ranks if ranks > 1 else None, ["--resume", "--out", str(out), "--rounds", str(ROUNDS)])
        assert done.returncode == 0, done.stderr
        assert "resuming after round 3 (checkpoint written on 1 ranks)" in done.stdout
        assert without_timings(metrics(out)) == uninterrupted


# SIGUSR1 reaches the ranks end to end in test_slurm.py (and during start-up below).
@pytest.mark.parametrize("stop_signal,rank", [("SIGTERM", 0), ("SIGTERM", 1)])
def test_a_stop_signal_to_one_rank_checkpoints_and_the_resumed_run_is_the_same(tmp_path, uninterrupted,
                                                                               stop_signal, rank):  # fmt: skip
    out = tmp_path / "run"
    process = _start_and_wait_for_rows(out, 1, ["--checkpoint-every", "0"])
    os.kill(_rank_pids(out)[rank], getattr(signal, stop_signal))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    assert "stop signal received" in stdout
    stopped_at = checkpoint.load(str(out / checkpoint.FILE_NAME)).round
    assert 1 <= stopped_at < ROUNDS
    done = launch(4, ["--resume", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert without_timings(metrics(out)) == uninterrupted


@pytest.mark.parametrize("rank", [0, 1])
def test_a_stop_signal_in_the_last_round_ends_the_run_as_complete(tmp_path, uninterrupted, rank):
    out = tmp_path / "run"
    done = launch(2, [*RUN, "--out", str(out), "--checkpoint-every", "0"], script=SIGNAL_IN_ROUND,
                  SIGNAL_ROUND=str(ROUNDS), SIGNAL_RANK=str(rank))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stop signal received" not in done.stdout and "final test accuracy" in done.stdout
    assert without_timings(metrics(out)) == uninterrupted
    assert checkpoint.load(str(out / checkpoint.FILE_NAME)).round == ROUNDS


def test_a_grouped_run_stopped_and_resumed_on_its_rank_count_equals_the_uninterrupted_one(tmp_path):
    """``--client-group 4``: the guarantee for grouped training (README, "What is guaranteed")."""
    grouped = [*RUN, "--client-group", "4", "--checkpoint-every", "0"]
    whole = launch(2, [*grouped, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "stopped"
    done = launch(2, [*grouped, "--out", str(out)], script=SIGNAL_IN_ROUND, SIGNAL_ROUND="3", SIGNAL_RANK="0")
    assert done.returncode == 75, done.stderr
    done = launch(2, ["--resume", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert "resuming after round 3" in done.stdout
    assert without_timings(metrics(out)) == without_timings(metrics(tmp_path / "whole"))


def test_a_stop_signal_in_the_round_before_the_last_stops_after_it(tmp_path, uninterrupted):
    out = tmp_path / "run"
    done = launch(2, [*RUN, "--out", str(out), "--checkpoint-every", "0"], script=SIGNAL_IN_ROUND,
                  SIGNAL_ROUND=str(ROUNDS - 1), SIGNAL_RANK="1")  # fmt: skip
    assert done.returncode == 75, done.stderr
    assert f"checkpoint after round {ROUNDS - 1}" in done.stdout
    assert without_timings(metrics(out)) == uninterrupted[: ROUNDS - 1]


def test_a_second_run_in_the_folder_of_a_running_one_is_refused_and_the_first_goes_on(tmp_path):
    out = tmp_path / "run"
    first = _start_and_wait_for_rows(out, 2, ["--checkpoint-every", "1", "--rounds", "500"])
    try:  # the folder holds the first run's checkpoint too: the second run is told the run goes on
        assert (out / checkpoint.FILE_NAME).exists()
        second = launch(2, [*RUN, "--out", str(out)], timeout=120)
        assert first.poll() is None, "the first run ended before the second one was refused"
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"fedbat_mpi: error: --out: another run is using {out}")
        os.kill(_rank_pids(out)[0], signal.SIGTERM)  # the first run stops as usual: checkpoint, exit 75
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 75, stderr
    rows = metrics(out)
    assert checkpoint.load(str(out / checkpoint.FILE_NAME)).round == len(rows) == rows[-1]["round"]


def test_sigkill_of_one_rank_ends_all_and_the_last_checkpoint_resumes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = _start_and_wait_for_rows(out, 2, ["--checkpoint-every", "1"])
    pids = _rank_pids(out)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("ranks still running 30 s after one was killed")
    assert process.returncode != 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values())
    state = checkpoint.load(str(out / checkpoint.FILE_NAME))
    assert 1 <= state.round < ROUNDS
    done = launch(2, ["--resume", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert without_timings(metrics(out)) == uninterrupted


def test_a_new_or_resumed_run_never_overwrites_another_runs_checkpoint(tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    for folder, seed in [(out, "0"), (other, "7")]:
        done = launch(None, [*TINY, "--rounds", "1", "--seed", seed, "--out", str(folder)])
        assert done.returncode == 0, done.stderr
    path, lock = out / checkpoint.FILE_NAME, out / out_lock.FILE_NAME
    before = path.read_bytes()
    lock.unlink()  # a folder written before the lock file existed: a refused run leaves none there either
    done = launch(2, [*TINY, "--rounds", "1", "--out", str(out)])
    assert done.returncode == 2 and "already holds a checkpoint" in done.stderr
    assert path.read_bytes() == before and not lock.exists()
    done = launch(2, ["--resume", str(other / checkpoint.FILE_NAME), "--out", str(out), "--rounds", "2"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "already holds another run's checkpoint" in done.stderr
    assert path.read_bytes() == before and not (out / checkpoint.PREVIOUS_FILE_NAME).exists()
    done = launch(2, ["--resume", "--out", str(out), "--lr", "0.5"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--lr" in done.stderr
    assert path.read_bytes() == before


def test_a_resume_on_other_data_is_refused_and_on_a_copy_of_the_same_goes_on(tmp_path):
    """--data-dir may move (a resumable change), but a folder of other images or labels is refused:
    the checkpoint records the data set's SHA-256."""
    first, other, moved = tmp_path / "first", tmp_path / "other", tmp_path / "moved"
    write_fmnist(first, 64, 32, seed=0)
    write_fmnist(other, 64, 32, seed=1)  # the same sizes and format, other contents
    shutil.copytree(first, moved)
    out = tmp_path / "run"
    data = ["--dataset", "fmnist", "--num-clients", "4", "--clients-per-round", "2", "--local-epochs", "1"]
    done = launch(2, [*data, "--data-dir", str(first), "--rounds", "1", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    path = out / checkpoint.FILE_NAME
    before = path.read_bytes()
    done = launch(2, ["--resume", "--out", str(out), "--data-dir", str(other), "--rounds", "2"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"--data-dir: {other} holds other fmnist data than {path} was trained on" in done.stderr
    assert path.read_bytes() == before and len(metrics(out)) == 1
    done = launch(2, ["--resume", "--out", str(out), "--data-dir", str(moved), "--rounds", "2"])
    assert done.returncode == 0, done.stderr
    assert [row["round"] for row in metrics(out)] == [1, 2]


def test_a_lock_file_removed_by_a_refused_run_is_not_the_one_a_later_run_holds(tmp_path):
    """A run that opened ``run.lock`` just before a refused run removed it locks the file there now."""
    refused = out_lock.hold_out_dir(str(tmp_path))
    assert refused is not None
    opened_before_the_removal = open(tmp_path / out_lock.FILE_NAME, "a")
    out_lock.release_out_dir(refused, remove=True)
    assert not out_lock._still_named(opened_before_the_removal, str(tmp_path / out_lock.FILE_NAME))
    opened_before_the_removal.close()
    held = out_lock.hold_out_dir(str(tmp_path))
    assert held is not None and out_lock._still_named(held, str(tmp_path / out_lock.FILE_NAME))
    with pytest.raises(UsageError, match="another run is using"):
        out_lock.hold_out_dir(str(tmp_path))
    out_lock.release_out_dir(held, remove=False)
    assert (tmp_path / out_lock.FILE_NAME).exists()


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_or_foreign_checkpoint_exits_2_with_one_line_and_stays_untouched(tmp_path, damage):
    out = tmp_path / "run"
    out.mkdir()
    path = out / checkpoint.FILE_NAME
    if damage == "truncated":
        done = launch(None, [*TINY, "--rounds", "1", "--out", str(out)])
        assert done.returncode == 0, done.stderr
        path.write_bytes(path.read_bytes()[:4096])
    else:
        with h5py.File(path, "w") as handle:
            handle["weights"] = [1.0, 2.0]
    before = path.read_bytes()
    done = launch(2, ["--resume", "--out", str(out)], timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in done.stderr
    assert path.read_bytes() == before


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its ``SigCgt`` mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signum - 1) & 1)


def _committed_rows(out: Path) -> dict[int, np.ndarray]:
    """The error memory rows the checkpoint in ``out`` commits, read from its client_state.h5."""
    index = checkpoint.load(str(out / checkpoint.FILE_NAME)).client_state
    assert index is not None
    with h5py.File(out / client_state.FILE_NAME, "r") as handle:
        return {int(c): handle["rows"][c, index.slots[c]] for c in np.flatnonzero(index.slots != client_state.NO_ROW)}


def test_ef_signsgd_error_memory_survives_checkpoint_and_resume(tmp_path):
    # 8 clients, 4 a round: clients come back, so their memory shapes later rounds.
    run = [*TINY, "--algorithm", "ef-signsgd", "--num-clients", "8", "--clients-per-round", "4", "--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    assert launch(2, [*run, "--rounds", "4", "--out", str(whole)]).returncode == 0
    part = tmp_path / "part"
    assert launch(2, [*run, "--rounds", "2", "--out", str(part)]).returncode == 0
    memory = _committed_rows(part)
    assert memory and all(np.any(row != 0) for row in memory.values())
    # The rounds after checkpoint 2 may write over the rows checkpoint 1 (now checkpoint.prev.h5) commits:
    # once checkpoint 2 is committed, the older one is refused, and nothing is written.
    before = {path.name: path.read_bytes() for path in part.glob("*.h5")}
    done = launch(None, ["--resume", str(part / checkpoint.PREVIOUS_FILE_NAME)])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "the checkpoint is of round 1" in done.stderr and "resume the newest checkpoint" in done.stderr
    assert {path.name: path.read_bytes() for path in part.glob("*.h5")} == before
    # Its client_state.h5 is updated in place: the run goes on in the checkpoint's folder, under any name.
    done = launch(None, ["--resume", str(part / checkpoint.FILE_NAME), "--out", str(tmp_path / "elsewhere")])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--out: a run with per-client state continues in its checkpoint's folder" in done.stderr
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "link").symlink_to(part)
    done = launch(2, ["--resume", str(part / checkpoint.FILE_NAME), "--out", str(tmp_path / "link"), "--rounds", "4"])
    assert done.returncode == 0, done.stderr
    assert without_timings(metrics(part)) == without_timings(metrics(whole))
    assert _committed_rows(part).keys() == _committed_rows(whole).keys()
    assert all(np.array_equal(row, _committed_rows(whole)[c]) for c, row in _committed_rows(part).items())


def test_a_client_state_row_damaged_on_disk_ends_the_resumed_run_with_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    run = [*TINY, "--algorithm", "ef-signsgd", "--num-clients", "8", "--clients-per-round", "4", "--out", str(out)]
    assert launch(2, [*run, "--rounds", "2"]).returncode == 0
    index = checkpoint.load(str(out / checkpoint.FILE_NAME)).client_state
    assert index is not None and index.sums is not None
    flip_a_bit_of_each_row(out / client_state.FILE_NAME, index, np.flatnonzero(index.slots != client_state.NO_ROW).tolist())
    before = (out / checkpoint.FILE_NAME).read_bytes()
    done = launch(2, ["--resume", "--out", str(out), "--rounds", "3"], timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()  # every rank stops together: no MPI_Abort and its report
    assert len(lines) == 1 and "client_state.h5 is damaged: client" in lines[0], done.stderr
    assert (out / checkpoint.FILE_NAME).read_bytes() == before


def _signalled_during_start_up(out: Path, options: list[str]) -> tuple[int, str]:
    """Exit status and output of a run on 2 ranks whose rank 1 gets SIGUSR1 while it starts up."""
    process = subprocess.Popen(command(2, [*options, "--out", str(out)]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment())  # fmt: skip
    deadline = time.monotonic() + 30
    while not ((pids := _rank_pids(out)).get(1) and _catches(pids[1], signal.SIGUSR1)) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pids[1], signal.SIGUSR1)  # its handler is in place; it is importing torch and starting MPI now
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout + stderr


def test_a_stop_signal_during_start_up_is_not_lost(tmp_path):
    out = tmp_path / "run"
    status, output = _signalled_during_start_up(out, RUN)
    assert status == 75, output
    assert "stop signal received before the first round" in output
    assert not (out / checkpoint.FILE_NAME).exists() and not (out / "metrics.jsonl").exists()


def test_a_stop_signal_while_a_finished_run_starts_up_again_ends_it_as_complete(tmp_path):
    """Exit 0, not 75: a Slurm job would be requeued for nothing."""
    out = tmp_path / "run"
    done = launch(None, [*TINY, "--rounds", "1", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    status, output = _signalled_during_start_up(out, ["--resume"])
    assert status == 0, output
    assert "stop signal received" not in output and "final test accuracy" in output
