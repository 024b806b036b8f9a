"""Stop requests from the batch system: SIGTERM or SIGUSR1 asks the run to stop at the next round.

Slurm sends one of these ahead of a time limit (``--signal``), on preemption, on ``scancel`` and at
the time limit itself. The handler only sets a flag; the ranks agree on it at the round boundary,
checkpoint and exit with ``PREEMPTED``. Stop signals within ``SAME_REQUEST_S`` of the first are the
same request: at a time limit Slurm 22.05 delivers SIGTERM twice, milliseconds apart, together with
the job's ``--signal``. A stop signal that comes later takes its default action at once (an
operator who wants out now); checkpoints are written atomically, so that cannot leave a partial one.

A process that watches runs (the study driver) counts its stop signals instead (``StopCount``) and
passes each on; a closed terminal's SIGHUP is one of them.
"""

import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

PREEMPTED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
SAME_REQUEST_S = 5.0
DRIVER_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


class StopRequest:
    """Whether this process received a stop signal; installs the handlers while it lives."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._received_at = 0.0
        self.install()

    def install(self) -> None:
        """(Re)install the handlers, e.g. after a library replaced them; keeps what was received."""
        for number in STOP_SIGNALS:
            signal.signal(number, self._handle)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not self.requested:
            self.signal_name, self._received_at = signal.Signals(number).name, now
        elif now - self._received_at > SAME_REQUEST_S:
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)


class StopCount:
    """How many stop signals a driver of runs received (``count``), and the last one's number."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0
        self._replaced: dict[int, Callable[[int, FrameType | None], Any] | int] = {}

    def install(self) -> "StopCount":
        """Count ``DRIVER_STOP_SIGNALS`` from now on, but for one the process inherited as ignored: the
        SIGHUP of a command started with ``nohup``, the SIGINT of a background job."""
        for number in DRIVER_STOP_SIGNALS:
            previous = signal.getsignal(number)
            if previous != signal.SIG_IGN:
                self._replaced[number] = signal.SIG_DFL if previous is None else previous
                signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers ``install`` replaced."""
        for number, previous in self._replaced.items():
            signal.signal(number, previous)
        self._replaced.clear()

    def restore(self) -> None:
        """``uninstall``, then a signal counted so far takes its usual effect (for a command that turned
        out not to drive runs, e.g. a listing)."""
        self.uninstall()
        if self.count:
            signal.raise_signal(self.last)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.count += 1
        self.last = number
