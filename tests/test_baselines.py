"""The post-training sign baselines: each compressor against its formula, its payload size, and a group's
compression in operations per tensor or per client, not per both."""

import dataclasses
import functools

import numpy as np
import pytest
import torch

from fedbat_mpi.client.algorithms import LocalTask, LocalUpdate, make_algorithm, signs
from fedbat_mpi.client.algorithms.signs import EFSignSGD, SignSGD, StochasticSign, ZSign
from fedbat_mpi.client.algorithms.signs_classical import Z_EXPONENTS
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.wire import codec

from .reference_steps import error_feedback
from .test_binarize import _tiny_task
from .test_grouped import CaptureUnsafeOperations, _client_streams


def _update(seed: int = 0, size: int = 1000) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)) * 1e-2


def _compress(compressor, d: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, positive)`` of one tensor's update ``d``: a group of one client with one tensor."""
    scales, positive = compressor.compress(d[None], (len(d),), [generator])
    return scales[0, 0], positive[0]


def _mean_of_draws(compressor, d: torch.Tensor, draws: int = 4000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    total = torch.zeros_like(d)
    for _ in range(draws):
        scale, positive = _compress(compressor, d, generator)
        total += scale * (positive.float() * 2 - 1)
    return total / draws


def test_signsgd_is_mean_magnitude_times_sign():
    d = _update()
    scale, positive = _compress(SignSGD(), d, torch.Generator())
    assert scale.item() == pytest.approx(d.abs().mean().item())
    assert torch.equal(positive, d >= 0)


def test_stochastic_sign_is_unbiased_with_the_max_as_bound():
    d = _update(size=200)
    scale, _ = _compress(StochasticSign(), d, torch.Generator().manual_seed(0))
    assert scale.item() == pytest.approx(d.abs().max().item())
    mean = _mean_of_draws(StochasticSign(), d)
    assert torch.all((mean - d).abs() <= 5 * scale / np.sqrt(4000))
    # the bound is the largest magnitude, also when it belongs to a negative entry
    scale, _ = _compress(StochasticSign(), torch.tensor([0.1, -0.3, 0.2]), torch.Generator().manual_seed(0))
    assert scale.item() == pytest.approx(0.3)


def test_zsign_uses_rms_scaled_noise_and_is_unbiased_inside_sigma():
    d = _update(size=200)
    compressor = ZSign(zsign_sigma=1.5)
    sigma = 1.5 * d.square().mean().sqrt()
    scale, _ = _compress(compressor, d, torch.Generator().manual_seed(0))
    assert scale.item() == pytest.approx(sigma.item(), rel=1e-6)
    mean = _mean_of_draws(compressor, d)
    inside = d.abs() <= sigma
    expected = torch.where(inside, d, torch.sign(d) * sigma)
    assert torch.all((mean - expected).abs() <= 5 * sigma / np.sqrt(4000))
    assert not torch.all(inside)  # some entries lie beyond sigma and keep their sign


def _corrected(update, layout) -> torch.Tensor:
    """EF-SignSGD's corrected update p = memory + upload, rebuilt from what the client returned."""
    sizes = torch.tensor([seg.size for seg in layout.binarized])
    return update.state + update.scales.repeat_interleave(sizes) * (update.body.float() * 2 - 1)


def test_ef_signsgd_memory_carries_the_compression_error():
    """Without memory, p is the finished local update d, which FedAvg's upload of the same steps gives."""
    task, model = _tiny_task(num_steps=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    [plain] = make_algorithm("fedavg").train([task])
    model.load_state_dict(start)
    [update] = EFSignSGD().train([task])
    assert update.state is not None and update.state.shape == (task.layout.update_size,)
    for index, seg in enumerate(task.layout.binarized):
        window = slice(seg.offset, seg.offset + seg.size)
        scale, positive, memory = error_feedback(plain.body[window])  # p = d: no memory yet
        assert update.scales[index].item() == pytest.approx(scale.item(), rel=1e-6)
        assert torch.equal(update.body[window], positive)
        torch.testing.assert_close(update.state[window], memory)


def test_ef_signsgd_adds_the_memory_before_compressing():
    task, model = _tiny_task(num_steps=2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    memory = torch.full((task.layout.update_size,), 0.5)
    [with_memory] = EFSignSGD().train([dataclasses.replace(task, state=memory)])
    model.load_state_dict(start)
    [without] = EFSignSGD().train([task])
    # The same local steps, so the corrected updates differ by exactly the memory.
    difference = _corrected(with_memory, task.layout) - _corrected(without, task.layout)
    np.testing.assert_allclose(difference.numpy(), memory.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["signsgd", "ef-signsgd", "stosign", "zsign"])
def test_every_baseline_uploads_one_bit_per_weight_and_one_scale_per_tensor(name):
    task, model = _tiny_task(num_steps=2)
    [update] = make_algorithm(name, rho=6.0, warmup=0.5, zsign_sigma=1.0).train([task])
    layout = task.layout
    assert update.kind is codec.BodyKind.SIGNS and update.body.dtype == torch.bool
    assert update.scales.shape == (len(layout.binarized),) and update.body.numel() == layout.update_size
    payload = codec.Payload(0, 1.0, update.train_loss, update.kind, update.scales.numpy(),
                            update.dense.numpy(), codec.pack_signs(update.body.numpy()),
                            layout.update_size)  # fmt: skip
    raw = codec.encode(payload)
    assert raw.size == codec.payload_size(codec.BodyKind.SIGNS, layout.update_size, len(layout.binarized), layout.dense_size)


@pytest.mark.parametrize("name", ["signsgd", "ef-signsgd", "stosign", "zsign", "signsgd-mv"])
def test_a_zero_update_is_sent_as_plus_ones(name):
    """sign(0) is +1 (the module docstring): with lr 0 every entry of the update is exactly 0, and
    these compressors draw no noise there (z-SignFedAvg's fixed sigma still does)."""
    task, _ = _tiny_task(num_steps=2)
    [update] = make_algorithm(name).train([dataclasses.replace(task, lr=0.0)])
    assert update.body.dtype == torch.bool and bool(update.body.all())


GROUP, TENSORS, PER_CLIENT = 64, 8, 6  # PER_CLIENT: operations a client may add (its draws, its rows of the results)
SIGN_BASELINES = [("signsgd", {}), ("ef-signsgd", {}), ("stosign", {}), ("zsign", {}), ("signsgd-mv", {}),
                  *(("z-signfedavg", {"z_exponent": z}) for z in Z_EXPONENTS)]  # fmt: skip


def _trained_group(monkeypatch) -> list[LocalTask]:
    """``GROUP`` clients of a model of ``TENSORS`` small binarized tensors, with error memories, whose
    local training is replaced: client k's finished update is row k of fixed random ``deltas`` (a slice,
    one operation whatever the group)."""
    model = torch.nn.Sequential(*(torch.nn.Linear(4, 4, bias=False) for _ in range(TENSORS)))
    layout = ModelLayout(model, [f"{t}.weight" for t in range(TENSORS)])
    random = torch.Generator().manual_seed(0)
    deltas = torch.randn(GROUP, layout.update_size, generator=random) * 1e-2
    memories = torch.randn(GROUP, layout.update_size, generator=random) * 1e-3

    def finished(tasks: list[LocalTask], store) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        rows = slice(tasks[0].client_id, tasks[0].client_id + len(tasks))
        return deltas[rows], deltas.new_zeros(len(tasks), 0), [0.0] * len(tasks)

    monkeypatch.setattr(signs, "local_sgd", finished)
    return [LocalTask(k, model, layout, lambda: iter(()), 0, 0.1, functools.partial(_client_streams, k), memories[k])
            for k in range(GROUP)]  # fmt: skip


@pytest.mark.parametrize("name,options", SIGN_BASELINES)
@pytest.mark.parametrize("chunk_rows", [GROUP, 5])
def test_a_groups_uploads_take_operations_per_tensor_or_per_client_not_per_both(monkeypatch, one_thread, name, options,
                                                                                chunk_rows):
    """A group's compression is one reduction per tensor over all the clients' rows, one draw per client
    and whole-group operations: O(T + G) operations (on a GPU, kernel launches), not O(G x T), with
    nothing read back to the host. Its uploads are those of each client compressed alone, bit for bit (at
    one thread: with several, a CPU reduction over many rows splits them by row, one row's sum otherwise).
    At one thread the CPU compresses chunks of rows (``signs.by_row_chunks``): here one chunk of the whole
    group (as on a GPU), and chunks of 5 rows (the last one short), each O(T) more operations, same bits."""
    tasks, trainer = _trained_group(monkeypatch), make_algorithm(name, **options)
    monkeypatch.setattr(signs, "CPU_CHUNK_BYTES", chunk_rows * tasks[0].layout.update_size * 4)  # float32 rows
    chunks = -(-GROUP // chunk_rows)

    def compressed(group: list[LocalTask]) -> tuple[list[LocalUpdate], int]:
        with CaptureUnsafeOperations(random_draws=False) as seen:
            updates = trainer.train(group)
        assert seen.found == []
        return updates, seen.dispatched

    together, operations = compressed(tasks)
    alone = [compressed([task]) for task in tasks]
    concatenations = 0 if chunks == 1 else 3  # one per result (scales, signs, EF's error)
    assert operations <= chunks * alone[0][1] + PER_CLIENT * (GROUP - chunks) + concatenations
    for update, (single, _) in zip(together, alone, strict=True):
        assert torch.equal(update.scales, single[0].scales) and torch.equal(update.body, single[0].body)
        assert (update.state is None) == (name != "ef-signsgd")
        if update.state is not None:
            assert single[0].state is not None and torch.equal(update.state, single[0].state)
