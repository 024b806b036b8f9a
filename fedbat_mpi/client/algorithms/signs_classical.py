"""The sign baselines in their classical forms: no per-client scale, a server step size instead.

Both train like FedAvg (local SGD from the global model) and compress each client's finished update
``d = w_end - w_start`` of the binarized tensors to one bit per entry, in the same wire body as the
other sign baselines. What differs from ``signs.py`` is the server step (``wire/rule.py``), declared
here and applied by rank 0:

``signsgd-mv``
    SignSGD with majority vote: Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: compressed
    optimisation for non-convex problems", ICML 2018 (its distributed algorithm by majority vote), and
    Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with majority vote is communication
    efficient and fault tolerant", ICLR 2019 (Algorithm 1, Signum with majority vote; signSGD is its
    case without momentum): each worker sends ``sign(g_k)``, the server applies
    ``w <- w - eta * sign(sum_k sign(g_k))``. Here, as in federated use, the local update
    ``d_k`` (a descent direction, so the minus sign goes) stands for ``-g_k``: clients send ``sign(d_k)``
    with scale 1 and rank 0 adds ``eta * sign(sum_k sign(d_k))`` (``MAJORITY_VOTE``). Every client has
    one vote, as in the papers, so aggregation weights are not used for the vote; a tie
    (``sum = 0``, possible with an even number of clients) moves nothing. ``eta`` is
    ``--mv-server-lr``, in units of the weights.
``z-signfedavg``
    z-SignFedAvg: Tang, Wang & Chang, "z-SignFedAvg: a unified stochastic sign-based compression for
    federated learning", arXiv 2302.02589, 2023. Client k sends ``sign(d_k + sigma xi_k)``
    and the scale ``sigma``, with ``xi_k`` i.i.d. from the z-distribution, density proportional to
    ``exp(-|x|^z / z)``: z = 1 Laplace(0, 1), z = 2 N(0, 1), z = inf uniform on [-1, 1]
    (``--z-exponent``), and one noise scale ``sigma`` for every weight of every client
    (``--z-sigma``, in units of the weights). Rank 0 adds ``eta * (1/n) sum_k sigma sign(...)``
    (``MEAN_OF_SIGNS``), the plain mean over the round's n clients as in the paper's objective
    ``(1/n) sum_i f_i``; ``eta`` is ``--z-server-lr`` (dimensionless). With uniform noise
    ``E[sigma sign(d + sigma xi)] = d`` wherever ``|d| <= sigma``, so ``eta = 1`` is FedAvg's step in
    expectation there; Gaussian noise shrinks small entries by ``sqrt(2/pi)`` ≈ 0.80.

``sign(0)`` is sent as +1. As in ``signs.py``, a group's uploads are computed together (on the CPU in
chunks of rows, ``signs.by_row_chunks``), and a client
draws its noise in one call from its upload stream (seed, round, client id), in the update's dtype:
z = inf ``2 * uniform_ - 1`` over its whole update (binarized tensors in state_dict order); z = 2
``normal_`` over its whole update; z = 1 ``E1 - E2``, two exponential draws per entry, from one
``exponential_`` over twice the update that holds, tensor by tensor, the tensor's ``E1`` then its ``E2``.
On the CPU (mt19937) ``uniform_`` and ``exponential_`` draw entry by entry, so these are the numbers
that draws per tensor in state_dict order give; ``normal_`` fills 16 entries at a time (and redraws the
last 16 of a fill whose size is not a multiple of 16), so it gives them when every binarized tensor's
size is a multiple of 16, as in every model here (``models.py``), not in general. On a GPU (Philox)
the stream is this one.
"""

import torch

from fedbat_mpi.wire.rule import ServerRule

from .base import HyperParameter, positive_option, register
from .signs import Compressed, PostTrainingSign, Sizes, fill_rows

Z_EXPONENTS = ("1", "2", "inf")


@register
class SignSGDMajorityVote(PostTrainingSign):
    name = "signsgd-mv"
    server_rule = ServerRule.MAJORITY_VOTE
    server_lr_option = "mv_server_lr"
    hyperparameters = (
        positive_option("mv_server_lr", 3e-3, "SignSGD with majority vote: the server step size (each weight moves "
                        "by this much, or not at all on a tie)"),
    )  # fmt: skip
    mv_server_lr: float

    def compress(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> Compressed:
        return d.new_ones(len(d), len(sizes)), d >= 0


@register
class ZSignFedAvg(PostTrainingSign):
    name = "z-signfedavg"
    server_rule = ServerRule.MEAN_OF_SIGNS
    server_lr_option = "z_server_lr"
    hyperparameters = (
        positive_option("z_sigma", 1e-2, "z-SignFedAvg: the noise scale sigma, one for every weight (units of the weights)"),
        HyperParameter("z_exponent", str, "inf", "z-SignFedAvg: the noise's z, density ~ exp(-|x|^z / z): 1 (Laplace), "
                       "2 (Gaussian) or inf (uniform on [-1, 1])", f"one of {', '.join(Z_EXPONENTS)}",
                       lambda value: value in Z_EXPONENTS),
        positive_option("z_server_lr", 1.0, "z-SignFedAvg: the server learning rate applied to the clients' mean "
                        "of sigma * sign (dimensionless)"),
    )  # fmt: skip
    z_sigma: float
    z_exponent: str
    z_server_lr: float

    def compress(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> Compressed:
        sigmas = d.new_full((len(d), len(sizes)), self.z_sigma)  # made on d's device: no copy from host memory
        return sigmas, self.noise(d, sizes, uploads).mul_(self.z_sigma).add_(d) >= 0  # d + sigma * xi, in place

    def noise(self, d: torch.Tensor, sizes: Sizes, uploads: list[torch.Generator]) -> torch.Tensor:
        """``xi`` from the z-distribution, shaped like the group's updates ``d``."""
        if self.z_exponent == "inf":
            return fill_rows(torch.empty_like(d), uploads).mul_(2).sub_(1)
        if self.z_exponent == "2":
            return fill_rows(torch.empty_like(d), uploads, torch.Tensor.normal_)
        pairs = fill_rows(d.new_empty(len(d), 2 * d.shape[1]), uploads, torch.Tensor.exponential_)
        parts = pairs.split([size for size in sizes for _ in range(2)], dim=1)  # E1, E2 of each tensor
        return torch.cat(parts[0::2], dim=1) - torch.cat(parts[1::2], dim=1)
