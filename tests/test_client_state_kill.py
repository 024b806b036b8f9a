"""SIGKILL of a stateful run at random moments while it reads, writes and fsyncs client rows and commits
them with checkpoints: every restart resumes from the last checkpoint, and the rows in the end are bit
for bit those of a run that was never killed (tests/state_writer.py is the run). The kill delays come
from a seeded generator; the seed is printed, and FEDBAT_KILL_SEED picks another."""

import os
import random
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from fedbat_mpi.server import checkpoint
from fedbat_mpi.server.client_state import FILE_NAME
from fedbat_mpi.testing.launch import environment

from .forked import Writer

SEED = int(os.environ.get("FEDBAT_KILL_SEED", "20261127"))
SCRIPT = Path(__file__).with_name("state_writer.py")
KILLS = 12


def _final(folder: Path) -> tuple[int, np.ndarray]:
    """The last checkpoint's round and the rows it commits (zeros for a client without one)."""
    state = checkpoint.load(str(folder / checkpoint.FILE_NAME))
    assert state.client_state is not None, f"round {state.round}'s checkpoint names no client rows"
    slots = state.client_state.slots
    with h5py.File(folder / FILE_NAME, "r") as handle:
        rows = np.stack([handle["rows"][c, max(slot, 0)] * (slot >= 0) for c, slot in enumerate(slots)])
    return state.round, rows


def test_sigkill_during_state_writes_loses_nothing_committed(tmp_path):
    print(f"kill delays from random.Random({SEED}) (FEDBAT_KILL_SEED)")
    rng = random.Random(SEED)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir(), killed.mkdir()
    outcomes: Counter[str] = Counter()
    writer = Writer(SCRIPT, [str(reference)], tmp_path / "reference.log", environment())
    try:
        start = time.perf_counter()
        assert writer.write("", None) == 0, (tmp_path / "reference.log").read_text()
        whole_s = time.perf_counter() - start
    finally:
        writer.close()
    writer = Writer(SCRIPT, [str(killed)], tmp_path / "killed.log", environment())
    try:
        for trial in range(KILLS):
            delay = rng.uniform(0, 0.25 * whole_s)  # a run resumes from its last checkpoint: this progresses
            code = writer.write("", delay)
            assert code in (0, -9), f"trial {trial}: the run failed: {(tmp_path / 'killed.log').read_text()}"
            outcomes["killed" if code else "finished"] += 1
        assert writer.write("", None) == 0, (tmp_path / "killed.log").read_text()
    finally:
        writer.close()
    print(f"uninterrupted run {1000 * whole_s:.0f} ms; {dict(outcomes)}")
    assert outcomes["killed"] >= KILLS * 2 // 3, "too few kills landed in the run"
    (round_a, rows_a), (round_b, rows_b) = _final(reference), _final(killed)
    assert round_a == round_b and rows_a.tobytes() == rows_b.tobytes()
    assert np.count_nonzero(rows_a.any(axis=1)) > 12  # most clients hold a row
