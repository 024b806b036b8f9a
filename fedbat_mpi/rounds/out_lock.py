"""One run at a time in an output folder: rank 0 holds ``OUT/run.lock`` for the run's life.

A second run on the same ``--out`` (a resubmitted job while the first still runs, a study's Slurm
array beside a local driver) would write its metrics, checkpoints and client state over the first's.
The lock is an ``flock``: the kernel releases it however the holder ends, ``kill -9`` included, so a
stale lock file never blocks a later run.

Rank 0 also checks here that the folder's path leaves room for the longest name a run writes in it,
so that a too long ``--out`` is refused at start-up, not at the first checkpoint.
"""

import fcntl
import os
from typing import TextIO

from fedbat_mpi.errors import UsageError

FILE_NAME = "run.lock"
# The longest name a run writes in its folder: a client state store's temporary name, with a pid.
LONGEST_NAME = len(".client_state.h5.tmp-") + 10
DEFAULT_PATH_MAX = 4096  # Linux's, where the file system does not say


def hold_out_dir(out_dir: str) -> TextIO | None:
    """Take ``out_dir``'s lock (making the folder if needed) and keep it until the returned file is closed
    or the process ends; a UsageError naming ``--out`` if another run holds it. ``None`` where the file
    system offers no ``flock`` (the run goes on unguarded)."""
    _check_path_length(out_dir)
    path = os.path.join(out_dir, FILE_NAME)
    while True:
        try:
            os.makedirs(out_dir, exist_ok=True)
            handle = open(path, "a")
        except OSError as error:
            raise UsageError(f"--out: cannot write to {out_dir}: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(
                f"--out: another run is using {out_dir} (it holds {path}); wait for it to end or choose another --out"
            ) from None
        except OSError:  # no flock on this file system
            handle.close()
            return None
        if _still_named(handle, path):
            return handle
        handle.close()  # a refused run removed the file after this one opened it: lock the file there now


def release_out_dir(handle: TextIO | None, remove: bool) -> None:
    """Give the lock back; with ``remove``, delete the lock file first, while still holding it (a refused
    run that made the file leaves the folder as it found it)."""
    if handle is None:
        return
    if remove:
        os.remove(handle.name)
    handle.close()


def _check_path_length(out_dir: str) -> None:
    """A UsageError naming ``--out`` if a file that a run writes in ``out_dir`` would have a path longer
    than the file system allows (checkpoints are written by absolute path)."""
    folder = os.path.abspath(out_dir)
    existing = folder
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    try:
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        path_max = -1
    if path_max <= 0:
        path_max = DEFAULT_PATH_MAX
    length = len(os.fsencode(folder))
    if length + 1 + LONGEST_NAME >= path_max:  # PATH_MAX counts the terminating NUL
        raise UsageError(f"--out: {out_dir} is too long a path ({length} bytes as an absolute path; at most "
                         f"{path_max - 2 - LONGEST_NAME} leave room for the files a run writes there); "
                         "choose a shorter --out")  # fmt: skip


def _still_named(handle: TextIO, path: str) -> bool:
    """Whether ``path`` still names the file ``handle`` has open."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
