"""The stochastic binarizer, its designed derivatives, the step size and FedBAT's warm-up."""

import math

import pytest
import torch

from fedbat_mpi.client import binarize as binarize_module
from fedbat_mpi.client.algorithms import LocalTask
from fedbat_mpi.client.algorithms import fedbat as fedbat_module
from fedbat_mpi.client.algorithms.fedbat import FedBAT
from fedbat_mpi.client.binarize import ALPHA_MAX, ALPHA_MIN, binarize_segments, sample_signs, step_size
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rng import Stream


def binarize_with_noise(m: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``B(m; alpha)`` of one tensor with one step size, for given uniform noise ``u`` (shaped like ``m``):
    the training code's operator on a group of one client with one segment."""
    flat = binarize_segments(m.reshape(1, -1), alpha.reshape(1, 1), u.reshape(1, -1), (m.numel(),))
    return flat.reshape(m.shape)


def uniform_noise(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U[0, 1) noise shaped like ``m``, drawn from ``generator``."""
    return torch.rand(m.shape, generator=generator, device=m.device, dtype=m.dtype)


def binarize(m: torch.Tensor, alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``B(m; alpha)`` with fresh noise from ``generator``; differentiable in ``m`` and ``alpha``."""
    return binarize_with_noise(m, alpha, uniform_noise(m, generator))


def test_values_are_exactly_plus_or_minus_alpha():
    generator = torch.Generator().manual_seed(1)
    m = torch.randn(10_000) * 0.05
    alpha = torch.tensor(0.03)
    out = binarize(m, alpha, generator)
    assert torch.all((out == alpha) | (out == -alpha))


def test_empirical_mean_approaches_clipped_update():
    alpha = torch.tensor(0.02)
    m = torch.linspace(-0.04, 0.04, 41)
    generator = torch.Generator().manual_seed(2)
    draws = 20_000
    mean = torch.stack([binarize(m, alpha, generator) for _ in range(draws)]).mean(0)
    expected = m.clamp(-alpha, alpha)
    # Var[B] = alpha^2 - m^2 inside, so 5 standard errors of alpha/sqrt(draws) bound every entry.
    assert torch.all((mean - expected).abs() <= 5 * alpha / math.sqrt(draws))
    outside = m.abs() > alpha
    assert torch.equal(mean[outside], torch.sign(m[outside]) * alpha)


def test_fresh_noise_on_every_call():
    generator = torch.Generator().manual_seed(3)
    m, alpha = torch.zeros(1000), torch.tensor(0.01)
    assert not torch.equal(binarize(m, alpha, generator), binarize(m, alpha, generator))


def test_gradients_match_the_designed_derivatives_on_a_hand_computed_case():
    # alpha = 0.1; x = m / alpha = [-3, -1, 0.5, 0.5, 2]; u chosen so the inside signs are known.
    m = torch.tensor([-0.3, -0.1, 0.05, 0.05, 0.2], requires_grad=True)
    alpha = torch.tensor(0.1, requires_grad=True)
    u = torch.tensor([0.9, 0.5, 0.2, 0.3, 0.0])
    # xi = floor((x + 1)/2 + u): [floor(-1+0.9), floor(0+0.5), floor(0.75+0.2), floor(0.75+0.3), floor(1.5)]
    #    = [-1 -> 0, 0, 0, 1, 1 -> 1]  so b = [-1, -1, -1, +1, +1]
    out = binarize_with_noise(m, alpha, u)
    assert torch.allclose(out, torch.tensor([-0.1, -0.1, -0.1, 0.1, 0.1]))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (out * g).sum().backward()
    assert m.grad is not None and alpha.grad is not None
    # dL/dm = g * 1{|x| <= 1}: only x = -1, 0.5, 0.5 pass.
    assert torch.allclose(m.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0]))
    # dL/dalpha = sum g*h, h = sign(x) outside, b - x inside:
    # 1*(-1) + 2*(-1 - (-1)) + 3*(-1 - 0.5) + 4*(1 - 0.5) + 5*(+1) = -1 + 0 - 4.5 + 2 + 5 = 1.5
    assert alpha.grad.item() == pytest.approx(1.5, abs=1e-5)


