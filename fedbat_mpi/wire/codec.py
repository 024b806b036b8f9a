"""The wire format of one client's upload (version 1), packed into a uint8 buffer.

Every payload is a 48-byte little-endian header, then float32 arrays, then the update body, then
zero padding to a multiple of 8 bytes (so payloads can be concatenated and still be read in place):

====== ======= ==========================================================================
offset type    field
====== ======= ==========================================================================
0      4 bytes magic ``b"FBAT"``
4      uint16  format version (1)
6      uint8   body kind: 1 = sign bits, 2 = float32 values
7      uint8   reserved (0)
8      uint32  client id
12     uint32  number of scales S (one per binarized tensor for sign bits, else 0)
16     uint64  number of update entries d (all binarized tensors, state_dict order)
24     uint64  number of dense entries D (BatchNorm tensors, state_dict order)
32     float64 aggregation weight (number of batches, or of samples)
40     float64 mean training loss of the client this round
48     float32 scales[S], then dense[D]
...    body    sign bits: ceil(d/8) bytes, 8 entries per byte, first entry in the most
               significant bit, bit 1 meaning +scale (``numpy.packbits`` order);
               float32 values: 4*d bytes
====== ======= ==========================================================================

So a sign payload is ``align8(48 + 4*S + 4*D + ceil(d/8))`` bytes and a float32 payload
``align8(48 + 4*D + 4*d)`` bytes (:func:`payload_size`).

:func:`decode` reads one payload against the :class:`PayloadShape` that this run's model and algorithm
produce and raises :class:`PayloadError` (naming the byte offset, the client and the cause) for: a
truncated buffer, bad magic, another format version, an unknown body kind, a header whose body kind, S,
d or D differs from the expected shape, and an aggregation weight that is not finite and > 0. Rank 0
reads a whole round at once with ``server/payloads.py``'s ``read_round``, which also rejects a client id
sent twice and a scale that is not finite and >= 0, with the same messages.
"""

import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedbat_mpi.layout import ModelLayout

MAGIC = b"FBAT"
VERSION = 1
_HEADER = struct.Struct("<4sHBBIIQQdd")
HEADER_SIZE = _HEADER.size


class BodyKind(IntEnum):
    SIGNS = 1
    FLOAT32 = 2


_KINDS = frozenset(BodyKind)


class PayloadError(ValueError):
    """A client payload that rank 0 cannot use: malformed, not this run's shape, or bad values."""


@dataclass(frozen=True)
class Payload:
    """One client's upload. Arrays are numpy; decoded payloads view the received buffer."""

    client_id: int
    weight: float
    train_loss: float
    kind: BodyKind
    scales: np.ndarray  # float32[S]
    dense: np.ndarray  # float32[D]
    body: np.ndarray  # uint8[ceil(d/8)] packed signs, or float32[d]
    update_size: int  # d

    def signs(self) -> np.ndarray:
        """The sign bits unpacked to one uint8 (0 or 1) per update entry."""
        return np.unpackbits(self.body, count=self.update_size)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _body_size(kind: BodyKind, update_size: int) -> int:
    return (update_size + 7) // 8 if kind is BodyKind.SIGNS else 4 * update_size


def payload_size(kind: BodyKind, update_size: int, num_scales: int, dense_size: int) -> int:
    """The exact size in bytes of a payload with these dimensions."""
    floats = 4 * (num_scales + dense_size)
    return _align8(HEADER_SIZE + floats + _body_size(kind, update_size))


@dataclass(frozen=True)
class PayloadShape:
    """The body kind and dimensions that every payload of a run must declare in its header."""

    kind: BodyKind
    num_scales: int  # S
    update_size: int  # d
    dense_size: int  # D

    @classmethod
    def of(cls, layout: "ModelLayout", kind: BodyKind) -> "PayloadShape":
        """The shape of a model's payloads: one scale per binarized tensor for sign bodies, else none."""
        num_scales = len(layout.binarized) if kind is BodyKind.SIGNS else 0
        return cls(kind, num_scales, layout.update_size, layout.dense_size)

    @cached_property
    def size(self) -> int:
        return payload_size(self.kind, self.update_size, self.num_scales, self.dense_size)


