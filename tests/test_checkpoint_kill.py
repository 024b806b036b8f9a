"""SIGKILL of the checkpoint writer at random moments of its writes: the checkpoint always loads, it is
one of the two states being written (the old or the new, bit for bit), and the run resumes to the model
of a run that was never killed.

The states are real: an EF-SignSGD run's (its checkpoints name the committed rows of its
client_state.h5; test_client_state_kill.py kills the writes of that file). The kill delays come from a seeded generator; the seed is
printed, and FEDBAT_KILL_SEED picks another.
"""

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from fedbat_mpi.server import checkpoint
from fedbat_mpi.server.client_state import StateIndex
from fedbat_mpi.testing.launch import TINY, command, environment, launch, metrics, without_timings

from .forked import Writer

SEED = int(os.environ.get("FEDBAT_KILL_SEED", "20240611"))
ROUNDS = 3
RUN = [*TINY, "--algorithm", "ef-signsgd", "--num-clients", "16", "--clients-per-round", "2",
       "--rounds", str(ROUNDS), "--checkpoint-every", "1"]  # fmt: skip
WRITER = Path(__file__).with_name("checkpoint_writer.py")
TEMPORARY_PREFIX = f".{checkpoint.FILE_NAME}.tmp-"  # checkpoint.save writes here first, then renames
WRITER_TRIALS = 30
RUN_TRIALS = 3  # kills that land inside a write; a kill just after one (also checked) is tried again,
RUN_RETRIES = 3  # at most this many times in all


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run: its metrics and its last two checkpoints (rounds 2 and 3)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    done = launch(2, [*RUN, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory, reference) -> list[Path]:
    """Checkpoints of real run states after rounds 1, 2 and 3."""
    first = tmp_path_factory.mktemp("first-round")
    done = launch(None, [*RUN, "--rounds", "1", "--out", str(first)])
    assert done.returncode == 0, done.stderr
    last_two = [reference / checkpoint.PREVIOUS_FILE_NAME, reference / checkpoint.FILE_NAME]
    return [first / checkpoint.FILE_NAME, *last_two]


def _bits(arrays: dict) -> dict:
    return {key: (array.dtype.str, array.shape, array.tobytes()) for key, array in arrays.items()}


def _same(a: checkpoint.RunState, b: checkpoint.RunState) -> bool:
    """Equal in everything but the time of writing; tensors and client rows bit for bit, in order."""
    fields = ("round", "config", "metrics", "num_ranks", "package_version")
    return (
        all(getattr(a, name) == getattr(b, name) for name in fields)
        and list(a.tensors) == list(b.tensors)
        and _bits(a.tensors) == _bits(b.tensors)
        and _index(_client_state(a)) == _index(_client_state(b))
    )


def _client_state(state: checkpoint.RunState) -> StateIndex:
    assert state.client_state is not None, f"round {state.round}'s checkpoint names no client rows"
    return state.client_state


def _index(index: StateIndex) -> tuple:
    return index.name, index.store_id, index.row_size, _bits({"slots": index.slots})


def _which(path: Path, states: list[checkpoint.RunState]) -> int:
    """Which of ``states`` the checkpoint at ``path`` holds; fails unless it loads and is one of them."""
    loaded = checkpoint.load(str(path))
    found = [index for index, state in enumerate(states) if _same(loaded, state)]
    assert found, f"{path.name} loads but holds none of the states written (round {loaded.round})"
    return found[0]


def _timed_save(target: Path, state: checkpoint.RunState) -> float:
    start = time.perf_counter()
    checkpoint.save(str(target), state)
    return time.perf_counter() - start


def _kill_delay(rng: random.Random, write_s: float) -> float:
    """Half across the whole write, half near its end, where the file is flushed and the names swapped."""
    return write_s * (rng.uniform(0, 1.1) if rng.random() < 0.5 else rng.uniform(0.8, 1.1))


def _outcome(code: int, found: int, new: int) -> str:
    if code == 0:
        return "write done"
    return "killed, new in place" if found == new else "killed, old kept"


def test_sigkill_at_random_moments_of_a_write_leaves_the_old_or_the_new_checkpoint(tmp_path, sources):
    print(f"kill delays from random.Random({SEED}) (FEDBAT_KILL_SEED)")
    rng = random.Random(SEED)
    states = [checkpoint.load(str(path)) for path in sources]
    assert [state.round for state in states] == [1, 2, 3]
    assert [_client_state(state).clients_with_rows() for state in states] == [2, 4, 6]
    target, previous_path = tmp_path / checkpoint.FILE_NAME, tmp_path / checkpoint.PREVIOUS_FILE_NAME
    write_s = [_timed_save(target, state) for state in states]  # leaves 2 in place and 1 as the previous
    current, previous = 2, 1
    outcomes: Counter[str] = Counter()
    writer = Writer(WRITER, [str(target), *map(str, sources)], tmp_path / "writer.log", environment())
    try:
        for trial in range(WRITER_TRIALS):
            new = (current + 1) % len(states)
            delay = _kill_delay(rng, write_s[new])
            code = writer.write(str(new), delay)
            where = f"trial {trial}: SIGKILL {1000 * delay:.0f} ms into a ~{1000 * write_s[new]:.0f} ms write"
            assert code in (0, -signal.SIGKILL), f"{where}: the writer failed: {writer.log.read_text()}"
            found, kept = _which(target, states), _which(previous_path, states)
            # The old or the new; once the new one is in place, the one it replaced is the previous one.
            assert (found == new) if code == 0 else (found in (current, new)), where
            assert (kept == current) if found == new else (kept in (previous, current)), where
            outcomes[_outcome(code, found, new)] += 1
            write_s[new] *= 1.05 if code else 0.8  # the delays follow the end of the write
            current, previous = found, kept
    finally:
        writer.close()
    print(dict(outcomes))
    killed = outcomes["killed, old kept"] + outcomes["killed, new in place"]
    assert killed >= WRITER_TRIALS // 2, f"only {killed} of {WRITER_TRIALS} kills landed in a write"
    # A later save clears what the killed writers left (their temporary files) and goes on.
    checkpoint.save(str(target), states[0])
    assert (_which(target, states), _which(previous_path, states)) == (0, current)
    left = sorted(path.name for path in tmp_path.glob("*.h5*"))
    assert left == [checkpoint.FILE_NAME, checkpoint.PREVIOUS_FILE_NAME]


def _next_write(out: Path, process: subprocess.Popen) -> Path | None:
    """Wait until rank 0 begins writing a checkpoint (its temporary file appears); None if the run ends
    first (a write shorter than the polling gap can pass unseen, the last one too)."""
    deadline = time.monotonic() + 300
    while not (found := next(out.glob(TEMPORARY_PREFIX + "*"), None)):
        if process.poll() is not None:
            return None
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"run stalled before a checkpoint write: {process.communicate()}")
        time.sleep(0.005)
    return found


