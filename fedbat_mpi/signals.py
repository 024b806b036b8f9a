"""Stop requests from the batch system: SIGTERM or SIGUSR1 asks the run to stop at the next round.

Slurm sends one of these ahead of a time limit (``--signal``) or on preemption. The handler only sets
a flag; the ranks agree on it at the round boundary, checkpoint and exit with ``PREEMPTED``. A second
signal of the same kind takes its default action at once; checkpoints are written atomically, so
that cannot leave a partial one behind.
"""

import os
import signal
from types import FrameType

PREEMPTED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Whether this process received a stop signal; installs the handlers while it lives."""

    def __init__(self):
        self.signal_name: str | None = None
        self.install()

    def install(self) -> None:
        """(Re)install the handlers, e.g. after a library replaced them; keeps what was received."""
        for number in STOP_SIGNALS:
            signal.signal(number, self._handle)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested:
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        self.signal_name = signal.Signals(number).name
