"""Rank 0 reads a round's payloads at once: one check per field over all clients, views into the buffer.

Every payload of a run has the same size (``PayloadShape.size``), so the gathered buffer is a
``(clients, size)`` matrix whose headers, scales, dense tensors and bodies are strided views
(:func:`read_round`). The checks are ``wire/codec.py``'s: a truncated buffer, bad magic, another
format version, an unknown body kind, a header whose body kind, S, d or D differs from the run's shape,
an aggregation weight that is not finite and > 0, a client id sent twice, and a scale that is not finite
and >= 0 (zero is a zero update). The first offending payload in buffer order is named, with its byte
offset and client. The other float32 values (dense tensors, float32 bodies) are not scanned here: the
aggregation checks that the new global model is finite and, only when it is not, names the client
responsible (:func:`non_finite_error`).
"""

from dataclasses import dataclass

import numpy as np

from fedbat_mpi.wire import codec

HEADER = np.dtype(
    [
        ("magic", "S4"), ("version", "<u2"), ("kind", "u1"), ("reserved", "u1"), ("client_id", "<u4"),
        ("num_scales", "<u4"), ("update_size", "<u8"), ("dense_size", "<u8"), ("weight", "<f8"),
        ("train_loss", "<f8"),
    ]
)  # fmt: skip
assert HEADER.itemsize == codec.HEADER_SIZE
# The step-size options of a run without a server step size (``Algorithm.step_size_options``).
LR_ONLY = ("--lr",)


def diverged_hint(step_sizes: tuple[str, ...]) -> str:
    """What a non-finite value in a payload most often means, naming the run's step-size options."""
    return f" (training diverged? a lower {' or '.join(step_sizes)} may help)"


@dataclass(frozen=True)
class RoundPayloads:
    """One round's checked payloads as views into the received buffer (row ``r`` at byte ``r * size``)."""

    shape: codec.PayloadShape
    client_ids: np.ndarray  # uint32[n], buffer order
    weights: np.ndarray  # float64[n]
    train_losses: np.ndarray  # float64[n]
    scales: np.ndarray  # float32[n, S]
    dense: np.ndarray  # float32[n, D]
    body: np.ndarray  # uint8[n, ceil(d/8)] packed signs, or float32[n, d]
    order: np.ndarray  # int64[n]: the rows in client-id order

    def __len__(self) -> int:
        return self.client_ids.size

    @property
    def sorted_ids(self) -> list[int]:
        return self.client_ids[self.order].tolist()

    @property
    def uplink_bytes(self) -> int:
        return len(self) * self.shape.size

    @property
    def train_loss(self) -> float:
        """The clients' training losses averaged with their aggregation weights (client-id order)."""
        weights = self.weights[self.order]
        return float(np.dot(weights / weights.sum(), self.train_losses[self.order]))


def read_round(
    buffer: np.ndarray, shape: codec.PayloadShape, step_sizes: tuple[str, ...] = LR_ONLY
) -> RoundPayloads:
    """The payloads of a round's buffer of concatenated payloads, checked as the module docstring says;
    ``codec.PayloadError`` naming the first bad payload in buffer order (and, for a non-finite scale,
    the run's ``step_sizes`` options)."""
    size = shape.size
    count = buffer.size // size
    rows = buffer[: count * size].reshape(count, size)
    header = rows[:, : codec.HEADER_SIZE].view(HEADER)[:, 0]
    ids = header["client_id"].astype(np.int64)
    order = np.argsort(ids, kind="stable")
    bad = (
        (header["magic"] != codec.MAGIC)
        | (header["version"] != codec.VERSION)
        | (header["kind"] != shape.kind)
        | (header["num_scales"] != shape.num_scales)
        | (header["update_size"] != shape.update_size)
        | (header["dense_size"] != shape.dense_size)
        | ~((header["weight"] > 0) & (header["weight"] < np.inf))
    )
    repeat = np.zeros(count, dtype=bool)  # a row whose client id an earlier row sent
    repeat[order[1:]] = ids[order[1:]] == ids[order[:-1]]
    faulty = np.flatnonzero(bad | repeat)
    if faulty.size:
        row = int(faulty[0])
        if bad[row]:
            codec.decode(buffer, shape, row * size)  # raises, naming the fault
        first = int(order[np.searchsorted(ids[order], ids[row])])  # the stable sort puts the earliest first
        raise codec.PayloadError(
            f"payload at byte {row * size} (client {ids[row]}): duplicate client id "
            f"(first sent at byte {first * size})"
        )
    if buffer.size > count * size:
        codec.decode(buffer, shape, count * size)  # the truncated last payload: raises
    start = codec.HEADER_SIZE
    scales = rows[:, start : start + 4 * shape.num_scales].view("<f4")
    start += 4 * shape.num_scales
    dense = rows[:, start : start + 4 * shape.dense_size].view("<f4")
    start += 4 * shape.dense_size
    if shape.kind is codec.BodyKind.SIGNS:
        body = rows[:, start : start + (shape.update_size + 7) // 8]
    else:
        body = rows[:, start : start + 4 * shape.update_size].view("<f4")
    valid = (scales >= 0) & (scales < np.inf)  # NaN fails both comparisons
    if not valid.all():
        row = int(np.flatnonzero(~valid.all(axis=1))[0])
        index = int(np.argmin(valid[row]))
        value = scales[row, index]
        hint = diverged_hint(step_sizes) if not np.isfinite(value) else ""
        raise codec.PayloadError(f"payload at byte {row * size} (client {ids[row]}): scale {index} is {value}, "
                                 f"expected a finite number >= 0{hint}")  # fmt: skip
    return RoundPayloads(
        shape, header["client_id"], header["weight"], header["train_loss"], scales, dense, body, order
    )


def non_finite_error(payloads: RoundPayloads, step_sizes: tuple[str, ...] = LR_ONLY) -> codec.PayloadError:
    """Why a round's new global model is not finite: the first client (in id order) with a non-finite
    dense or update value (weights and scales were checked by :func:`read_round`), else overflow. Row
    by row: run only after the cheap check failed."""
    for row in payloads.order:
        where = f"client {payloads.client_ids[row]}"
        arrays = {"dense value": payloads.dense[row]}
        if payloads.shape.kind is codec.BodyKind.FLOAT32:
            arrays["update value"] = payloads.body[row]
        for name, values in arrays.items():
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                index = int(bad[0])
                cause = f"{name} {index} is {values[index]}"
                return codec.PayloadError(f"{where}: {cause}; the new global model would not be finite"
                                          + diverged_hint(step_sizes))  # fmt: skip
    return codec.PayloadError("the new global model is not finite though every payload's values are: overflow"
                              + diverged_hint(step_sizes))  # fmt: skip
