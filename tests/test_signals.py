"""Stop requests: the first stop signal sets the flag, repeats soon after are the same request (Slurm's
double SIGTERM at a time limit), and a later one ends the process at once with the signal's status."""

import signal
import subprocess
import sys

import pytest

SCRIPT = """
import os, signal, sys, time
from fedbat_mpi.rounds import signals
assert signals.SAME_REQUEST_S == 5.0  # README, "Stop signals"
signals.SAME_REQUEST_S = 0.5  # a short window, so that the test need not wait 5 s
stop = signals.StopRequest()
os.kill(os.getpid(), signal.{first})
os.kill(os.getpid(), signal.{first})  # a repeat, as Slurm sends at a time limit
os.kill(os.getpid(), signal.{second})  # and the job's --signal with it
print("still running, requested by", stop.signal_name, flush=True)
time.sleep(1.0)
os.kill(os.getpid(), signal.{second})  # later: ends the process now
time.sleep(5)
print("not ended", flush=True)
"""


@pytest.mark.parametrize("first,second", [("SIGTERM", "SIGUSR1"), ("SIGUSR1", "SIGTERM")])
def test_repeats_are_one_request_and_a_later_signal_ends_the_process(first, second):
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first, second=second)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert f"still running, requested by {first}" in done.stdout, done.stderr
    assert "not ended" not in done.stdout
    assert done.returncode == -getattr(signal, second)


COUNT_SCRIPT = """
import os, signal
from fedbat_mpi.rounds.signals import StopCount
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
# SIGINT as an interactive start leaves it: a background job of a shell without job control inherits it
# ignored, and then it is rightly not counted (how a loaded clean-clone run found 3 here, not 4)
signal.signal(signal.SIGINT, signal.default_int_handler)
stops = StopCount().install()
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM):
    os.kill(os.getpid(), number)
print("counted", stops.count, "last", signal.Signals(stops.last).name, flush=True)
assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
stops.restore()  # the last signal counted now takes its usual effect
print("not ended", flush=True)
"""


def test_a_driver_counts_every_stop_signal_but_one_it_inherited_as_ignored_and_restore_replays_the_last():
    done = subprocess.run([sys.executable, "-c", COUNT_SCRIPT], capture_output=True, text=True, timeout=60)
    assert "counted 4 last SIGTERM" in done.stdout, done.stdout + done.stderr
    assert "not ended" not in done.stdout
    assert done.returncode == -signal.SIGTERM
