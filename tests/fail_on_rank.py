"""Run ``fedbat_mpi.run`` with a real exception raised on one rank (``FAIL_RANK``) during training.

Used by test_run.py to check that a failure on one rank ends every rank instead of leaving the
others waiting in a collective.
"""

import os
import sys

from fedbat_mpi import run
from fedbat_mpi.rounds import engine
from fedbat_mpi.wire.comm import Communicator

failing_rank = int(os.environ["FAIL_RANK"])
if Communicator().rank == failing_rank:

    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure on rank {failing_rank}")

    engine.Engine.train_clients = fail

sys.exit(run.main())
