"""Run ``fedbat_mpi.run`` with rank 1 sending one bad payload in round 2, the defect named by ``BAD_PAYLOAD``.

Used by test_bad_payloads.py: the payload travels through the ``Gatherv`` to rank 0, which must reject
it. The first client that rank 1 packs in round 2 gets the defect, announced on stderr as
``sending a bad payload for client N``. Defects:

- ``nan-weight``, ``negative-weight``: the aggregation weight in the header;
- ``update-size``: the header's d one more than the model's (the body is unchanged);
- ``duplicate``: the round's second payload of rank 1 names the first one's client (same size, so the
  gather's agreed byte counts still hold; needs two clients on rank 1);
- ``unsampled``: the header names a client that the round did not sample (id + 1000);
- ``nan-value``: a NaN as the first update value (float32 bodies) or dense value (sign bodies).
"""

import dataclasses
import os
import sys

import numpy as np
import torch

from fedbat_mpi import run
from fedbat_mpi.client.algorithms import LocalUpdate
from fedbat_mpi.rounds import engine
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.comm import Communicator

BAD_ROUND = 2
defect = os.environ["BAD_PAYLOAD"]
run_round, pack = engine.Engine.run_round, engine.Engine.pack


def bad_payload(self: engine.Engine, client_id: int, update: LocalUpdate, weight: float) -> np.ndarray:
    if defect == "nan-weight":
        return pack(self, client_id, update, float("nan"))
    if defect == "negative-weight":
        return pack(self, client_id, update, -weight)
    if defect == "nan-value":
        field = "body" if update.kind is codec.BodyKind.FLOAT32 else "dense"
        values = getattr(update, field).clone()
        values[0] = torch.nan
        return pack(self, client_id, dataclasses.replace(update, **{field: values}), weight)
    raw = pack(self, client_id, update, weight)
    if defect == "unsampled":
        raw[8:12] = np.array([client_id + 1000], dtype="<u4").view(np.uint8)
        return raw
    if defect == "update-size":
        raw[16:24] = np.array([self.layout.update_size + 1], dtype="<u8").view(np.uint8)
        return raw
    raise ValueError(f"BAD_PAYLOAD: unknown defect {defect!r}")


class Due:
    """What rank 1 still has to send this round: the bad payload, and for ``duplicate`` the first id."""

    bad = False
    first_client: int | None = None


def run_round_with_a_bad_payload(self: engine.Engine, round_index: int):
    Due.bad = round_index == BAD_ROUND
    return run_round(self, round_index)


def pack_maybe_bad(self: engine.Engine, client_id: int, update: LocalUpdate, weight: float) -> np.ndarray:
    if not Due.bad:
        return pack(self, client_id, update, weight)
    if defect == "duplicate":
        return pack_duplicate(self, client_id, update, weight)
    Due.bad = False
    print(f"sending a bad payload for client {client_id}: {defect}", file=sys.stderr, flush=True)
    return bad_payload(self, client_id, update, weight)


def pack_duplicate(self: engine.Engine, client_id: int, update: LocalUpdate, weight: float) -> np.ndarray:
    """The first payload of the round as it is; the second under the first one's client id."""
    raw = pack(self, client_id, update, weight)
    if Due.first_client is None:
        Due.first_client = client_id
        return raw
    Due.bad = False
    print(f"sending a bad payload for client {Due.first_client}: {defect}", file=sys.stderr, flush=True)
    raw[8:12] = np.array([Due.first_client], dtype="<u4").view(np.uint8)
    return raw


if Communicator().rank == 1:
    setattr(engine.Engine, "run_round", run_round_with_a_bad_payload)
    setattr(engine.Engine, "pack", pack_maybe_bad)

sys.exit(run.main())
