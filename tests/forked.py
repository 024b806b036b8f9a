"""Writes to kill: a script serves them in forked children (``serve``), a test starts and SIGKILLs them (``Writer``).

The script prints ``ready``; then, for each line on stdin, it forks a child that runs ``write(line)`` and
exits 0 (1 on an exception, with its traceback on stderr), and prints the child's pid; the next line on
stdin (any text) asks it to reap that child, and it prints the child's exit code (negative: killed by
that signal). The forked child starts at once, without an interpreter's start-up, so a test's random
delays land across the write itself.
"""

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path


def serve(write: Callable[[str], None]) -> None:
    """The script's side: run each requested write in a forked child."""
    print("ready", flush=True)
    while line := sys.stdin.readline():
        child = os.fork()
        if child == 0:
            code = 0
            try:
                write(line.strip())
            except BaseException:  # noqa: BLE001 - reported to the test as exit code 1
                traceback.print_exc()
                sys.stderr.flush()
                code = 1
            finally:
                os._exit(code)
        print(child, flush=True)
        sys.stdin.readline()
        print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)


class Writer:
    """The test's side: the running script; ``write(line, kill_after)`` forks a write and SIGKILLs it."""

    def __init__(self, script: Path, args: list[str], log: Path, env: dict[str, str]):
        self.script, self.log = script, log
        with open(log, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, str(script), *args], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)  # fmt: skip
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"{self.script} ended: {self.log.read_text()}"
        return line.strip()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n")
        self.process.stdin.flush()

    def write(self, line: str, kill_after: float | None) -> int:
        """Run write ``line``, SIGKILL it ``kill_after`` seconds in (None: never); its exit code (-9: killed)."""
        self._send(line)
        child = int(self._line())
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(child, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
        self._send("reap")
        return int(self._line())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
