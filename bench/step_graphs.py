"""A grouped training step, eager against a CUDA graph and ``torch.compile``: what removes the launch overhead?

One step of a group of clients as a run takes it (``group.GroupStep`` on one bucket holding the whole
group; the paper's Fashion-MNIST setting by default: CNN4-MNIST, 10 clients, batch 64 each): the
clients' losses from one call of the grouped model (FedBAT's binarized phase with its real loss and
binarizer, or FedAvg's plain loss), their gradient, one SGD step. Variants, each from the same starting
tensors on the same inputs (images, labels, the binarizer's noise), all on ``train_group``'s side stream:

- ``eager``: ``GroupStep`` operation by operation (``--cuda-graphs off``);
- ``graph`` (CUDA only): ``GroupStep`` with graphs (``--cuda-graphs on``): eager on the first step,
  captured as a CUDA graph on the second, replayed from then on, each step's inputs copied into the
  graph's own tensors first;
- ``compiled`` (``--compile``): ``GroupStep`` eager with the bucket's loss under ``torch.compile``
  (``mode="reduce-overhead"`` on CUDA, Inductor's kernels replayed as CUDA graphs);
- ``train_group`` (and on CUDA ``train_group_graphs``, the same with ``--cuda-graphs on``): the
  algorithm's own training of the group (``Algorithm.train``: buckets, extras,
  the binarizer's noise from each client's generator, loss totals, the upload) over the same batches,
  with FedBAT's warm-up set to 0 so that every step is binarized: the step variants' cost plus the
  host's work around the step. On CUDA it also counts the steps'
  host-device synchronisations (``torch.cuda.set_sync_debug_mode``): each one stalls the host until the
  GPU's queue drains. Its noise differs from the other variants', so its difference is not reported.

Each variant reports ms per step (its input copies included), the training TFLOP/s
(``bench/work.py``'s count) and its largest difference from eager's parameters after the timed steps
(float rounding only, or a wrong step). ``eager`` and ``train_group`` also report the *operations per
step* that the host issues, counted by ``torch.profiler`` over one step (``train_group``: one training
of the group, divided by its steps): kernels launched on CUDA, top-level ATen calls on the CPU. What a
launch-bound step costs is about that count times the host's cost of one operation. A variant that
fails prints its error and the others go on.

    python bench/step_graphs.py --device cuda --compile      # on a GPU: about 1 minute
    python bench/step_graphs.py --quick                      # eager and train_group, tiny, on the CPU (tests)
"""

import functools
import time
import warnings
from collections.abc import Callable, Iterator

import benchlib
import torch
from torch.profiler import ProfilerActivity, profile
from work import multiply_adds_per_image

from fedbat_mpi.client.algorithms import LocalTask, make_algorithm
from fedbat_mpi.client.algorithms.fedbat import BINARIZED, client_loss, trained_tensors
from fedbat_mpi.client.algorithms.group import (
    Bucket,
    GroupStep,
    Stacked,
    member_index,
    plain_loss,
    side_stream,
    stacked_state,
)
from fedbat_mpi.client.grouped_layers import grouped_inputs
from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.layout import ModelLayout

Step = Callable[[dict[str, torch.Tensor]], None]  # one training step on one step's inputs
LR = 0.01


