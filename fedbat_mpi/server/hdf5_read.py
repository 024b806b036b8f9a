"""Reading a run's HDF5 files (checkpoints, the client state store) with one-line errors."""

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
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UsageError(f"{option}: {path} cannot be read as {kind} ({type(error).__name__}: {error})") from None