def test_step_size_gradient_chains_through_exp_and_clamp():
    rho = 6.0
    alpha0 = torch.tensor(0.01)
    s = torch.tensor(0.05, requires_grad=True)
    alpha = step_size(alpha0, s, rho)
    assert alpha.item() == pytest.approx(0.01 * math.exp(0.3), rel=1e-6)
    alpha.backward()
    assert s.grad is not None
    assert s.grad.item() == pytest.approx(rho * alpha.item(), rel=1e-6)  # dalpha/ds = rho * alpha
    clamped = torch.tensor(1.0, requires_grad=True)
    step_size(alpha0, clamped, rho).backward()
    assert clamped.grad is not None and clamped.grad.item() == 0.0  # above 5e-2: no gradient


@pytest.mark.parametrize("s", [-100.0, -1.0, 0.0, 1.0, 100.0])
@pytest.mark.parametrize("alpha0", [0.0, 1e-6, 1e-2, 10.0])
def test_step_size_stays_inside_its_clamp(alpha0, s):
    alpha = step_size(torch.tensor(alpha0), torch.tensor(s), 6.0)
    assert torch.tensor(ALPHA_MIN) <= alpha <= torch.tensor(ALPHA_MAX)


def test_upload_signs_follow_the_same_rule():
    generator = torch.Generator().manual_seed(4)
    m = torch.tensor([0.5, -0.5, 0.0])
    alpha = torch.tensor([[0.1]])
    signs = torch.cat([sample_signs(m[None], alpha, uniform_noise(m[None], generator), (3,)) for _ in range(2000)]).float()
    assert signs[:, 0].min() == 1 and signs[:, 1].max() == 0  # |m| > alpha: deterministic
    assert abs(signs[:, 2].mean().item() - 0.5) < 0.05


def _tiny_task(num_steps: int) -> tuple[LocalTask, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3, bias=False),
    )  # fmt: skip
    layout = ModelLayout(model, ["0.weight", "4.weight"])
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))

    def generator(stream: Stream) -> torch.Generator:
        return torch.Generator().manual_seed(int(stream))

    task = LocalTask(0, model, layout, lambda: iter([(x, y)] * num_steps), num_steps, 0.1, generator)
    return task, model


@pytest.mark.parametrize("num_steps,warmup,expected_warm",
                         [(10, 0.5, 5), (10, 0.35, 3), (7, 0.5, 3), (4, 0.0, 0), (100, 0.57, 57), (90, 0.7, 63)])
def test_warmup_switches_after_exactly_floor_phi_k_steps(monkeypatch, num_steps, warmup, expected_warm):
    task, _ = _tiny_task(num_steps)
    calls = []

    def spy(m, alpha, u, sizes):
        calls.append((m.detach().clone(), alpha.detach().clone(), sizes))
        return binarize_module.binarize_segments(m, alpha, u, sizes)

    monkeypatch.setattr(fedbat_module, "binarize_segments", spy)
    [update] = FedBAT(rho=6.0, warmup=warmup).train([task])
    assert len(calls) == num_steps - expected_warm  # one call a binarized step, for all tensors
    # At the first binarized step s = 0, so alpha = clamp(alpha0) with alpha0 = mean|m| of the warm-up.
    m, alpha, sizes = calls[0]
    assert sizes == (4 * 1 * 3 * 3, 3 * 4 * 4 * 4) and alpha.shape == (1, 2)
    for t, part in enumerate(m[0].split(sizes)):
        expected = min(max(part.abs().mean().item(), ALPHA_MIN), ALPHA_MAX)
        assert alpha[0, t].item() == pytest.approx(expected, rel=1e-6)
    assert torch.all((update.scales >= torch.tensor(ALPHA_MIN)) & (update.scales <= torch.tensor(ALPHA_MAX)))
    assert update.body.dtype == torch.bool and update.body.numel() == task.layout.update_size
