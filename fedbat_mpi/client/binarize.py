"""FedBAT's stochastic binarizer with its designed derivatives, and the learnable step size.

Forward (docs/FEDBAT.md §1.3): with u ~ U[0, 1) drawn afresh on every call,
``xi = clip(floor((m/alpha + 1)/2 + u), 0, 1)`` and ``B(m; alpha) = alpha * (2 xi - 1)``,
so that ``E[B] = clip(m, -alpha, alpha)``.

Backward (§1.4), with ``x = m/alpha``, ``b = 2 xi - 1`` the realised sign and ``g = dL/dB``:
``dL/dm = g * 1{|x| <= 1}`` and ``dL/dalpha = sum(g * h)`` where ``h = b - x`` inside
``[-1, 1]`` and ``sign(x)`` outside.
"""

import functools
from collections.abc import Callable
from typing import Any

import torch

ALPHA_MIN = 5e-4
ALPHA_MAX = 5e-2
_MAX_EXPONENT = 80.0


def step_size(alpha0: torch.Tensor, s: torch.Tensor, rho: float) -> torch.Tensor:
    """The learnable step size ``clamp(alpha0 * exp(rho * s), 5e-4, 5e-2)``.

    The exponent is capped at 80 (float32's exp overflows near 88.7): past it the clamp holds alpha
    at 5e-2 anyway, and a zero ``alpha0`` gives 5e-4 instead of ``0 * inf = nan``.
    """
    return torch.clamp(alpha0 * torch.exp(torch.clamp(rho * s, max=_MAX_EXPONENT)), ALPHA_MIN, ALPHA_MAX)


def _scaled(m: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, v)``: the scaled update ``x = m/alpha`` and ``v = (x + 1)/2 + u``, whose floor (clipped to
    [0, 1]) is ``xi``: ``xi = 1`` exactly when ``v >= 1``. ``v`` is ``u + 0.5 * (x + 1)`` in one
    operation: halving is exact (``x + 1`` is 0 or at least 2^-24 in size), so the one rounding is the
    same as after a division by 2, fused multiply-add or not."""
    x = m / alpha
    return x, torch.add(u, torch.add(x, 1), alpha=0.5)


class _StochasticBinarize(torch.autograd.Function):
    """``alpha * b`` with the designed derivatives, for the rows of ``m`` (``G x P``: a group's flat
    updates, each cut into segments of ``sizes`` entries, one per tensor) and one step size per row and
    segment (``alpha``: ``G x T``); ``alpha``'s gradient sums over the entries of its segment. A whole
    group's binarizer is one handful of operations, whatever the number of tensors."""

    @staticmethod
    def forward(
        m: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor, sizes: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        entries = per_entry(alpha, sizes)
        x, v = _scaled(m, entries, u)
        # b = +1 where v >= 1, else -1: the sign of v - 1 (exact near 1, +0 at v = 1). On the CPU,
        # ``torch.where`` with a bool condition took 5x as long as this.
        b = torch.copysign(_one(m.dtype, m.device), v.sub_(1))
        return entries * b, x, b

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        _, x, b = output
        ctx.save_for_backward(x, b)
        ctx.mark_non_differentiable(x, b)
        ctx.sizes = inputs[3]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[torch.Tensor, torch.Tensor, None, None]:  # type: ignore[override]
        x, b = ctx.saved_tensors
        inside = x.abs().le_(1)  # 1.0 inside [-1, 1], 0.0 outside, in x's float type
        grad_m = grad * inside
        # h = b - x inside [-1, 1] and sign(x) outside, where the sign is b (v >= 1 exactly when x > 1,
        # v < 1 when x < -1, for u in [0, 1)): h = b - x * inside, with no select (one addcmul: the
        # product is exact, so it rounds as the subtraction does).
        grad_h = torch.addcmul(b, x, inside, value=-1).mul_(grad)
        grad_alpha = per_segment(grad_h, ctx.sizes, lambda part: part.sum(1))
        return grad_m, grad_alpha, None, None


@functools.lru_cache(maxsize=8)
def _one(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-dimensional 1 on ``device``, made once (not a fill kernel at every step on a GPU)."""
    return torch.ones((), dtype=dtype, device=device)


def per_entry(alpha: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """``G x T`` values (e.g. step sizes, one per row and segment) repeated over their segments:
    ``G x sum(sizes)``, one concatenation of broadcast views (on the CPU 2-8x faster than a gather by
    a segment index)."""
    return torch.cat([alpha[:, t : t + 1].expand(-1, size) for t, size in enumerate(sizes)], dim=1)


def per_segment(values: torch.Tensor, sizes: tuple[int, ...], reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``G x T``: ``reduce`` (over dim 1) of each segment of ``sizes`` entries of the rows of ``values``
    (``G x sum(sizes)``), one reduction per segment for the whole group; the inverse of ``per_entry``."""
    return torch.stack([reduce(part) for part in values.split(sizes, dim=1)], dim=1)


def mean_magnitudes(values: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """``mean|values|`` of each row and segment (``G x T``): FedBAT's initial step sizes, the sign
    baselines' scales."""
    return per_segment(values.abs(), sizes, lambda part: part.mean(1))


def binarize_segments(m: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """``B(m; alpha)`` of a group's flat updates ``m`` (``G x P``), segment ``t`` of each row with step
    size ``alpha[:, t]``, for given uniform noise ``u`` (``G x P``)."""
    return _StochasticBinarize.apply(m, alpha, u, sizes)[0]


def sample_signs(m: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """A sample of the signs of ``B(m; alpha)`` for a group's flat updates (``G x P``, segments and step
    sizes as in ``binarize_segments``) from uniform noise ``u``: bool, True for +alpha."""
    with torch.no_grad():
        return _scaled(m, per_entry(alpha, sizes), u)[1] >= 1
