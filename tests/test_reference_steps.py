"""Every algorithm's client step against an independent float64 re-implementation (reference_steps.py).

The package trains in float32, the reference in float64 from the same float32 random draws (the
documented draw order of each algorithm's streams). On the tiny model the two agree to ~1e-7
relative after six steps, so scales, dense tensors, float updates, error memories and losses are
compared at RTOL = 1e-5 (atol 1e-5 of the largest entry for float vectors), 100x above that noise
and far below every mistake that changes a formula. Signs must agree wherever the reference's
decision quantity is further than BORDER from its threshold; closer entries (float32 rounding may
tip them) must be rare.
"""

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from fedbat_mpi.client.algorithms import LocalTask, LocalUpdate, make_algorithm
from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.data import load_dataset, normalize
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rng import Stream

from . import reference_steps as ref
from .reference_steps import ALPHA_MAX, ALPHA_MIN, Batch, Reference

BORDER = 1e-4  # decision quantities (dimensionless, O(1)) this close to their threshold may flip
RTOL = 1e-5
TINY_NAMES = ["0.weight", "4.weight"]
RAGGED = [8, 8, 8, 8, 8, 5]  # six steps, the last batch short
SIGMA = 1.5  # --zsign-sigma, not 1 so that a forgotten factor shows
Z_SIGMA = 0.05  # --z-sigma: about the tiny model's update size, so that noise decides some signs


def _tiny_model(seed: int) -> nn.Sequential:
    """Conv-BN-ReLU-Linear with N(0, 0.01) weights and BatchNorm moved off its defaults."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3, bias=False),
    )
    with torch.no_grad():
        for name in ("0.weight", "4.weight"):
            nn.init.normal_(model.get_parameter(name), mean=0.0, std=0.01)
        model.get_parameter("1.weight").add_(0.1 * torch.randn(4))
        model.get_parameter("1.bias").add_(0.1 * torch.randn(4))
        model.get_buffer("1.running_mean").add_(0.1 * torch.randn(4))
        model.get_buffer("1.running_var").add_(0.2 * torch.rand(4))
    return model


def _batches(seed: int, sizes: list[int]) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 1, 6, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator))
        for n in sizes
    ]


def _streams(seed: int) -> Callable[[Stream], torch.Generator]:
    """The client's generators, the same for the package and the reference."""
    return lambda stream: torch.Generator().manual_seed(1000 * seed + int(stream))


def _package(
    name: str,
    model: nn.Module,
    names: list[str],
    batches: list[Batch],
    lr: float,
    seed: int,
    rho: float = 6.0,
    warmup: float = 0.5,
    state: torch.Tensor | None = None,
    z: str = "inf",
) -> LocalUpdate:
    """The package's client step on a copy of ``model`` (the task built as in test_binarize._tiny_task)."""
    model = copy.deepcopy(model)
    task = LocalTask(
        0, model, ModelLayout(model, names), lambda: iter(batches), len(batches), lr, _streams(seed), state
    )
    options = dict(rho=rho, warmup=warmup, zsign_sigma=SIGMA, z_sigma=Z_SIGMA, z_exponent=z)
    [update] = make_algorithm(name, **options).train([task])
    return update


def _assert_signs(signs: torch.Tensor, reference: Reference, border: float) -> None:
    """Equal signs except at borderline entries (margin below ``border``), which must be rare:
    their expected share is about ``2 * border``."""
    assert reference.margin is not None
    borderline = reference.margin < border
    assert int(borderline.sum()) <= 1 + 10 * border * signs.numel(), (
        "too many borderline signs for a meaningful test"
    )
    differ = (signs != reference.body) & ~borderline
    assert not differ.any(), f"{int(differ.sum())} of {int((~borderline).sum())} clearly decided signs differ"