def pack_signs(positive: np.ndarray) -> np.ndarray:
    """Pack a bool array (True for +scale) into bytes, 8 entries per byte."""
    return np.packbits(positive.reshape(-1))


def encode(payload: Payload) -> np.ndarray:
    """Serialise a payload into a fresh uint8 array of :func:`payload_size` bytes."""
    kind = BodyKind(payload.kind)
    num_scales, dense_size = payload.scales.size, payload.dense.size
    expected_body = _body_size(kind, payload.update_size)
    body = np.ascontiguousarray(payload.body).view(np.uint8).reshape(-1)
    if body.size != expected_body:
        raise ValueError(f"body has {body.size} bytes, expected {expected_body}")
    out = np.zeros(payload_size(kind, payload.update_size, num_scales, dense_size), dtype=np.uint8)
    _HEADER.pack_into(  # numpy's stubs make an ndarray a Buffer only on Python >= 3.12
        out, 0, MAGIC, VERSION, kind, 0, payload.client_id, num_scales,  # type: ignore[arg-type]
        payload.update_size, dense_size, payload.weight, payload.train_loss,
    )  # fmt: skip
    offset = HEADER_SIZE
    for array in (payload.scales, payload.dense):
        raw = np.ascontiguousarray(array, dtype="<f4").view(np.uint8).reshape(-1)
        out[offset : offset + raw.size] = raw
        offset += raw.size
    out[offset : offset + body.size] = body
    return out


def decode(buffer: np.ndarray, expected: PayloadShape, offset: int = 0) -> tuple[Payload, int]:
    """Read the payload at ``offset`` and check its header against ``expected``; return the payload
    and the offset of the next one. Scales and duplicates are checked by ``server.payloads.read_round``."""
    left = buffer.size - offset
    if left < HEADER_SIZE:
        raise PayloadError(f"payload at byte {offset}: truncated header ({left} of {HEADER_SIZE} bytes)")
    magic, version, kind, _, client_id, num_scales, update_size, dense_size, weight, loss = (
        _HEADER.unpack_from(buffer, offset)  # type: ignore[arg-type]  # ndarray: see encode
    )
    if magic != MAGIC:
        raise PayloadError(f"payload at byte {offset}: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise PayloadError(f"payload at byte {offset}: format version {version}, expected {VERSION}")
    where = f"payload at byte {offset} (client {client_id})"
    header = (kind, num_scales, update_size, dense_size)
    if header != (expected.kind, expected.num_scales, expected.update_size, expected.dense_size):
        raise PayloadError(f"{where}: {_mismatch(header, expected)}")
    if not 0 < weight < math.inf:
        raise PayloadError(f"{where}: aggregation weight {weight}, expected a finite number > 0")
    size = expected.size
    if left < size:
        raise PayloadError(f"{where}: truncated ({left} of {size} bytes)")
    start = offset + HEADER_SIZE
    floats = np.frombuffer(buffer, dtype="<f4", count=num_scales + dense_size, offset=start)
    body_start = start + 4 * floats.size
    body = buffer[body_start : body_start + _body_size(expected.kind, update_size)]
    if expected.kind is BodyKind.FLOAT32:
        body = np.frombuffer(buffer, dtype="<f4", count=update_size, offset=body_start)
    payload = Payload(
        client_id, weight, loss, expected.kind, floats[:num_scales], floats[num_scales:], body, update_size
    )
    return payload, offset + size


def _mismatch(header: tuple[int, int, int, int], expected: PayloadShape) -> str:
    """Why a header's (kind, S, d, D) differs from the expected shape."""
    kind, num_scales, update_size, dense_size = header
    if kind not in _KINDS:
        return f"unknown body kind {kind}"
    if kind != expected.kind:
        return f"body kind {BodyKind(kind).name}, this run's algorithm sends {expected.kind.name}"
    if num_scales != expected.num_scales:
        return f"{num_scales} scales, this run's model and algorithm send {expected.num_scales}"
    if update_size != expected.update_size:
        return f"update size d = {update_size}, the model's binarized tensors have {expected.update_size}"
    return f"dense size D = {dense_size}, the model's dense tensors have {expected.dense_size}"
