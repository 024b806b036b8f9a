"""Plain float64 references for one client's local step of every algorithm.

Written from docs/FEDBAT.md (§1 FedBAT, §3 baselines) and the formulas that
``fedbat_mpi/client/algorithms/signs.py`` documents, without the package's algorithm code: the network runs
functionally (``F.conv2d``, a hand-written BatchNorm, ``F.linear``, ...) in float64, torch autograd
gives only the gradient of the loss w.r.t. the effective weights and BatchNorm parameters, and
FedBAT's designed derivatives (§1.4) are applied by hand. Random numbers are the documented float32
draws (``torch.rand(shape, generator=..., dtype=float32)``, one per binarized tensor in state_dict
order; z-SignFedAvg's Gaussian noise one over the whole update) from generators seeded like the
package's, then used in float64.

Every sign comes with a *margin*: the distance of its decision quantity from the threshold, made
dimensionless, so that a comparison can tell clear decisions from float-rounding coin flips.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ALPHA_MIN, ALPHA_MAX = 5e-4, 5e-2  # docs/FEDBAT.md §1.2
Batch = tuple[torch.Tensor, torch.Tensor]
Tensors = dict[str, torch.Tensor]


@dataclass
class Reference:
    """A reference client's upload (float64), with the margins of its signs."""

    scales: torch.Tensor  # one per binarized tensor (empty for FedAvg)
    body: torch.Tensor  # bool signs (True for +scale), or FedAvg's float update; flat, state_dict order
    margin: torch.Tensor | None  # per sign: distance of the decision quantity from its threshold
    dense: torch.Tensor  # BatchNorm weight, bias, running mean, running var after training, flat
    loss: float  # mean training loss over the local steps
    state: torch.Tensor | None = None  # EF-SignSGD's new error memory
    train_margin: float = math.inf  # FedBAT: the smallest margin of any sign drawn during training


def _batch_norm(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, stats: Tensors, name: str, bn: nn.BatchNorm2d
) -> torch.Tensor:
    """Training-mode BatchNorm: normalise with the biased batch variance; update the running
    statistics in ``stats`` with momentum and the unbiased variance, as torch does."""
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1]
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims, keepdim=True)
    shape = mean.shape
    momentum = bn.momentum
    assert momentum is not None, "no reference for a cumulative average (momentum=None)"
    with torch.no_grad():
        keep = 1 - momentum
        stats[f"{name}.running_mean"] = keep * stats[f"{name}.running_mean"] + momentum * mean.reshape(-1)
        unbiased = var.reshape(-1) * count / (count - 1)
        stats[f"{name}.running_var"] = keep * stats[f"{name}.running_var"] + momentum * unbiased
    return (x - mean) / torch.sqrt(var + bn.eps) * gamma.reshape(shape) + beta.reshape(shape)


def forward(model: nn.Sequential, weights: Tensors, stats: Tensors, x: torch.Tensor) -> torch.Tensor:
    """The logits of a Sequential of Conv2d/BatchNorm2d/ReLU/MaxPool2d/Flatten/Linear (bias-free
    conv/linear) with the given float64 weights, in training mode (updates ``stats``)."""
    for name, layer in model.named_children():
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, weights[f"{name}.weight"], stride=layer.stride, padding=layer.padding)
        elif isinstance(layer, nn.BatchNorm2d):
            x = _batch_norm(x, weights[f"{name}.weight"], weights[f"{name}.bias"], stats, name, layer)
        elif isinstance(layer, nn.ReLU):
            x = F.relu(x)
        elif isinstance(layer, nn.MaxPool2d):
            x = F.max_pool2d(x, layer.kernel_size, layer.stride)
        elif isinstance(layer, nn.Flatten):
            x = x.flatten(1)
        elif isinstance(layer, nn.Linear):
            x = F.linear(x, weights[f"{name}.weight"])
        else:
            raise TypeError(f"no reference for {type(layer).__name__}")
    return x