def _assert_close_vector(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    atol = rtol * expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


def _assert_matches(
    update: LocalUpdate, reference: Reference, rtol: float = RTOL, border: float = BORDER
) -> None:
    """The package's upload equals the reference's within float32 rounding."""
    torch.testing.assert_close(update.scales.double(), reference.scales, rtol=rtol, atol=0.0)
    if reference.margin is None:
        _assert_close_vector(update.body, reference.body, rtol)
    else:
        _assert_signs(update.body, reference, border)
    _assert_close_vector(update.dense, reference.dense, rtol)
    assert update.train_loss == pytest.approx(reference.loss, rel=rtol)


def _fedbat_case(
    seed: int, sizes: list[int], lr: float, rho: float, warmup: float
) -> tuple[LocalUpdate, Reference]:
    model, batches, streams = _tiny_model(seed), _batches(seed, sizes), _streams(seed)
    update = _package("fedbat", model, TINY_NAMES, batches, lr, seed, rho=rho, warmup=warmup)
    reference = ref.fedbat(
        model, TINY_NAMES, batches, lr, rho, warmup, streams(Stream.BINARIZER), streams(Stream.UPLOAD)
    )
    # Every sign drawn during training was decided clearly, so both trajectories took the same signs.
    assert reference.train_margin > BORDER
    return update, reference


@pytest.mark.parametrize("seed", [0, 1])
def test_fedbat_with_warmup_and_learned_step_size(seed):
    update, reference = _fedbat_case(seed, RAGGED, lr=0.1, rho=6.0, warmup=0.5)
    _assert_matches(update, reference)
    assert torch.all((reference.scales > ALPHA_MIN) & (reference.scales < ALPHA_MAX))  # the clamp is idle


def test_fedbat_step_size_clamped_at_both_ends_after_large_rho():
    # rho = 100: s's multiplicative steps push alpha past 5e-2 (conv) and below 5e-4 (linear), where
    # the clamp stops the gradient to s.
    update, reference = _fedbat_case(0, RAGGED, lr=0.1, rho=100.0, warmup=0.5)
    _assert_matches(update, reference)
    assert reference.scales.tolist() == [ALPHA_MAX, ALPHA_MIN]


def test_fedbat_step_size_clamped_from_the_start_when_the_warmup_update_is_tiny():
    update, reference = _fedbat_case(0, [8] * 6, lr=1e-3, rho=6.0, warmup=0.5)
    _assert_matches(update, reference)
    assert reference.scales.tolist() == [ALPHA_MIN, ALPHA_MIN]


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_fedbat_warmup_edge_cases(warmup):
    # warmup 0: alpha0 = mean|0| = 0 is clamped to 5e-4 and every step is binarized;
    # warmup 1: no step is binarized and alpha0 comes from the final m.
    update, reference = _fedbat_case(0, [8] * 4, lr=0.1, rho=6.0, warmup=warmup)
    _assert_matches(update, reference)
    assert (reference.scales == ALPHA_MIN).all() == (warmup == 0.0)


def _baseline_reference(name: str, model: nn.Sequential, batches: list[Batch], seed: int) -> Reference:
    upload = _streams(seed)(Stream.UPLOAD)
    if name == "fedavg":
        return ref.fedavg(model, TINY_NAMES, batches, 0.1)
    if name == "signsgd":
        return ref.signsgd(model, TINY_NAMES, batches, 0.1)
    if name == "stosign":
        return ref.stosign(model, TINY_NAMES, batches, 0.1, upload)
    return ref.zsign(model, TINY_NAMES, batches, 0.1, upload, SIGMA)


@pytest.mark.parametrize("name", ["fedavg", "signsgd", "stosign", "zsign"])
def test_post_training_baselines(name):
    seed = 2
    model, batches = _tiny_model(seed), _batches(seed, RAGGED)
    update = _package(name, model, TINY_NAMES, batches, 0.1, seed)
    _assert_matches(update, _baseline_reference(name, model, batches, seed))


def test_signsgd_majority_vote_client_sends_signs_with_scale_one():
    seed = 2
    model, batches = _tiny_model(seed), _batches(seed, RAGGED)
    update = _package("signsgd-mv", model, TINY_NAMES, batches, 0.1, seed)
    _assert_matches(update, ref.signsgd_mv(model, TINY_NAMES, batches, 0.1))
    assert update.scales.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("z", ["1", "2", "inf"])
def test_z_signfedavg_client_with_one_global_sigma(z):
    seed = 5
    model, batches = _tiny_model(seed), _batches(seed, RAGGED)
    update = _package("z-signfedavg", model, TINY_NAMES, batches, 0.1, seed, z=z)
    reference = ref.z_signfedavg(model, TINY_NAMES, batches, 0.1, _streams(seed)(Stream.UPLOAD), Z_SIGMA, z)
    _assert_matches(update, reference)
    # The noise decides a good share of the signs: they differ from sign(d) there.
    plain = ref.signsgd_mv(model, TINY_NAMES, batches, 0.1).body
    assert 0.05 < (reference.body != plain).double().mean() < 0.5


@pytest.mark.parametrize("memory_scale", [0.0, 0.05])
def test_ef_signsgd_with_error_memory(memory_scale):
    seed = 3
    model, batches = _tiny_model(seed), _batches(seed, RAGGED)
    size = sum(model.get_parameter(n).numel() for n in TINY_NAMES)
    memory = memory_scale * torch.randn(size, generator=torch.Generator().manual_seed(seed))
    update = _package("ef-signsgd", model, TINY_NAMES, batches, 0.1, seed, state=memory)
    reference = ref.ef_signsgd(model, TINY_NAMES, batches, 0.1, memory)
    _assert_matches(update, reference)
    agree = update.body == reference.body  # where a borderline sign tipped, the memory differs by 2 scale
    assert update.state is not None and reference.state is not None
    _assert_close_vector(update.state[agree], reference.state[agree])


@pytest.mark.parametrize("warmup,steps", [(1.0, 2), (0.0, 1)])
def test_fedbat_on_cnn4_mnist(warmup, steps):
    # The engine's layout (five binarized tensors, four BatchNorms) on real images at lr 0.1. From the
    # N(0, 0.01) init under four BatchNorms, float32 gradients carry up to ~1e-4 error in m/alpha, so a
    # binarized step drawn from a float32-computed m (any step after the first) would tip some of its
    # ~1e5 random signs and send the two trajectories apart (see test_grouped.py). The two cases avoid
    # that: warm-up only (alpha0 from the final m, a short last batch), or one binarized step from
    # m = 0 where m/alpha = 0 exactly. Upload signs get BORDER 1e-3 (10x that error).
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10)
    assert isinstance(model, nn.Sequential)  # what the reference's forward runs
    names = binarized_names(model)
    data = load_dataset("embedded", None)
    x, y = normalize(data.train_x[:12], data.train_mean, data.train_std), data.train_y[:12]
    batches = [(x[:8], y[:8]), (x[8:], y[8:])][:steps]
    streams = _streams(4)
    update = _package("fedbat", model, names, batches, 0.1, 4, warmup=warmup)
    reference = ref.fedbat(
        model, names, batches, 0.1, 6.0, warmup, streams(Stream.BINARIZER), streams(Stream.UPLOAD)
    )
    _assert_matches(update, reference, rtol=1e-4, border=1e-3)
