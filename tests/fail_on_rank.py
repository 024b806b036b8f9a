"""Run ``fedbat_mpi.run`` with a failure injected on one rank (``FAIL_RANK``): a real exception during
training, or with ``FAIL_AT=setup`` a UsageError while setting up (as a node whose --data-dir lacks
the files would raise).

Used by test_run.py to check that a failure on one rank ends every rank instead of leaving the
others waiting in a collective.
"""

import os
import sys

from fedbat_mpi import run
from fedbat_mpi.errors import UsageError
from fedbat_mpi.rounds import engine, job
from fedbat_mpi.wire.comm import Communicator

failing_rank = int(os.environ["FAIL_RANK"])
if Communicator().rank == failing_rank:
    if os.environ.get("FAIL_AT") == "setup":
        owner: object = job
        name = "load_dataset"
        error: Exception = UsageError(f"--data-dir: injected: not found on rank {failing_rank}'s node")
    else:
        owner, name = engine.Engine, "train_clients"
        error = RuntimeError(f"injected failure on rank {failing_rank}")

    def fail(*args, **kwargs):
        raise error

    setattr(owner, name, fail)

sys.exit(run.main())
