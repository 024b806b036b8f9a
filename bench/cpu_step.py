"""Where a CPU training step's time goes, operator by operator, against the core's matrix-multiply rate.

One client's local training (``Algorithm.train``, the code a run executes) of CNN4-MNIST on batches of
64 images, one thread, profiled with ``torch.profiler``: each operator's share of the step, and the
convolutions' and linear layer's arithmetic rate (their multiply-adds, counted from the model, over
their time) against single-threaded ``sgemm`` (2048 x 2048, the faster of MKL and OpenBLAS, as in
``cpu_roof.py``) measured in the same run. It shows how far the step can get toward ``cpu_roof.py``'s
roof: the convolutions near the sgemm rate, and BatchNorm, pooling and fills (memory-bound, no
arithmetic the roof counts) as the rest. The minor page faults and system time of a step are reported
beside it (with the heap thresholds a run sets, ``rounds/heap.py``).

The profiler changes what it measures: a profiled step takes hundreds to thousands of page faults
where an unprofiled one takes none (the profiler's own allocations break up the heap a step reuses,
and later unprofiled steps fault too), which inflates memory-bound operators, buffer fills most (the
first pooling layer's 6.4 MB zero fill: 2.4 ms profiled, its whole backward pass 1.0 ms by hooks).
So every algorithm's unprofiled runs come before any profiled one, the operator shares come from a
second profiled run (the first also pays the profiler's start-up), and its faults are reported;
each layer's forward and backward milliseconds come from an unprofiled run, timed by module and
tensor hooks (``layer_times``); what the layers leave of a step (the first layer's backward pass, the
loss, FedBAT's binarizer and noise, the SGD update) is ``rest``, from the same run.

    python bench/cpu_step.py                       # FedBAT and FedAvg, 10 steps each
"""

import resource
import time
from collections import defaultdict
from collections.abc import Callable

import benchlib
import torch
from cpu_roof import machine_rate
from torch.profiler import ProfilerActivity, profile
from work import multiply_adds_per_image

from fedbat_mpi.client.algorithms import LocalTask, make_algorithm
from fedbat_mpi.client.device import in_memory_format
from fedbat_mpi.client.grouped_layers import grouped_model
from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rounds.heap import keep_freed_heap

# Operators by what they are; anything else is "other".
KINDS = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm"),
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
    "max pool": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"),
    "fill / zero": ("aten::fill_", "aten::zero_"),
    "copy": ("aten::copy_",),
}


def kind_of(name: str) -> str:
    return next((kind for kind, names in KINDS.items() if name in names), "other")


def layer_times(model: torch.nn.Module, train: Callable[[], None], steps: int) -> tuple[dict[str, list[float]], float]:
    """Each top-level layer's ``[forward, backward]`` ms a step of ``train`` (``steps`` steps), from
    timestamps that hooks on the grouped copy of ``model`` (the module a step runs) take: a layer's
    forward between its pre- and post-hook, its backward from the gradient of its output to that of
    the layer before (the first layer's backward is not seen: it counts as the rest); and the ms a
    step of that run."""
    layers = dict(grouped_model(model).named_children())
    forward: dict[str, float] = defaultdict(float)
    backward: dict[str, float] = defaultdict(float)
    started: list[float] = []
    gradients: list[tuple[str, float]] = []

    def before(*_: object) -> None:
        started.append(time.perf_counter())

    def after(name: str) -> Callable[..., None]:
        def hook(_: torch.nn.Module, __: object, output: torch.Tensor) -> None:
            forward[name] += time.perf_counter() - started.pop()
            if output.requires_grad:
                output.register_hook(lambda _: gradients.append((name, time.perf_counter())))

        return hook

    handles = [hook for name, layer in layers.items()
               for hook in (layer.register_forward_pre_hook(before), layer.register_forward_hook(after(name)))]  # fmt: skip
    start = time.perf_counter()
    try:
        train()
    finally:
        for handle in handles:
            handle.remove()
    step_ms = 1e3 * (time.perf_counter() - start) / steps
    order = list(layers)
    for (later, reached), (earlier, passed) in zip(gradients, gradients[1:]):
        if order.index(earlier) < order.index(later):  # within one backward pass
            backward[later] += passed - reached
    return {name: [1e3 * forward[name] / steps, 1e3 * backward[name] / steps] for name in order}, step_ms


