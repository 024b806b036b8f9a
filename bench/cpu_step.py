"""Where a CPU training step's time goes, operator by operator, against the core's matrix-multiply rate.

One client's local training (``Algorithm.train``, the code a run executes) of CNN4-MNIST on batches of
64 images, one thread, profiled with ``torch.profiler``: each operator's share of the step, and the
convolutions' and linear layer's arithmetic rate (their multiply-adds, counted from the model, over
their time) against single-threaded ``sgemm`` (2048 x 2048, the faster of MKL and OpenBLAS, as in
``cpu_roof.py``) measured in the same run. It shows how far the step can get toward ``cpu_roof.py``'s
roof: the convolutions near the sgemm rate, and BatchNorm, pooling and fills (memory-bound, no
arithmetic the roof counts) as the rest. The minor page faults and system time of a step are reported
beside it (with the heap thresholds a run sets, ``rounds/heap.py``).

    python bench/cpu_step.py                       # FedBAT and FedAvg, 10 steps each
"""

import resource
import time
from collections import defaultdict

import benchlib
import torch
from cpu_roof import machine_rate
from torch.profiler import ProfilerActivity, profile
from work import multiply_adds_per_image

from fedbat_mpi.client.algorithms import LocalTask, make_algorithm
from fedbat_mpi.client.device import in_memory_format
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
    device = torch.device("cpu")
    flops_per_step = 2 * 3 * multiply_adds_per_image("cnn4-mnist", (1, 28, 28), 10) * options.batch
    results = []
    for algorithm in options.algorithms:
        torch.manual_seed(0)
        model = build_model("cnn4-mnist", 10).train()
        layout = ModelLayout(model, binarized_names(model))
        images = in_memory_format(torch.randn(options.batch, 1, 28, 28), device)
        data = [(images, torch.randint(0, 10, (options.batch,))) for _ in range(options.steps)]
        trainer = make_algorithm(algorithm, rho=6.0, warmup=0.5)

        def train() -> None:
            trainer.train([LocalTask(0, model, layout, lambda: iter(data), options.steps, 0.01,
                                     lambda stream: torch.Generator().manual_seed(int(stream)))])  # fmt: skip

        train()
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train()
        step_s = (time.perf_counter() - start) / options.steps
        after = resource.getrusage(resource.RUSAGE_SELF)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            train()
        seconds = defaultdict(float)
        for event in trace.key_averages():
            seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / options.steps
        profiled = sum(seconds.values())
        row = {"algorithm": algorithm, "step_ms": 1e3 * step_s, "sgemm_gflops": sgemm / 1e9,
               "roof_share": flops_per_step / sgemm / step_s,
               "conv_rate_vs_sgemm": flops_per_step / seconds["convolution"] / sgemm,
               "minor_faults_per_step": (after.ru_minflt - usage.ru_minflt) / options.steps,
               "system_ms_per_step": 1e3 * (after.ru_stime - usage.ru_stime) / options.steps}  # fmt: skip
        row.update({f"share_{kind.replace(' / ', '_').replace(' ', '_')}": seconds[kind] / profiled
                    for kind in [*KINDS, "other"]})  # fmt: skip
        results.append(row)
    columns = [("algorithm", "algorithm", ""), ("ms/step", "step_ms", ".1f"), ("sgemm GFLOP/s", "sgemm_gflops", ".1f"),
               ("roof share", "roof_share", ".2f"), ("conv rate / sgemm", "conv_rate_vs_sgemm", ".2f"),
               ("faults/step", "minor_faults_per_step", ".0f"), ("system ms/step", "system_ms_per_step", ".1f")]  # fmt: skip
    columns += [(kind, f"share_{kind.replace(' / ', '_').replace(' ', '_')}", ".2f") for kind in [*KINDS, "other"]]
    print(f"CNN4-MNIST, batch {options.batch}, one thread; shares of the profiled operator time")
    benchlib.print_table(results, columns)
    benchlib.write_json(options.json, "cpu_step", vars(options), results)


if __name__ == "__main__":
    main()
