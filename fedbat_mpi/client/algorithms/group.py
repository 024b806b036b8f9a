"""The one training loop of every algorithm: a group of clients trained at once.

Each client of a group has its own copy of the trained tensors and of the BatchNorm statistics
(stacked along a leading client dimension), its own data, its own number of steps ``K_k`` and its own
random streams. At step ``t`` the clients that still have steps are put in buckets of equal batch size
and equal *phase* (e.g. FedBAT's warm-up or binarized steps); a bucket runs as one forward pass of the
grouped model (``grouped_layers``: one convolution, BatchNorm, product per layer for all its
clients) and one backward pass of its summed losses into the group's gradients: clients share no
trained tensor, so each gets its own gradient, and plain SGD leaves the clients that did not train at
``t`` untouched (their gradient is zero). So every client sees exactly its own samples (ragged last batches and BatchNorm
statistics included) and takes exactly its own ``K_k`` steps: a group's updates equal training its
clients one after another up to float rounding, and a group of one *is* one-by-one training.
"""

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from fedbat_mpi.client.batches import Batch, batch_size, read_batches
from fedbat_mpi.client.grouped_layers import group_cross_entropy, grouped_model
from fedbat_mpi.layout import ModelLayout

from .base import LocalTask

Stacked = dict[Any, torch.Tensor]  # tensors with a leading client dimension, by name
# The losses of a bucket of G clients, (G,), from its stacked trained tensors and buffers, its grouped
# inputs (``grouped_inputs``), its G x N labels and its stacked per-client extras.
GroupLoss = Callable[[Stacked, Stacked, torch.Tensor, torch.Tensor, Stacked], torch.Tensor]