class Problem:
    """The trained tensors of one group, its loss, and the inputs of every step, on ``device``."""

    def __init__(self, algorithm: str, clients: int, batch: int, steps: int, device: torch.device):
        torch.manual_seed(0)
        self.algorithm, self.clients = algorithm, clients
        self.model = model = build_model("cnn4-mnist", 10).to(device).train()
        if algorithm == "fedbat":
            layout = ModelLayout(model, binarized_names(model))
            frozen, self.params, self.buffers = trained_tensors(model, layout, clients)
            self.loss = client_loss(model, layout, frozen, rho=6.0, phase=BINARIZED)
            alpha0 = {"alpha0": torch.full((clients, len(layout.binarized)), 0.01, device=device)}
            noise = {"noise": (clients, layout.update_size)}
        else:
            self.params, self.buffers = stacked_state(model, clients)
            self.loss, alpha0, noise = plain_loss(model), {}, {}
        self.inputs = [
            {"x": torch.randn(clients, batch, 1, 28, 28, device=device),
             "y": torch.randint(0, 10, (clients, batch), device=device),
             **alpha0, **{n: torch.rand(shape, device=device) for n, shape in noise.items()}}
            for _ in range(steps)
        ]  # fmt: skip
        self.start = {n: t.detach().clone() for n, t in {**self.params, **self.buffers}.items()}

    def reset(self) -> None:
        """Every trained tensor and buffer back to its starting value, in place."""
        with torch.no_grad():
            for n, t in {**self.params, **self.buffers}.items():
                t.copy_(self.start[n])


def group_step(problem: Problem, graphs: bool = False, compiled: bool = False) -> Step:
    """A run's step of the problem's whole group as one bucket: ``GroupStep`` with or without CUDA graphs,
    its loss optionally under ``torch.compile``."""
    device = problem.inputs[0]["x"].device
    loss = problem.loss
    if compiled:
        if device.type == "cuda":  # the trained tensors and BatchNorm statistics the loss updates in place
            # are the same tensors at every call: static, so that the CUDA graphs need not be skipped;
            # a skip would still be said in the output (perf hints).
            for tensor in [*problem.params.values(), *problem.buffers.values()]:
                torch._dynamo.mark_static_address(tensor)
            torch._logging.set_logs(perf_hints=True)
        loss = torch.compile(loss, mode="reduce-overhead" if device.type == "cuda" else None)
    step = GroupStep(problem.params, problem.buffers, LR, lambda phase: loss, graphs)
    index = member_index(tuple(range(problem.clients)), device)

    def run(inputs: dict[str, torch.Tensor]) -> None:
        extras = {n: t for n, t in inputs.items() if n not in ("x", "y")}
        x = grouped_inputs(list(inputs["x"].unbind(0)))
        step([Bucket(None, index, True, x, inputs["y"], extras)])

    return run


def operations(work: Callable[[], None], device: torch.device) -> int:
    """The operations ``work`` issues: CUDA kernels launched, or top-level ATen calls on the CPU."""
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
    with profile(activities=activities) as trace:
        work()
        _sync(device)
    if device.type == "cuda":
        return sum(1 for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in trace.events() if e.name.startswith("aten::") and not _inside_aten(e))


def _inside_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def measure_train_group(problem: Problem, graphs: bool = False) -> dict:
    """The algorithm's own training of the group over the problem's batches (FedBAT's warm-up 0: every
    step binarized), once to warm up and once timed, then once more counting host-device
    synchronisations on CUDA; with ``graphs``, its steps replayed as CUDA graphs (``--cuda-graphs on``)."""
    model, device = problem.model, problem.inputs[0]["x"].device
    layout = ModelLayout(model, binarized_names(model))
    trainer = make_algorithm(problem.algorithm, rho=6.0, warmup=0.0)
    clients, steps = problem.inputs[0]["x"].shape[0], len(problem.inputs)

    def batches(k: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((i["x"][k], i["y"][k]) for i in problem.inputs)

    def generator(k: int, stream: int) -> torch.Generator:
        return torch.Generator(device).manual_seed(k)

    def train() -> None:
        trainer.train([LocalTask(k, model, layout, functools.partial(batches, k), steps, LR, functools.partial(generator, k),
                                 graphs=graphs) for k in range(clients)])  # fmt: skip

    start = time.perf_counter()
    train()
    _sync(device)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    train()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    syncs = None
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught) / steps
    return {"variant": "train_group_graphs" if graphs else "train_group", "ms_per_step": 1e3 * seconds, "build_s": build_s, "syncs_per_step": syncs,
            "ops_per_step": operations(train, device) / steps}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(problem: Problem, variant: str, warm: int, reference: Stacked | None) -> dict:
    """Build the variant's step, run ``warm`` steps, reset, time every step's inputs; its final tensors
    compared with ``reference`` (eager's)."""
    device = problem.inputs[0]["x"].device
    problem.reset()
    with side_stream(device):
        start = time.perf_counter()
        step = group_step(problem, graphs=variant == "graph", compiled=variant == "compiled")
        for inputs in problem.inputs[:warm]:
            step(inputs)
        _sync(device)
        build_s = time.perf_counter() - start
        problem.reset()
        start = time.perf_counter()
        for inputs in problem.inputs:
            step(inputs)
        _sync(device)
        seconds = (time.perf_counter() - start) / len(problem.inputs)
    final = {n: t.detach().clone() for n, t in problem.params.items()}
    difference = None if reference is None else max((final[n] - reference[n]).abs().max().item() for n in final)
    ops = operations(lambda: step(problem.inputs[0]), device) if variant == "eager" else None
    return {"variant": variant, "ms_per_step": 1e3 * seconds, "build_s": build_s, "max_difference": difference,
            "ops_per_step": ops, "final": final}  # fmt: skip


