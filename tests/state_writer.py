"""A stateful run in miniature, to kill while it writes client rows: ``python state_writer.py FOLDER``.

Each write it serves (``forked.serve``) continues the run in FOLDER from its checkpoint (or starts it)
and runs it to the end: each round reads its clients' rows from a ClientStateStore, changes them and
writes them back, and a checkpoint is saved every CHECKPOINT_EVERY rounds with
``checkpoint.save_committing``, as rounds/job.py does. A row depends on every earlier row of its
client, so a committed row lost or mixed up changes the final rows.
"""

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from fedbat_mpi.server import checkpoint
from fedbat_mpi.server.client_state import ClientStateStore

if TYPE_CHECKING:  # mypy checks tests/ as a package; run as a script, this file has tests/ on sys.path
    from tests.forked import serve
else:
    from forked import serve

CLIENTS, PER_ROUND, SIZE, ROUNDS, CHECKPOINT_EVERY = 24, 6, 250_000, 24, 3  # rows of 1 MB


def clients_of(round_index: int) -> list[int]:
    return sorted(np.random.default_rng(round_index).choice(CLIENTS, PER_ROUND, replace=False).tolist())


def run(folder: str) -> None:
    path = os.path.join(folder, checkpoint.FILE_NAME)
    if os.path.exists(path):
        state = checkpoint.load(path)
        assert state.client_state is not None  # save_committing names the committed rows
        store, first = ClientStateStore.open(folder, state.client_state, state.round), state.round + 1
    else:
        store, first = ClientStateStore.create(folder, "memory", CLIENTS, SIZE), 1
    for round_index in range(first, ROUNDS + 1):
        clients = clients_of(round_index)
        rows = store.read(clients) * np.float32(0.5) + np.float32(round_index) * np.array(clients, np.float32)[:, None]
        store.write(clients, rows + np.arange(SIZE, dtype=np.float32))
        if round_index % CHECKPOINT_EVERY == 0 or round_index == ROUNDS:
            state = checkpoint.RunState(round_index, {}, {"w": np.zeros(1, np.float32)}, [], 1)
            checkpoint.save_committing(path, state, store)
    store.close()


if __name__ == "__main__":
    serve(lambda line: run(sys.argv[1]))
