"""The error type for mistakes a user can fix: bad options, missing files, mismatched state."""


class UsageError(Exception):
    """A problem in the user's input, reported as one line on stderr with exit status 2.

    The message names the option or file and what was expected, e.g.
    ``--rounds: expected a positive integer, got -3``.
    """

    exit_status = 2