def main() -> None:
    parser = benchlib.parser("step_graphs", __doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algorithms", nargs="+", default=["fedbat", "fedavg"], choices=["fedbat", "fedavg"])
    parser.add_argument("--clients", type=int, default=10, help="clients of the group")
    parser.add_argument("--batch", type=int, default=64, help="images per client and step")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (after as many warm-up steps)")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile variant (minutes on a CPU)")
    options = parser.parse_args()
    if options.quick:
        options.clients, options.batch, options.steps = 2, 4, 3
    device = torch.device(options.device)
    cuda = device.type == "cuda"
    variants = ["eager", *(["graph"] if cuda else []), *(["compiled"] if options.compile else []), "train_group",
                *(["train_group_graphs"] if cuda else [])]  # fmt: skip
    flops = 2 * 3 * multiply_adds_per_image("cnn4-mnist", (1, 28, 28), 10) * options.clients * options.batch
    results = []
    for algorithm in options.algorithms:
        problem = Problem(algorithm, options.clients, options.batch, options.steps, device)
        reference = None
        for variant in variants:
            try:
                if variant.startswith("train_group"):
                    row = measure_train_group(problem, graphs=variant == "train_group_graphs")
                else:
                    row = measure(problem, variant, options.steps, reference)
            except Exception as error:  # a variant that cannot run here is reported; the others go on
                print(f"  {algorithm} {variant}: FAILED {type(error).__name__}: {str(error).splitlines()[0]}")
                results.append({"algorithm": algorithm, "variant": variant, "error": f"{type(error).__name__}: {error}"})
                continue
            if variant == "eager":
                reference = row["final"]
            row.pop("final", None)
            row.update(algorithm=algorithm, tflops=flops / row["ms_per_step"] / 1e9)
            results.append(row)
            print(f"  {algorithm} {variant}: {row['ms_per_step']:.2f} ms/step", flush=True)
    eager = {r["algorithm"]: r["ms_per_step"] for r in results if r["variant"] == "eager"}
    for row in results:
        if "ms_per_step" in row:
            row["speedup_over_eager"] = eager[row["algorithm"]] / row["ms_per_step"]
    print(f"{options.clients} clients x {options.batch} images a step on {device}, CNN4-MNIST")
    benchlib.print_table([r for r in results if "ms_per_step" in r], [
        ("algorithm", "algorithm", ""), ("variant", "variant", ""), ("ms/step", "ms_per_step", ".2f"),
        ("speed-up", "speedup_over_eager", ".2f"), ("TFLOP/s", "tflops", ".2f"), ("build s", "build_s", ".1f"),
        ("max diff vs eager", "max_difference", ".1e"), ("syncs/step", "syncs_per_step", ".1f"),
        ("ops/step", "ops_per_step", ".0f"),
    ])  # fmt: skip
    benchlib.write_json(options.json, "step_graphs", vars(options), results)


if __name__ == "__main__":
    main()
