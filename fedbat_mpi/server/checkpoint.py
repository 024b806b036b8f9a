"""HDF5 checkpoints: everything an exact resume needs, written atomically by rank 0.

Layout (format version 4; version 3 lacked ``data_sha256``, version 2 also ``content_sha256``, version 1
held the rows themselves):

- root attributes: ``format`` (``"fedbat_mpi checkpoint"``), ``format_version``, ``package_version``,
  ``round`` (the last finished round), ``num_ranks`` (of the run that wrote it), ``created`` (UTC),
  ``config`` (the resolved configuration as JSON), ``random_state``, ``data_sha256`` (the data set's
  digest, ``data.datasets.data_sha256``: a resume on other data is refused) and ``content_sha256``. Every
  random draw of a run is keyed by (seed, stream, round, client id) (``rng.py``), so there is no
  generator state to store; ``random_state`` records that scheme. ``content_sha256`` is the SHA-256 of
  everything else the checkpoint holds (:func:`content_sha256`): a file whose bits changed after it was
  written (a flipped bit on disk, an edited attribute) is refused, not resumed into another run.
- ``model/``: one float32 dataset per ``state_dict`` entry, by name; attribute ``order`` lists the
  names in state_dict order.
- ``metrics``: one JSON string per finished round (the rows of ``metrics.jsonl``).
- ``client_state`` (algorithms that keep per-client state): attributes ``name``, ``store_id`` and
  ``row_size``, ``slots``, one int8 per client: which slot of ``client_state.h5`` beside the
  checkpoint holds the client's committed row (-1: none), and ``sums``, one uint64 per client: the
  row's sum, which reading it checks (absent in format 2: unchecked). The rows stay in that file
  (``server/client_state.py``), so a checkpoint holds nine bytes per client before compression, not
  the rows.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over
``checkpoint.h5``; the checkpoint it replaces stays as ``checkpoint.prev.h5``. A crash or kill at any
point leaves either the old or the new checkpoint whole.

``python -m fedbat_mpi.checkpoint PATH`` prints a checkpoint's contents (no MPI needed).
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from fedbat_mpi import __version__
from fedbat_mpi.errors import UsageError
from fedbat_mpi.server.client_state import ClientStateStore, StateIndex
from fedbat_mpi.server.hdf5_files import read_checked, write_aside

FORMAT = "fedbat_mpi checkpoint"
FORMAT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # 2: written before content_sha256, read unchecked; 2 and 3: before data_sha256
FILE_NAME = "checkpoint.h5"
PREVIOUS_FILE_NAME = "checkpoint.prev.h5"
RANDOM_STATE = "none: every draw is keyed by (seed, stream, round, client id)"
# The root attributes besides ``format`` and the digest, with their types.
HEADER = {"format_version": int, "package_version": str, "round": int, "num_ranks": int, "created": str,
          "config": str, "random_state": str}  # fmt: skip
DATA_SHA256 = "data_sha256"  # a root attribute from format 4 on, in the digest's header where present
# What a resumed run's summary and the inspector read of each metrics row.
METRICS_KEYS = frozenset({"round", "clients", "test_acc", "uplink_bytes", "downlink_bytes", "model_sha256"})


@dataclass
class RunState:
    """What a checkpoint holds."""

    round: int
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]  # the global model, state_dict order, float32
    metrics: list[dict[str, Any]]
    num_ranks: int
    client_state: StateIndex | None = None  # the committed rows of client_state.h5, if the algorithm keeps any
    package_version: str = __version__
    created: str = ""
    format_version: int = FORMAT_VERSION  # of the file it was read from
    data_sha256: str = ""  # the digest of the data set the run trained and tested on; "" before format 4


def content_sha256(
    header: dict[str, Any], tensors: dict[str, np.ndarray], metrics: list[str], index: StateIndex | None
) -> str:
    """The SHA-256 of what a checkpoint holds, as stored: the root attributes in ``header`` (the config
    as its JSON text), each tensor's name, shape and little-endian float32 bytes in order, each metrics
    row's JSON text, the client-state index."""
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in tensors.items():
        values = np.ascontiguousarray(tensor, dtype="<f4")
        digest.update(json.dumps([name, values.shape]).encode())
        digest.update(values.tobytes())
    digest.update(json.dumps(metrics).encode())
    if index is not None:
        digest.update(json.dumps([index.name, index.store_id, index.row_size]).encode())
        digest.update(index.slots.astype(np.int8).tobytes())
        if index.sums is not None:
            digest.update(index.sums.astype("<u8").tobytes())
    return digest.hexdigest()


def _header(attrs: Any) -> dict[str, Any]:
    """The root attributes a checkpoint's digest covers, as plain ints and strings."""
    header = {name: kind(attrs[name]) for name, kind in HEADER.items()}
    if DATA_SHA256 in attrs:
        header[DATA_SHA256] = str(attrs[DATA_SHA256])
    return header


