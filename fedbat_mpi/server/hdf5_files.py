"""A run's HDF5 files (checkpoints, the client state store): read with one-line errors, written aside
and renamed into place."""

import glob
import os
from collections.abc import Callable
from typing import Any

import h5py

from fedbat_mpi.errors import UsageError


def read_checked(path: str, option: str, missing: str, kind: str, read: Callable[[h5py.File], Any]) -> Any:
    """``read(handle)`` of HDF5 file ``path`` opened read-only (so a refused file is left as it was).

    A missing file (``missing``: the message's words for it), a file that is not HDF5 and any error
    ``read`` raises are one-line UsageErrors naming ``option``; ``kind`` says what the file should
    have been ("a checkpoint", "client state")."""
    if not os.path.isfile(path):
        raise UsageError(f"{option}: {missing}")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{option}: {path} is not an HDF5 file (truncated or corrupt?)")
    try:
        with h5py.File(path, "r", locking=False) as handle:
            return read(handle)
    except UsageError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError) as error:
        raise UsageError(f"{option}: {path} cannot be read as {kind} ({type(error).__name__}: {error})") from None


def write_aside(path: str, write: Callable[[h5py.File], None], before_rename: Callable[[], None] = lambda: None) -> None:
    """``write(handle)`` into a new HDF5 file beside ``path``, flushed to disk, then ``before_rename()``
    and the rename over ``path``, and the folder flushed: a kill at any moment leaves ``path`` as it was
    or whole. The temporary file (``.NAME.tmp-PID``) is removed if anything fails, and those of a killed
    writer when the next one starts."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp-"
    for stale in glob.glob(os.path.join(glob.escape(folder), prefix + "*")):
        os.remove(stale)
    temporary = os.path.join(folder, f"{prefix}{os.getpid()}")
    try:
        with h5py.File(temporary, "w") as handle:
            write(handle)
        fsync_path(temporary)
        before_rename()
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    fsync_path(folder)


def fsync_path(path: str) -> None:
    """Flush a file's or a folder's data and metadata to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