def stacked(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` copies of ``tensor`` along a new leading dimension."""
    return tensor.detach().unsqueeze(0).repeat(size, *([1] * tensor.dim())).clone()


def stacked_state(model: torch.nn.Module, size: int, exclude: frozenset[str] = frozenset()) -> tuple[Stacked, Stacked]:
    """Trainable copies of the model's parameters (but ``exclude``) and copies of its buffers, per client."""
    params = {n: stacked(p, size).requires_grad_(True) for n, p in model.named_parameters() if n not in exclude}
    buffers = {n: stacked(b, size) for n, b in model.named_buffers()}
    return params, buffers


@functools.lru_cache(maxsize=1024)
def member_index(members: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``members`` as an index tensor on ``device``, made once: a Python list as an index would be copied
    to the GPU at every step. The one copy goes from pinned memory, so that it does not wait for the
    GPU's queue to drain either (a copy from pageable memory does)."""
    index = torch.tensor(members)
    return index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index


def dense_rows(layout: ModelLayout, tensors: Stacked, size: int) -> torch.Tensor:
    """Each client's dense (BatchNorm) tensors from stacked parameters and buffers: ``size x D`` float32."""
    if not layout.dense:
        return torch.zeros(size, 0)
    return torch.cat([tensors[seg.name].detach().reshape(size, -1).float() for seg in layout.dense], dim=1)


@dataclass
class Bucket:
    """Clients of a group that take the same kind of step together: their phase, their positions in the
    group (an index tensor on the device), whether they are the whole group, their grouped inputs
    (``grouped_inputs``), ``G x N`` labels and stacked extras."""

    phase: Hashable
    index: torch.Tensor
    whole: bool
    x: torch.Tensor
    y: torch.Tensor
    extras: Stacked

    def signature(self) -> Hashable:
        """What a captured bucket depends on besides its input values (its members are an input)."""
        return self.phase, self.whole, tuple(self.x.shape), tuple(self.y.shape)

    def tensors(self) -> list[torch.Tensor]:
        return [self.index, self.x, self.y, *self.extras.values()]

    def clone(self) -> "Bucket":
        return Bucket(self.phase, self.index.clone(), self.whole, self.x.clone(), self.y.clone(),
                      {n: t.clone() for n, t in self.extras.items()})  # fmt: skip


MAX_GRAPHS = 64  # graphs a group keeps; a new one replaces the one unused longest (unequal clients)


class GroupStep:
    """One SGD step (docs/FEDBAT.md §1.6) of a group's buckets: each bucket's losses and their gradient,
    added into the group's gradient tensors, its BatchNorm statistics written back and each client's
    loss added to ``totals``; then every parameter steps by its gradient. Clients share no parameter,
    so each client's gradient comes from its own bucket alone: the same step as one backward pass of
    the buckets' summed losses.

    With ``graphs`` on a GPU, a bucket whose signature (phase, shapes, whether it is the whole group)
    comes back is captured as a CUDA graph the second time it is seen and replayed from then on, its
    inputs (its members' positions among them) copied into the graph's own: a replay runs the same
    kernels on the same values, so results are bitwise those of eager steps, without the host's cost
    of issuing each operation. Buckets, not whole steps, are captured: with unequal clients, a
    client's ragged last batch makes a step unlike its neighbours, but its bucket comes back. The
    graphs share one memory pool: nothing a graph computes is read after it (parameters, gradients,
    statistics and totals live outside it). On the CPU, ``graphs`` runs the same restructured buckets
    from static inputs eagerly (what the tests check).
    """

    def __init__(self, params: Stacked, buffers: Stacked, lr: float, loss_of: Callable[[Hashable], GroupLoss],
                 graphs: bool):  # fmt: skip
        self.params, self.buffers, self.loss_of = params, buffers, loss_of
        first = next(iter(params.values()))
        self.totals = first.new_zeros(len(first))  # each client's summed loss
        self.grads = {n: torch.zeros_like(p) for n, p in params.items()}
        self.lr, self.graphs = lr, graphs
        self.seen: set[Hashable] = set()
        self.captured: OrderedDict[Hashable, tuple[Bucket, Callable[[], None]]] = OrderedDict()
        self.pool: torch.cuda._POOL_HANDLE | None = None

    def __call__(self, buckets: list[Bucket]) -> None:
        with torch.no_grad():
            torch._foreach_zero_(list(self.grads.values()))
        for bucket in buckets:
            if self.graphs:
                self.replayed(bucket)
            else:
                self.bucket(bucket)
        with torch.no_grad():  # plain SGD, as torch.optim.SGD without momentum computes it
            torch._foreach_add_(list(self.params.values()), list(self.grads.values()), alpha=-self.lr)

    def replayed(self, bucket: Bucket) -> None:
        """The bucket's step: eager the first time (which also warms up what a capture needs), captured
        the second, replayed after that."""
        signature = bucket.signature()
        if signature in self.captured:
            static, replay = self.captured[signature]
            self.captured.move_to_end(signature)
            for target, value in zip(static.tensors(), bucket.tensors()):
                target.copy_(value, non_blocking=True)
        elif signature in self.seen:
            if len(self.captured) == MAX_GRAPHS:
                self.captured.popitem(last=False)
            static = bucket.clone()
            replay = self.capture(lambda: self.bucket(static))
            self.captured[signature] = static, replay
        else:
            self.seen.add(signature)
            return self.bucket(bucket)
        replay()

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        """``step`` as a CUDA graph's replay (on the CPU: ``step`` itself). Captured on the current
        stream (``train_group``'s side stream) with ``capture_begin``/``capture_end``, not the
        ``torch.cuda.graph`` context, which synchronises and empties the allocator's cache at every
        capture; ``thread_local`` so that another thread's CUDA calls cannot spoil it. The first capture
        of this step empties the cache once: a capture cannot use blocks cached outside its pool, and
        the eager steps before it may have cached about as much as the capture needs."""
        if self.totals.device.type != "cuda":
            return step
        if self.pool is None:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
        try:
            step()
        except BaseException:
            with contextlib.suppress(RuntimeError):  # the capture failed too: the step's error is the one to see
                graph.capture_end()
            raise
        graph.capture_end()
        self.pool = self.pool or graph.pool()
        return graph.replay

    def bucket(self, bucket: Bucket) -> None:
        """One bucket's part of the step, operation by operation."""
        losses, bucket_buffers = _bucket_losses(self.loss_of(bucket.phase), self.params, self.buffers, bucket)
        grads = torch.autograd.grad(losses.sum(), list(self.params.values()), allow_unused=True)
        with torch.no_grad():  # after the backward pass, which may need the buffers as they were
            present = [(total, grad) for total, grad in zip(self.grads.values(), grads) if grad is not None]
            torch._foreach_add_([total for total, _ in present], [grad for _, grad in present])
            self.totals.index_add_(0, bucket.index, losses)
            for n, b in self.buffers.items():
                if bucket_buffers[n] is not b:
                    b.index_copy_(0, bucket.index, bucket_buffers[n])


@dataclass
class Kept:
    """A group's trained tensors and its step, kept from round to round while its steps are CUDA
    graphs (``--cuda-graphs on``): a graph captured in one round replays in the next on the same
    tensors, refilled with that round's starting values."""

    tensors: tuple[Stacked, ...]
    step: GroupStep | None = None


def keep(store: dict[Hashable, Kept], key: Hashable, *fresh: Stacked) -> Kept:
    """The tensors kept in ``store`` under ``key`` with ``fresh``'s values copied in (the first time,
    ``fresh`` themselves). ``key`` names all a graph bakes in besides tensors (the model, the group's
    size, the step size...); ``store`` keeps the last four keys."""
    kept = store.get(key)
    if kept is None:
        if len(store) >= 4:
            store.pop(next(iter(store)))
        store[key] = kept = Kept(fresh)
        return kept
    with torch.no_grad():
        for mine, new in zip(kept.tensors, fresh, strict=True):
            for n, t in mine.items():
                t.copy_(new[n])
    return kept


def train_group(
    tasks: list[LocalTask],
    params: Stacked,
    buffers: Stacked,
    phase_of: Callable[[int, int], Hashable],
    loss_of: Callable[[Hashable], GroupLoss],
    extras_of: Callable[[Hashable, int, list[int]], Stacked],
    kept: Kept | None = None,
) -> list[float]:
    """Plain SGD (docs/FEDBAT.md §1.6) on every client's ``params`` for its ``K_k`` steps; each client's
    mean training loss.

    ``phase_of(k, step)`` names the phase of client ``k`` at ``step`` (counted from 1), ``loss_of(phase)``
    gives a bucket's losses in that phase, and ``extras_of(phase, step, members)`` gives the bucket's
    per-client extra inputs, stacked in member order (e.g. FedBAT's step sizes and noise). With
    ``tasks[0].graphs``, repeated steps replay CUDA graphs (``GroupStep``), all on one side stream;
    ``kept`` (whose tensors ``params`` and ``buffers`` are) keeps the step and its graphs for the next
    round.
    """
    device = next(iter(params.values())).device
    graphs = tasks[0].graphs
    if kept is not None and kept.step is not None:
        step_of = kept.step
        step_of.loss_of = loss_of
        step_of.totals.zero_()
    else:
        step_of = GroupStep(params, buffers, tasks[0].lr, loss_of, graphs)
        if kept is not None:
            kept.step = step_of
    totals = step_of.totals
    with side_stream(device) if graphs else contextlib.nullcontext():
        batches = [task.batches() for task in tasks]
        for step in range(1, max(task.num_steps for task in tasks) + 1):
            entries: dict[tuple[Hashable, int], list[tuple[int, Batch]]] = {}
            for k, task in enumerate(tasks):
                if step <= task.num_steps:
                    batch = next(batches[k])
                    entries.setdefault((phase_of(k, step), batch_size(batch)), []).append((k, batch))
            step_of([_bucket(phase, bucket, extras_of(phase, step, [k for k, _ in bucket]), len(tasks))
                     for (phase, _), bucket in entries.items()])  # fmt: skip
    steps = torch.tensor([task.num_steps for task in tasks], device=device, dtype=totals.dtype)
    return (totals / steps).tolist()


@functools.lru_cache(maxsize=16)
def _stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """A non-default stream (CUDA graphs are captured on one; the same one every round) for the block,
    ordered after the work already queued and before the work that follows; nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    outer, side = torch.cuda.current_stream(device), _stream(device)
    side.wait_stream(outer)
    try:
        with torch.cuda.stream(side):
            yield
    finally:  # an out-of-memory error, retried with smaller groups, too
        outer.wait_stream(side)


def _bucket(phase: Hashable, entries: list[tuple[int, Batch]], extras: Stacked, size: int) -> Bucket:
    members = tuple(k for k, _ in entries)
    x, y = read_batches([batch for _, batch in entries])
    return Bucket(phase, member_index(members, x.device), len(members) == size, x, y, extras)


def _bucket_losses(loss: GroupLoss, params: Stacked, buffers: Stacked, bucket: Bucket) -> tuple[torch.Tensor, Stacked]:
    """The losses of one bucket's clients, and their BatchNorm buffers after the step: ``buffers``
    itself when the bucket is the whole group (updated in place), else copies to write back."""
    if bucket.whole:  # no copies
        return loss(params, buffers, bucket.x, bucket.y, bucket.extras), buffers
    mine = {n: b[bucket.index] for n, b in buffers.items()}
    return loss({n: p[bucket.index] for n, p in params.items()}, mine, bucket.x, bucket.y, bucket.extras), mine


def _no_extras(phase: Hashable, step: int, members: list[int]) -> Stacked:
    return {}


def plain_loss(model: torch.nn.Module) -> GroupLoss:
    """Each client's cross-entropy with every parameter its own (local SGD's loss)."""
    grouped = grouped_model(model)

    def loss(p: Stacked, b: Stacked, x: torch.Tensor, y: torch.Tensor, extras: Stacked) -> torch.Tensor:
        return group_cross_entropy(functional_call(grouped, (p, b), (x,)), y)

    return loss


def local_sgd(
    tasks: list[LocalTask], store: dict[Hashable, Kept]
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Plain local SGD on every parameter of each client of a group (FedAvg's client step); with CUDA
    graphs, its tensors kept in the algorithm's ``store``.

    Returns the clients' flat updates of the binarized tensors (``w_end - w_start``, state_dict
    order; ``G x P``), their dense tensors after training (``G x D``), and their mean training losses.
    """
    model, layout, size = tasks[0].model, tasks[0].layout, len(tasks)
    params, buffers = stacked_state(model, size)
    kept = keep(store, (model, size, tasks[0].lr), params, buffers) if tasks[0].graphs else None
    if kept is not None:
        params, buffers = kept.tensors
    loss = plain_loss(model)
    losses = train_group(tasks, params, buffers, lambda k, step: None, lambda phase: loss, _no_extras, kept)
    start = layout.binarized_vector(model)
    deltas = torch.cat([params[n].detach().reshape(size, -1) for n in layout.binarized_names], dim=1) - start
    return deltas, dense_rows(layout, {**params, **buffers}, size), losses
