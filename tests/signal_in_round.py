"""Run ``fedbat_mpi.run`` with a stop signal that rank ``SIGNAL_RANK`` sends itself as round
``SIGNAL_ROUND`` starts: past the previous round's stop check, before this round's, whatever the
machine's speed.

Used by test_resume.py for a stop in the last round, which a signal from outside could only aim at.
"""

import os
import signal
import sys

from fedbat_mpi import run
from fedbat_mpi.rounds import engine
from fedbat_mpi.wire.comm import Communicator

signalled_round = int(os.environ["SIGNAL_ROUND"])
if Communicator().rank == int(os.environ["SIGNAL_RANK"]):
    run_round = engine.Engine.run_round

    def signal_then_run(self: engine.Engine, round_index: int):
        if round_index == signalled_round:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_round(self, round_index)

    engine.Engine.run_round = signal_then_run  # type: ignore[method-assign]

sys.exit(run.main())