def _write(handle: h5py.File, state: RunState) -> None:
    attrs = handle.attrs
    attrs["format"] = FORMAT
    attrs.update(_header({
        "format_version": FORMAT_VERSION, "package_version": state.package_version, "round": state.round,
        "num_ranks": state.num_ranks, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.dumps(state.config, sort_keys=True), "random_state": RANDOM_STATE,
        DATA_SHA256: state.data_sha256,
    }))  # fmt: skip
    rows = [json.dumps(row) for row in state.metrics]
    attrs["content_sha256"] = content_sha256(_header(attrs), state.tensors, rows, state.client_state)
    model = handle.create_group("model")
    model.attrs["order"] = list(state.tensors)
    for name, tensor in state.tensors.items():
        model.create_dataset(name, data=np.asarray(tensor, dtype="<f4"))
    handle.create_dataset("metrics", data=np.array(rows, dtype=object), dtype=h5py.string_dtype(), shape=(len(rows),))
    index = state.client_state
    if index is not None:
        group = handle.create_group("client_state")
        group.attrs.update(name=index.name, store_id=index.store_id, row_size=index.row_size)
        group.create_dataset("slots", data=index.slots.astype(np.int8), compression="gzip")
        if index.sums is not None:
            group.create_dataset("sums", data=index.sums.astype("<u8"), compression="gzip")


def save(path: str, state: RunState) -> None:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces beside it."""

    def keep_previous() -> None:
        if os.path.exists(path):
            _keep_previous(path, os.path.join(os.path.dirname(os.path.abspath(path)), PREVIOUS_FILE_NAME))

    write_aside(path, lambda handle: _write(handle, state), keep_previous)


def save_committing(path: str, state: RunState, store: ClientStateStore | None) -> None:
    """``save`` for a run whose algorithm keeps per-client state in ``store``: fsync the store, save the
    checkpoint naming its newest rows, then make those the committed rows (server/client_state.py)."""
    if store is None:
        save(path, state)
        return
    save(path, replace(state, client_state=store.prepare()))
    store.commit(state.round)


def _keep_previous(current: str, previous: str) -> None:
    """Make ``previous`` a copy of ``current`` without a moment where either is missing or partial."""
    staging = previous + ".tmp"
    if os.path.exists(staging):
        os.remove(staging)
    if os.path.exists(previous) and os.path.samefile(current, previous):
        return  # a writer killed after this step already made it (and renaming onto it would do nothing)
    try:
        os.link(current, staging)
    except OSError:  # file systems without hard links
        shutil.copy2(current, staging)
    os.replace(staging, previous)


def saved_round_and_config(path: str, option: str = "--resume") -> tuple[int, dict[str, Any]]:
    """The last finished round in a checkpoint and its configuration, read from its attributes alone
    (no tensors); a missing, corrupt or foreign file is a UsageError naming ``option``."""
    def read(handle: h5py.File) -> tuple[int, dict[str, Any]]:
        return int(handle.attrs["round"]), json.loads(handle.attrs["config"])

    return _open(path, option, read)


def load(path: str, option: str = "--resume") -> RunState:
    """Read a checkpoint; a missing, corrupt, damaged or foreign file is a UsageError naming ``option``."""

    def verified(handle: h5py.File) -> RunState:
        rows = list(handle["metrics"].asstr()[()])  # the metrics rows' JSON text, as the digest covers it
        state = _read(handle, rows)
        written = handle.attrs.get("content_sha256")  # format 2 has none; format 3 always
        if written is not None or state.format_version >= 3:
            if written != content_sha256(_header(handle.attrs), state.tensors, rows, state.client_state):
                raise UsageError(f"{option}: {path} is damaged: its contents no longer match the SHA-256 "
                                 "written with them; resume from a copy")  # fmt: skip
        return state

    return _open(path, option, verified)


def _open(path: str, option: str, read: Callable[[h5py.File], Any]) -> Any:
    """``read(handle)`` of a checked checkpoint file; any failure is a UsageError naming ``option``."""

    def checked(handle: h5py.File) -> Any:
        _check_format(handle, path, option)
        return read(handle)

    return read_checked(path, option, f"no checkpoint at {path}", "a checkpoint", checked)


def _check_format(handle: h5py.File, path: str, option: str) -> None:
    attrs = handle.attrs
    if attrs.get("format") != FORMAT:
        raise UsageError(f"{option}: {path} is an HDF5 file but not a fedbat_mpi checkpoint")
    version = int(attrs["format_version"])
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise UsageError(f"{option}: {path} has checkpoint format {version}; this version reads {readable}")


def _read(handle: h5py.File, rows: list[str]) -> RunState:
    """The checkpoint's contents, its metrics from their JSON ``rows``; a ValueError where they are not
    of the kinds a checkpoint holds."""
    attrs = handle.attrs
    model = handle["model"]
    tensors = {str(name): model[name][()] for name in model.attrs["order"]}
    metrics = [json.loads(row) for row in rows]
    config = json.loads(attrs["config"])
    if not isinstance(config, dict) or int(attrs["round"]) < 0:
        raise ValueError("its config is not a mapping or its round is negative")
    if not all(isinstance(row, dict) and METRICS_KEYS <= row.keys() for row in metrics):
        raise ValueError(f"a metrics row lacks one of {sorted(METRICS_KEYS)}")
    client_state = None
    if "client_state" in handle:
        group = handle["client_state"]
        meta = group.attrs
        sums = group["sums"][()] if "sums" in group else None
        name, store_id, row_size = str(meta["name"]), str(meta["store_id"]), int(meta["row_size"])
        client_state = StateIndex(name, store_id, row_size, group["slots"][()], sums)
    return RunState(
        round=int(attrs["round"]),
        config=config,
        tensors=tensors,
        metrics=metrics,
        num_ranks=int(attrs["num_ranks"]),
        client_state=client_state,
        package_version=str(attrs["package_version"]),
        created=str(attrs["created"]),
        format_version=int(attrs["format_version"]),
        data_sha256=str(attrs.get(DATA_SHA256, "")),
    )
