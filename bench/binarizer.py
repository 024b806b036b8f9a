"""FedBAT's binarizer alone: forward and backward of one step over CNN4-MNIST's binarized tensors.

``binarize_segments`` (``client/binarize.py``) for G clients' flat updates (389,920 entries each, five
step sizes), then its backward pass, one thread, on the heap a run sets (``rounds/heap.py``): the
elementwise work a binarized FedBAT step adds to the model's own, against one memory copy of the
same G x P floats measured beside it (what a single pass over the data costs). ``--baseline DIR``
loads another checkout's ``client/binarize.py`` (e.g. ``git worktree add /tmp/before COMMIT``) and
times the two in turn, checking that they give the same bits (outputs and both gradients).

    python bench/binarizer.py                                   # groups of 1 and 10 clients
    python bench/binarizer.py --baseline /tmp/before
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import benchlib
import torch

from fedbat_mpi.client import binarize
from fedbat_mpi.client.models import binarized_names, build_model
from fedbat_mpi.layout import ModelLayout
from fedbat_mpi.rounds.heap import keep_freed_heap


def module_of(checkout: Path) -> ModuleType:
    """Another checkout's ``fedbat_mpi/client/binarize.py``, loaded on its own."""
    spec = importlib.util.spec_from_file_location("baseline_binarize", checkout / "fedbat_mpi/client/binarize.py")
    assert spec is not None and spec.loader is not None, f"no fedbat_mpi/client/binarize.py in {checkout}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = benchlib.parser("binarizer", __doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 10], help="clients binarized at once")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="another checkout whose binarizer is timed in turn")
    options = parser.parse_args()
    if options.quick:
        options.groups, options.repeats = [2], 2
    torch.set_num_threads(1)
    keep_freed_heap()
    model = build_model("cnn4-mnist", 10)
    layout = ModelLayout(model, binarized_names(model))
    sizes = tuple(seg.size for seg in layout.binarized)
    modules = {"this": binarize, **({"baseline": module_of(options.baseline.resolve())} if options.baseline else {})}
    generator = torch.Generator().manual_seed(0)
    results = []
    for group in options.groups:
        shape = (group, sum(sizes))
        m = torch.randn(shape, generator=generator) * 1e-2
        alpha = torch.rand((group, len(sizes)), generator=generator) * 1e-2 + 5e-4
        noise, grad = torch.rand(shape, generator=generator), torch.randn(shape, generator=generator)
        copy_target = torch.empty(shape)

        def step(module: ModuleType) -> tuple[torch.Tensor, ...]:
            latent, scale = m.clone().requires_grad_(), alpha.clone().requires_grad_()
            out = module.binarize_segments(latent, scale, noise, sizes)
            out.backward(grad)
            assert latent.grad is not None and scale.grad is not None
            return out.detach(), latent.grad, scale.grad

        outputs = {name: step(module) for name, module in modules.items()}
        same_bits = all(torch.equal(a, b) for a, b in zip(*outputs.values(), strict=True)) if options.baseline else None
        functions = {name: (lambda module=module: step(module)) for name, module in modules.items()}
        times = benchlib.interleaved({**functions, "copy": lambda: copy_target.copy_(m)}, options.repeats)
        row = {"clients": group, "entries": m.numel(), "same_bits_as_baseline": same_bits,
               "copy_ms": 1e3 * benchlib.median(times["copy"])}  # fmt: skip
        for name in modules:
            row[f"{name}_ms"] = 1e3 * benchlib.median(times[name])
            row[f"{name}_copies"] = row[f"{name}_ms"] / row["copy_ms"]
        if options.baseline:
            row["baseline_over_this"] = row["baseline_ms"] / row["this_ms"]
        results.append(row)
    columns = [("clients", "clients", ""), ("entries", "entries", ","), ("copy ms", "copy_ms", ".2f"),
               ("this ms", "this_ms", ".2f"), ("this / copy", "this_copies", ".1f")]  # fmt: skip
    if options.baseline:
        columns += [("baseline ms", "baseline_ms", ".2f"), ("baseline / copy", "baseline_copies", ".1f"),
                    ("baseline / this", "baseline_over_this", ".2f"), ("same bits", "same_bits_as_baseline", "")]  # fmt: skip
    print(f"binarize_segments forward + backward, CNN4-MNIST's {len(sizes)} binarized tensors, one thread; "
          f"median of {options.repeats} turns")  # fmt: skip
    benchlib.print_table(results, columns)
    settings = {**vars(options), "baseline": str(options.baseline) if options.baseline else None}
    benchlib.write_json(options.json, "binarizer", settings, results)


if __name__ == "__main__":
    main()
