"""The error type for mistakes a user can fix, and how every command reports them."""

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(Exception):
    """A problem in the user's input, reported as one line on stderr with exit status 2.

    The message names the option or file and what was expected, e.g.
    ``--rounds: expected a positive integer, got -3``.
    """

    exit_status = 2

    def __str__(self) -> str:
        """The message on one line whatever it quotes: a line break (in a path, say) shows as ``\\n``."""
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


FAILURE = 1  # the exit status of a failure that is not a mistake in the input


class EveryRankStops(Exception):
    """Raised on every rank at once, after the ranks agreed that one of them cannot go on with a round
    (``error``, on that rank only): the run ends on every rank with ``exit_status``, 2 for a UsageError
    (a damaged client-state row), 1 for anything else (a payload rank 0 cannot use)."""

    def __init__(self, error: Exception | None, exit_status: int) -> None:
        super().__init__("" if error is None else str(error))
        self.error, self.exit_status = error, exit_status


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are UsageErrors (one line) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body and return its exit status (None: 0); a UsageError becomes
    ``prog: error: ...`` on stderr and exit status 2. A reader that stops early (``| head``) ends the
    command quietly, as it ends ``cat``."""
    try:
        status = body()
        sys.stdout.flush()
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    return status or 0
