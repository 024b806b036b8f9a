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

``sign(0)`` is sent as +1. Noise is drawn per binarized tensor in state_dict order from the client's
upload stream (seed, round, client id), in the update's dtype: z = inf ``2 * rand - 1``; z = 2
``randn``; z = 1 the difference of two ``exponential_`` draws (first one for the whole tensor, then
the other).
"""

from typing import Any

import torch

from fedbat_mpi.wire.rule import ServerRule

from .base import HyperParameter, finite_at_least, register
from .signs import PostTrainingSign

Z_EXPONENTS = ("1", "2", "inf")


def _positive(name: str, default: float, help: str) -> HyperParameter:
    return HyperParameter(name, float, default, help, "a positive finite number", finite_at_least(0.0, inclusive=False))


@register
class SignSGDMajorityVote(PostTrainingSign):
    name = "signsgd-mv"
    server_rule = ServerRule.MAJORITY_VOTE
    hyperparameters = (
        _positive("mv_server_lr", 3e-3, "SignSGD with majority vote: the server step size (each weight moves by "
                  "this much, or not at all on a tie)"),
    )  # fmt: skip
    mv_server_lr: float

    @property
    def server_lr(self) -> float:
        return self.mv_server_lr

    def compress(self, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones((), dtype=d.dtype, device=d.device), d >= 0


@register
class ZSignFedAvg(PostTrainingSign):
    name = "z-signfedavg"
    server_rule = ServerRule.MEAN_OF_SIGNS
    hyperparameters = (
        _positive("z_sigma", 1e-2, "z-SignFedAvg: the noise scale sigma, one for every weight (units of the weights)"),
        HyperParameter("z_exponent", str, "inf", "z-SignFedAvg: the noise's z, density ~ exp(-|x|^z / z): 1 (Laplace), "
                       "2 (Gaussian) or inf (uniform on [-1, 1])", f"one of {', '.join(Z_EXPONENTS)}",
                       lambda value: value in Z_EXPONENTS),
        _positive("z_server_lr", 1.0, "z-SignFedAvg: the server learning rate applied to the clients' mean of "
                  "sigma * sign (dimensionless)"),
    )  # fmt: skip
    z_sigma: float
    z_exponent: str
    z_server_lr: float

    @property
    def server_lr(self) -> float:
        return self.z_server_lr

    def compress(self, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.full((), self.z_sigma, dtype=d.dtype, device=d.device)  # no copy from host memory
        return sigma, d + self.z_sigma * self.noise(d, generator) >= 0

    def noise(self, d: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``xi`` from the z-distribution, shaped like ``d``."""
        like: dict[str, Any] = dict(dtype=d.dtype, device=d.device)
        if self.z_exponent == "inf":
            return torch.rand(d.shape, generator=generator, **like) * 2 - 1
        if self.z_exponent == "2":
            return torch.randn(d.shape, generator=generator, **like)
        first = torch.empty(d.shape, **like).exponential_(generator=generator)
        return first - torch.empty(d.shape, **like).exponential_(generator=generator)