def training(algorithm: str, steps: int, batch: int) -> tuple[torch.nn.Module, Callable[[], None]]:
    """A fresh CNN4-MNIST and a call that trains it as one client of ``algorithm`` for ``steps`` steps
    of ``batch`` random images."""
    torch.manual_seed(0)
    model = build_model("cnn4-mnist", 10).train()
    layout = ModelLayout(model, binarized_names(model))
    images = in_memory_format(torch.randn(batch, 1, 28, 28), torch.device("cpu"))
    data = [(images, torch.randint(0, 10, (batch,))) for _ in range(steps)]
    trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5)

    def train() -> None:
        trainer.train([LocalTask(0, model, layout, lambda: iter(data), steps, 0.01,
                                 lambda stream: torch.Generator().manual_seed(int(stream)))])  # fmt: skip

    return model, train


def main() -> None:
    parser = benchlib.parser("cpu_step", __doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=["fedbat", "fedavg"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    options = parser.parse_args()
    if options.quick:
        options.steps, options.batch = 2, 8
    torch.set_num_threads(1)
    keep_freed_heap()  # as a run does (rounds/job.py)
    sgemm = machine_rate(1, 0.5 if options.quick else 3.0)  # in its own process, one OpenBLAS thread
    flops_per_step = 2 * 3 * multiply_adds_per_image("cnn4-mnist", (1, 28, 28), 10) * options.batch
    trainings = {algorithm: training(algorithm, options.steps, options.batch) for algorithm in options.algorithms}
    results = []
    for algorithm, (model, train) in trainings.items():  # every unprofiled run before any profiled one
        train()
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train()
        step_s = (time.perf_counter() - start) / options.steps
        after = resource.getrusage(resource.RUSAGE_SELF)
        layers, layer_step_ms = layer_times(model, train, options.steps)
        results.append({"algorithm": algorithm, "step_ms": 1e3 * step_s, "sgemm_gflops": sgemm / 1e9,
                        "roof_share": flops_per_step / sgemm / step_s,
                        "minor_faults_per_step": (after.ru_minflt - usage.ru_minflt) / options.steps,
                        "system_ms_per_step": 1e3 * (after.ru_stime - usage.ru_stime) / options.steps,
                        "layers_ms": layers, "rest_ms": layer_step_ms - sum(map(sum, layers.values()))})  # fmt: skip
    for row, (_, train) in zip(results, trainings.values()):
        for _ in range(2):  # the second profiled run: the first also pays the profiler's start-up
            profiled_usage = resource.getrusage(resource.RUSAGE_SELF)
            with profile(activities=[ProfilerActivity.CPU]) as trace:
                train()
        profiled_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - profiled_usage.ru_minflt
        seconds: dict[str, float] = defaultdict(float)
        for event in trace.key_averages():
            seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / options.steps
        profiled = sum(seconds.values())
        row["conv_rate_vs_sgemm"] = flops_per_step / seconds["convolution"] / sgemm
        row["profiled_faults_per_step"] = profiled_faults / options.steps
        row.update({f"share_{kind.replace(' / ', '_').replace(' ', '_')}": seconds[kind] / profiled
                    for kind in [*KINDS, "other"]})  # fmt: skip
    columns = [("algorithm", "algorithm", ""), ("ms/step", "step_ms", ".1f"), ("sgemm GFLOP/s", "sgemm_gflops", ".1f"),
               ("roof share", "roof_share", ".2f"), ("conv rate / sgemm", "conv_rate_vs_sgemm", ".2f"),
               ("faults/step", "minor_faults_per_step", ".0f"), ("system ms/step", "system_ms_per_step", ".1f"),
               ("faults/profiled step", "profiled_faults_per_step", ".0f")]  # fmt: skip
    columns += [(kind, f"share_{kind.replace(' / ', '_').replace(' ', '_')}", ".2f") for kind in [*KINDS, "other"]]
    print(f"CNN4-MNIST, batch {options.batch}, one thread; shares of the profiled operator time")
    benchlib.print_table(results, columns)
    print("\nms a step by layer (forward / backward), unprofiled, timed by hooks")
    layer_rows = [{"layer": name, **{row["algorithm"]: "{:.2f} / {:.2f}".format(*row["layers_ms"][name]) for row in results}}
                  for name in results[0]["layers_ms"]]  # fmt: skip
    layer_rows.append({"layer": "rest", **{row["algorithm"]: f"{row['rest_ms']:.2f}" for row in results}})
    benchlib.print_table(layer_rows, [("layer", "layer", ""), *[(row["algorithm"], row["algorithm"], "") for row in results]])
    benchlib.write_json(options.json, "cpu_step", vars(options), results)


if __name__ == "__main__":
    main()