def _gradients(model: nn.Sequential, weights: Tensors, stats: Tensors, batch: Batch) -> tuple[float, Tensors]:
    """The cross-entropy of one batch and its gradient w.r.t. every (effective) weight."""
    leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
    loss = F.cross_entropy(forward(model, leaves, stats, batch[0].double()), batch[1])
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.item(), dict(zip(leaves, grads))


def _float64_state(model: nn.Module) -> tuple[Tensors, Tensors]:
    """The model's parameters and floating buffers, copied to float64."""
    params = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().double().clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return params, buffers


def _dense(model: nn.Module, names: list[str], params: Tensors, buffers: Tensors) -> torch.Tensor:
    """The non-binarized floating tensors in state_dict order, flat."""
    values = {**params, **buffers}
    return torch.cat([values[n].reshape(-1) for n in model.state_dict() if n in values and n not in names])


def local_sgd(
    model: nn.Sequential, batches: list[Batch], lr: float
) -> tuple[Tensors, Tensors, Tensors, float]:
    """Plain SGD on every parameter (docs/FEDBAT.md §1.6): ``(start, end, buffers, mean loss)``."""
    params, buffers = _float64_state(model)
    start = {n: p.clone() for n, p in params.items()}
    losses = []
    for batch in batches:
        loss, grads = _gradients(model, params, buffers, batch)
        params = {n: p - lr * grads[n] for n, p in params.items()}
        losses.append(loss)
    return start, params, buffers, sum(losses) / len(losses)


def _updates(model: nn.Module, names: list[str], start: Tensors, end: Tensors) -> list[torch.Tensor]:
    """Each binarized tensor's update ``w_end - w_start``, flat, in state_dict order."""
    return [(end[n] - start[n]).reshape(-1) for n in model.state_dict() if n in names]


def fedavg(model: nn.Sequential, names: list[str], batches: list[Batch], lr: float) -> Reference:
    """FedAvg: the float update ``d = w_end - w_start`` of the binarized tensors."""
    start, end, buffers, loss = local_sgd(model, batches, lr)
    body = torch.cat(_updates(model, names, start, end))
    return Reference(
        torch.zeros(0, dtype=torch.float64), body, None, _dense(model, names, end, buffers), loss
    )


