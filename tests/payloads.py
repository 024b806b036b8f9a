"""Deterministic client payloads for codec, aggregation and MPI tests (a function of the client id)."""

import numpy as np

from fedbat_mpi import codec
from fedbat_mpi.layout import ModelLayout


def make_payload(layout: ModelLayout, client_id: int, kind: codec.BodyKind) -> codec.Payload:
    rng = np.random.default_rng(client_id)
    if kind is codec.BodyKind.SIGNS:
        scales = rng.uniform(5e-4, 5e-2, len(layout.binarized)).astype(np.float32)
        body = codec.pack_signs(rng.random(layout.update_size) < 0.5)
    else:
        scales = np.zeros(0, dtype=np.float32)
        body = rng.normal(0, 1e-2, layout.update_size).astype(np.float32)
    dense = rng.normal(0, 1, layout.dense_size).astype(np.float32)
    weight = float(rng.integers(1, 20))
    return codec.Payload(client_id, weight, float(rng.random()), kind, scales, dense, body, layout.update_size)


def reference_aggregate(layout: ModelLayout, global_vector: np.ndarray, payloads: list[codec.Payload]) -> np.ndarray:
    """The server step written out per tensor in float64, as FEDBAT.md §1.8 states it."""
    total = sum(p.weight for p in payloads)
    new = global_vector.astype(np.float64)
    for seg in layout.dense:
        new[seg.global_offset : seg.global_offset + seg.size] = 0
    for p in payloads:
        share = p.weight / total
        if p.kind is codec.BodyKind.SIGNS:
            values = np.unpackbits(p.body, count=p.update_size).astype(np.float64) * 2 - 1
        else:
            values = p.body.astype(np.float64)
        for index, seg in enumerate(layout.binarized):
            scale = p.scales[index] if p.kind is codec.BodyKind.SIGNS else 1.0
            update = share * scale * values[seg.offset : seg.offset + seg.size]
            new[seg.global_offset : seg.global_offset + seg.size] += update
        for seg in layout.dense:
            new[seg.global_offset : seg.global_offset + seg.size] += share * p.dense[seg.offset : seg.offset + seg.size]
    return new