def _rounds_reported(out: Path) -> int:
    """Rows in the run's metrics.jsonl: rank 0 adds a round's row before it checkpoints the round, and
    the next row comes a whole round later, so read as a write begins this is the round being written."""
    return len((out / "metrics.jsonl").read_text().splitlines())


def _write_time(temporary: Path, process: subprocess.Popen) -> float:
    """How long the write that made ``temporary`` takes: until the file is renamed."""
    start = time.perf_counter()
    while temporary.exists():
        if process.poll() is not None:
            pytest.fail(f"run ended during a checkpoint write: {process.communicate()}")
        time.sleep(0.002)
    return time.perf_counter() - start


def _kill_rank_0_during_write(out: Path, process: subprocess.Popen, first_round: int,
                              rng: random.Random) -> tuple[int | None, str, bool]:  # fmt: skip
    """Watch rank 0's checkpoint writes; SIGKILL it at a random moment of the first one seen after round
    ``first_round`` or later. Returns that round (None when the run ended first, unkilled), where it was
    killed, and whether the kill landed inside the write (a write of ~10 ms can end before the moment
    drawn from the previous one's duration: then rank 0 died just after it)."""
    write_s = 0.01
    while (temporary := _next_write(out, process)) is not None and _rounds_reported(out) < first_round:
        write_s = _write_time(temporary, process)
    if temporary is None:
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stdout + stderr
        return None, f"no write after round {first_round} or later seen before the run ended", False
    killed_round = _rounds_reported(out)
    delay = rng.uniform(0, 0.9 * write_s)  # the writes grow with the clients seen: this one is longer
    time.sleep(delay)
    os.kill(int(temporary.name.removeprefix(TEMPORARY_PREFIX)), signal.SIGKILL)  # its name holds rank 0's pid
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("ranks still running 60 s after rank 0 was killed")
    where = (f"rank 0 killed {1000 * delay:.0f} ms into the write after round {killed_round} "
             f"(the write before took {1000 * write_s:.0f} ms)")  # fmt: skip
    assert process.returncode != 0, where
    landed = temporary.exists()  # left by a killed writer
    return killed_round, where + ("" if landed else ", after that write had ended"), landed


def test_sigkill_of_rank_0_while_it_writes_resumes_to_the_uninterrupted_model(tmp_path, reference):
    print(f"kill moments from random.Random({SEED}) (FEDBAT_KILL_SEED)")
    rng = random.Random(SEED)
    expected = without_timings(metrics(reference))
    landed = 0
    for trial in range(RUN_TRIALS + RUN_RETRIES):
        if landed == RUN_TRIALS:
            break
        out = tmp_path / f"run-{trial}"
        process = subprocess.Popen(command(2, [*RUN, "--out", str(out)]), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=environment())  # fmt: skip
        killed_round, where, inside = _kill_rank_0_during_write(out, process, rng.choice(range(2, ROUNDS + 1)), rng)
        where = f"trial {trial}: {where}"
        landed += inside
        print(where)
        if killed_round is None:  # the run went unkilled to its end: it must be the uninterrupted one
            assert without_timings(metrics(out)) == expected, where
            continue
        state = checkpoint.load(str(out / checkpoint.FILE_NAME))
        assert state.round in (killed_round - 1, killed_round), where
        assert state.metrics[-1]["model_sha256"] == expected[state.round - 1]["model_sha256"], where
        done = launch(None, ["--resume", "--out", str(out)])  # one process: quicker, and the same model
        assert done.returncode == 0, f"{where}\n{done.stderr}"
        assert without_timings(metrics(out)) == expected, where
    assert landed == RUN_TRIALS, f"only {landed} of {trial + 1} kills landed inside a write"