def _sign_upload(
    model: nn.Sequential,
    names: list[str],
    batches: list[Batch],
    lr: float,
    compress: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> Reference:
    """Local SGD, then ``compress(d) -> (scale, positive, margin)`` per binarized tensor."""
    start, end, buffers, loss = local_sgd(model, batches, lr)
    scales, signs, margins = zip(*(compress(d) for d in _updates(model, names, start, end)))
    dense = _dense(model, names, end, buffers)
    return Reference(torch.stack(scales), torch.cat(signs), torch.cat(margins), dense, loss)


def signsgd(model: nn.Sequential, names: list[str], batches: list[Batch], lr: float) -> Reference:
    """SignSGD on the update: ``mean|d| * sign(d)``, sign(0) = +1; margin ``|d| / max|d|``."""
    return _sign_upload(
        model, names, batches, lr, lambda d: (d.abs().mean(), d >= 0, d.abs() / d.abs().max())
    )


def stosign(
    model: nn.Sequential, names: list[str], batches: list[Batch], lr: float, upload: torch.Generator
) -> Reference:
    """Stochastic sign: ``B = max|d|``, +1 iff ``u < (1 + d/B)/2``; margin ``|(1 + d/B)/2 - u|``."""

    def compress(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bound = d.abs().max()
        u = torch.rand(d.shape, generator=upload, dtype=torch.float32).double()
        threshold = (1 + d / bound) / 2
        return bound, u < threshold, (threshold - u).abs()

    return _sign_upload(model, names, batches, lr, compress)


def zsign(
    model: nn.Sequential,
    names: list[str],
    batches: list[Batch],
    lr: float,
    upload: torch.Generator,
    sigma_factor: float,
) -> Reference:
    """z-SignFedAvg, uniform noise: ``sigma = factor * rms(d)``, ``xi = 2u - 1``, sign of ``d + sigma xi``;
    margin ``|d + sigma xi| / sigma``."""

    def compress(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sigma = sigma_factor * d.square().mean().sqrt()
        xi = torch.rand(d.shape, generator=upload, dtype=torch.float32).double() * 2 - 1
        noisy = d + sigma * xi
        return sigma, noisy >= 0, noisy.abs() / sigma

    return _sign_upload(model, names, batches, lr, compress)



def signsgd_mv(model: nn.Sequential, names: list[str], batches: list[Batch], lr: float) -> Reference:
    """SignSGD with majority vote, client side: ``sign(d)`` with scale 1, sign(0) = +1; margin ``|d| / max|d|``."""
    return _sign_upload(
        model, names, batches, lr, lambda d: (torch.ones((), dtype=d.dtype), d >= 0, d.abs() / d.abs().max())
    )


def z_noise(shape: torch.Size, z: str, upload: torch.Generator) -> torch.Tensor:
    """The z-distribution's float32 draws as documented, in float64: z = inf ``2u - 1``, z = 2 ``randn``,
    z = 1 ``E1 - E2`` (two ``exponential_`` draws, Laplace(0, 1))."""
    if z == "inf":
        return torch.rand(shape, generator=upload, dtype=torch.float32).double() * 2 - 1
    if z == "2":
        return torch.randn(shape, generator=upload, dtype=torch.float32).double()
    first = torch.empty(shape, dtype=torch.float32).exponential_(generator=upload).double()
    return first - torch.empty(shape, dtype=torch.float32).exponential_(generator=upload).double()


def z_signfedavg(
    model: nn.Sequential,
    names: list[str],
    batches: list[Batch],
    lr: float,
    upload: torch.Generator,
    sigma: float,
    z: str,
) -> Reference:
    """z-SignFedAvg, client side: one global ``sigma`` sent as every scale, sign of ``d + sigma xi``;
    margin ``|d + sigma xi| / sigma``. Gaussian ``xi`` is one draw over the whole update (its fills of
    16 do not cut where the tensors do), the others one per tensor."""
    sizes = [t.numel() for n, t in model.state_dict().items() if n in names]
    whole = iter(z_noise(torch.Size([sum(sizes)]), z, upload).split(sizes)) if z == "2" else None

    def compress(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noisy = d + sigma * (z_noise(d.shape, z, upload) if whole is None else next(whole))
        return torch.tensor(sigma, dtype=torch.float64), noisy >= 0, noisy.abs() / sigma

    return _sign_upload(model, names, batches, lr, compress)


def error_feedback(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EF-SignSGD's compression of one tensor's corrected update ``p = d + e``, in ``p``'s dtype:
    ``(scale, positive, new memory)``, the upload ``(||p||_1 / n) sign(p)`` (sign(0) = +1)."""
    scale, positive = p.abs().mean(), p >= 0
    return scale, positive, p - scale * torch.where(positive, 1.0, -1.0).to(p.dtype)


def ef_signsgd(
    model: nn.Sequential, names: list[str], batches: list[Batch], lr: float, memory: torch.Tensor
) -> Reference:
    """EF-SignSGD: ``p = d + e``, upload ``(||p||_1 / n) sign(p)``, new memory ``e = p - upload``."""
    start, end, buffers, loss = local_sgd(model, batches, lr)
    d = torch.cat(_updates(model, names, start, end))
    sizes = [start[n].numel() for n in model.state_dict() if n in names]
    scales, signs, margins, new_memory = [], [], [], []
    for p in (d + memory.double()).split(sizes):
        scale, positive, rest = error_feedback(p)
        scales.append(scale)
        signs.append(positive)
        margins.append(p.abs() / p.abs().max())
        new_memory.append(rest)
    dense = _dense(model, names, end, buffers)
    return Reference(
        torch.stack(scales), torch.cat(signs), torch.cat(margins), dense, loss, torch.cat(new_memory)
    )


def _alpha(alpha0: torch.Tensor, s: torch.Tensor, rho: float) -> tuple[torch.Tensor, bool]:
    """``alpha = clamp(alpha0 exp(rho s), 5e-4, 5e-2)`` (§1.2), and whether the clamp passes gradient."""
    raw = alpha0 * math.exp(rho * s.item())
    return raw.clamp(ALPHA_MIN, ALPHA_MAX), bool(ALPHA_MIN <= raw <= ALPHA_MAX)


def _stochastic_signs(
    m: torch.Tensor, alpha: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """§1.3: ``(x, b, margin)`` with ``x = m/alpha``, ``b = +1`` iff ``(x + 1)/2 + u >= 1`` (else -1)
    and ``margin = |(x + 1)/2 + u - 1|``."""
    u = torch.rand(m.shape, generator=generator, dtype=torch.float32).double()
    x = m / alpha
    decision = (x + 1) / 2 + u - 1
    return x, torch.where(decision >= 0, 1.0, -1.0).double(), decision.abs()


def _designed_sgd_step(
    m: torch.Tensor, s: torch.Tensor, g: torch.Tensor, x: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
    live: bool, lr: float, rho: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """SGD on ``m`` and ``s`` with §1.4's derivatives, given ``g = dL/dW`` at ``W = w + alpha b``:
    ``dm = g 1{|x| <= 1}``; ``dalpha = sum g h`` with ``h = b - x`` inside, ``sign(x)`` outside;
    ``ds = dalpha * dalpha/ds = rho alpha dalpha`` where the clamp is inactive, else 0."""
    inside = x.abs() <= 1
    h = torch.where(inside, b - x, torch.sign(x))
    ds = rho * alpha * (g * h).sum() if live else torch.zeros((), dtype=torch.float64)
    return m - lr * g * inside, s - lr * ds


def fedbat(
    model: nn.Sequential,
    names: list[str],
    batches: list[Batch],
    lr: float,
    rho: float,
    warmup: float,
    noise: torch.Generator,
    upload: torch.Generator,
) -> Reference:
    """FedBAT's client step (§1.2-§1.7).

    ``m = s = 0``; steps ``1..floor(warmup K)`` use ``W = w + m`` (plain SGD on m); at the next step
    ``alpha0 = mean|m|`` and from then on ``W = w + alpha b`` with fresh noise per step and tensor
    (``_designed_sgd_step``). BatchNorm trains by plain SGD throughout. Upload: a fresh sign sample with
    the final alpha (``alpha0`` from the final ``m`` when no step was binarized).
    """
    names = [n for n in model.state_dict() if n in names]
    params, buffers = _float64_state(model)
    m = {n: torch.zeros_like(params[n]) for n in names}
    s = {n: torch.zeros((), dtype=torch.float64) for n in names}
    warm_steps = math.floor(warmup * len(batches))
    alpha0: Tensors = {}
    losses, train_margin = [], math.inf
    for step, batch in enumerate(batches, start=1):
        if step == warm_steps + 1:
            alpha0 = {n: m[n].abs().mean() for n in names}
        effective, sampled = dict(params), {}
        for n in names:
            if alpha0:
                alpha, live = _alpha(alpha0[n], s[n], rho)
                x, b, margin = _stochastic_signs(m[n], alpha, noise)
                train_margin = min(train_margin, margin.min().item())
                effective[n] = params[n] + alpha * b
                sampled[n] = (x, b, alpha, live)
            else:
                effective[n] = params[n] + m[n]
        loss, grads = _gradients(model, effective, buffers, batch)
        losses.append(loss)
        for n in names:
            if alpha0:
                m[n], s[n] = _designed_sgd_step(m[n], s[n], grads[n], *sampled[n], lr, rho)
            else:
                m[n] = m[n] - lr * grads[n]
        params = {n: p if n in names else p - lr * grads[n] for n, p in params.items()}
    if not alpha0:
        alpha0 = {n: m[n].abs().mean() for n in names}
    alphas = [_alpha(alpha0[n], s[n], rho)[0] for n in names]
    samples = [_stochastic_signs(m[n], alpha, upload) for n, alpha in zip(names, alphas)]
    signs = torch.cat([b.reshape(-1) > 0 for _, b, _ in samples])
    margins = torch.cat([margin.reshape(-1) for _, _, margin in samples])
    dense = _dense(model, names, params, buffers)
    return Reference(
        torch.stack(alphas), signs, margins, dense, sum(losses) / len(losses), None, train_margin
    )
