"""Rank 0's server step: the client updates combined by the algorithm's rule and added to the global model.

Under ``ServerRule.WEIGHTED_SUM``, for sign bodies ``w_l <- w_l + sum_k p_k alpha_{k,l} b_{k,l}`` per
binarized tensor ``l`` (FEDBAT.md §1.8), for float32 bodies ``w <- w + sum_k p_k delta_k``;
``MAJORITY_VOTE`` and ``MEAN_OF_SIGNS`` (sign bodies, with a server step size) are defined in
``wire/rule.py``. Dense tensors become ``sum_k p_k dense_k`` under every rule. Weights ``p_k`` are the
clients' weights normalised to sum to 1. Clients are summed in client-id order, so the result does not
depend on which rank hosted which client.

The payloads come checked by ``codec.decode_all``; their float32 arrays are not scanned one by one.
Instead the new global vector is checked once (``np.isfinite``), and only if it is not finite are the
payloads searched for the client responsible (``codec.PayloadError``), so no NaN model goes out.
"""

import numpy as np

from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.wire.codec import BodyKind, Payload, non_finite_error
from fedbat_mpi.wire.rule import ServerRule


def aggregate(
    layout: ModelLayout,
    global_vector: np.ndarray,
    payloads: list[Payload],
    rule: ServerRule = ServerRule.WEIGHTED_SUM,
    server_lr: float = 1.0,
) -> np.ndarray:
    """The new global vector (float32) after one round's ``payloads``; PayloadError if it is not finite."""
    if not payloads:
        raise ValueError("no client payloads to aggregate")
    payloads = sorted(payloads, key=lambda p: p.client_id)
    weights = np.array([p.weight for p in payloads], dtype=np.float64)
    shares = weights / weights.sum()
    update = np.zeros(layout.update_size, dtype=np.float32)
    dense = np.zeros(layout.dense_size, dtype=np.float32)
    sizes = [seg.size for seg in layout.binarized]
    # Under MAJORITY_VOTE the sum is of unscaled signs (one vote each), under MEAN_OF_SIGNS of 1/n shares.
    factors = np.full(len(payloads), 1 / len(payloads)) if rule is ServerRule.MEAN_OF_SIGNS else shares
    for share, factor, payload in zip(shares, factors, payloads):
        if payload.kind is BodyKind.SIGNS:
            signs = payload.signs().astype(np.float32) * 2 - 1
            update += signs if rule is ServerRule.MAJORITY_VOTE else signs * np.repeat(
                (factor * payload.scales).astype(np.float32), sizes)
        else:
            update += np.float32(share) * payload.body
        dense += np.float32(share) * payload.dense
    if rule is ServerRule.MAJORITY_VOTE:
        update = np.sign(update)  # a tie (0) moves nothing
    if rule is not ServerRule.WEIGHTED_SUM:
        update *= np.float32(server_lr)
    new = global_vector.astype(np.float32, copy=True)
    for seg in layout.binarized:
        new[seg.global_offset : seg.global_offset + seg.size] += update[seg.offset : seg.offset + seg.size]
    for seg in layout.dense:
        new[seg.global_offset : seg.global_offset + seg.size] = dense[seg.offset : seg.offset + seg.size]
    if not np.isfinite(new).all():
        raise non_finite_error(payloads)
    return new
