"""How rank 0 turns a round's sign bodies into the model step: each algorithm declares its rule.

With ``b_{k,i}`` in {-1, +1} client k's sign of entry i, ``alpha_{k,l}`` its scale of tensor l,
``p_k`` the normalised aggregation weights, ``n`` the round's clients and ``eta`` the algorithm's
server step size (``Algorithm.server_lr``):

=================  ===========================================================================
``WEIGHTED_SUM``   ``w_i += sum_k p_k alpha_{k,l} b_{k,i}`` (float32 bodies: ``sum_k p_k d_{k,i}``):
                   FedBAT, FedAvg and the per-tensor scaled sign baselines (docs/FEDBAT.md §1.8).
``MAJORITY_VOTE``  ``w_i += eta * sign(sum_k b_{k,i})``, ``sign(0) = 0`` (a tie moves nothing):
                   every client has one vote, whatever its weight, and scales are not read.
``MEAN_OF_SIGNS``  ``w_i += eta * (1/n) sum_k alpha_{k,l} b_{k,i}``: the plain mean over the
                   round's clients, whatever their weights.
=================  ===========================================================================

Dense (BatchNorm) tensors become ``sum_k p_k dense_k`` under every rule.
"""

from enum import Enum


class ServerRule(Enum):
    WEIGHTED_SUM = "weighted-sum"
    MAJORITY_VOTE = "majority-vote"
    MEAN_OF_SIGNS = "mean-of-signs"
