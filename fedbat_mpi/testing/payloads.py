"""Client payloads as the clients send them, a deterministic function of the client id, and the server
step written out per tensor in float64 (docs/FEDBAT.md §1.8), against which the aggregation is checked."""

import numpy as np
import torch

from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.wire import codec
from fedbat_mpi.wire.rule import ServerRule


def model_layout(model: str, num_classes: int = 10, seed: int = 0) -> tuple[ModelLayout, torch.nn.Module]:
    """A freshly built model, initialised from ``seed`` (torch's global generator is left as it was),
    and its layout: the sizes that payloads of that model have."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, num_classes)
    return ModelLayout(net, binarized_names(net)), net


def make_payload(
    layout: ModelLayout, client_id: int, kind: codec.BodyKind = codec.BodyKind.SIGNS
) -> codec.Payload:
    """A realistic payload of client ``client_id``: fair-coin signs with step sizes in FedBAT's clamp
    range [5e-4, 5e-2] (``kind`` SIGNS), or FedAvg's N(0, 0.01) float32 update (FLOAT32); N(0, 1)
    BatchNorm tensors; an aggregation weight of 1..19 batches."""
    rng = np.random.default_rng(client_id)
    if kind is codec.BodyKind.SIGNS:
        scales = rng.uniform(5e-4, 5e-2, len(layout.binarized)).astype(np.float32)
        # Packed signs drawn as bytes, eight at once; bits past update_size are zero, as packbits leaves them.
        body = np.frombuffer(rng.bytes(-(-layout.update_size // 8)), dtype=np.uint8).copy()
        if layout.update_size % 8:
            body[-1] &= (0xFF << (8 - layout.update_size % 8)) & 0xFF
    else:
        scales = np.zeros(0, dtype=np.float32)
        body = rng.normal(0, 1e-2, layout.update_size).astype(np.float32)
    dense = rng.normal(0, 1, layout.dense_size).astype(np.float32)
    weight = float(rng.integers(1, 20))
    return codec.Payload(
        client_id, weight, float(rng.random()), kind, scales, dense, body, layout.update_size
    )


def reference_aggregate(
    layout: ModelLayout,
    global_vector: np.ndarray,
    payloads: list[codec.Payload],
    rule: ServerRule = ServerRule.WEIGHTED_SUM,
    server_lr: float = 1.0,
) -> np.ndarray:
    """The new global model, per tensor in float64. Binarized tensors move by the weighted mean of the
    clients' updates (sign times step size, or float32 values); under ``MAJORITY_VOTE`` by ``server_lr``
    times the sign of the clients' vote count (0 on a tie), under ``MEAN_OF_SIGNS`` by ``server_lr``
    times the plain mean of sign times step size. Dense tensors become the weighted mean."""
    total = sum(p.weight for p in payloads)
    new = global_vector.astype(np.float64)
    for seg in layout.dense:
        new[seg.global_offset : seg.global_offset + seg.size] = 0
    votes = np.zeros(layout.update_size)
    for p in payloads:
        share = p.weight / total
        if p.kind is codec.BodyKind.SIGNS:
            values = np.unpackbits(p.body, count=p.update_size).astype(np.float64) * 2 - 1
            votes += values
        else:
            values = p.body.astype(np.float64)
        factor = {ServerRule.WEIGHTED_SUM: share, ServerRule.MAJORITY_VOTE: 0.0,
                  ServerRule.MEAN_OF_SIGNS: server_lr / len(payloads)}[rule]  # fmt: skip
        for index, seg in enumerate(layout.binarized):
            scale = p.scales[index] if p.kind is codec.BodyKind.SIGNS else 1.0
            update = factor * scale * values[seg.offset : seg.offset + seg.size]
            new[seg.global_offset : seg.global_offset + seg.size] += update
        for seg in layout.dense:
            new[seg.global_offset : seg.global_offset + seg.size] += (
                share * p.dense[seg.offset : seg.offset + seg.size]
            )
    if rule is ServerRule.MAJORITY_VOTE:
        for seg in layout.binarized:
            vote = votes[seg.offset : seg.offset + seg.size]
            new[seg.global_offset : seg.global_offset + seg.size] += server_lr * np.sign(vote)
    return new
