"""``python -m fedbat_mpi.checkpoint PATH``: print a checkpoint's round, configuration and sizes (no MPI).

The file format is ``fedbat_mpi.server.checkpoint``.
"""

import os
import sys

from fedbat_mpi.errors import UsageError, run_command
from fedbat_mpi.server.checkpoint import RANDOM_STATE, load
from fedbat_mpi.server.client_state import FILE_NAME


def describe(path: str) -> str:
    """A human-readable summary of a checkpoint."""
    state = load(path, option="checkpoint")
    params = sum(t.size for t in state.tensors.values())
    lines = [
        f"checkpoint {path} ({os.path.getsize(path):,} bytes)",
        f"  format {state.format_version}, written by fedbat_mpi {state.package_version} on {state.num_ranks} ranks "
        f"at {state.created}",
        f"  round {state.round} of {state.config.get('rounds')}",
        f"  model: {len(state.tensors)} tensors, {params:,} values ({4 * params:,} bytes float32)",
        f"  random state: {RANDOM_STATE}",
        f"  data set SHA-256: {state.data_sha256 or 'not recorded (format 3 or older)'}",
    ]
    if state.metrics:
        last = state.metrics[-1]
        best = max(row["test_acc"] for row in state.metrics)
        lines.append(f"  metrics: {len(state.metrics)} rounds, last test_acc {100 * last['test_acc']:.2f}%, best {100 * best:.2f}%")
        lines.append(f"  model_sha256 {last['model_sha256']}")
    if (index := state.client_state) is not None:
        lines.append(f"  client state {index.name}: {index.clients_with_rows():,} of {len(index.slots):,} clients "
                     f"hold a row of {index.row_size:,} float32 values, in {_store_summary(path)}")  # fmt: skip
    lines.append("  config:")
    lines.extend(f"    {key}: {value}" for key, value in sorted(state.config.items()))
    return "\n".join(lines)


def _store_summary(checkpoint_path: str) -> str:
    """The client-state file beside a checkpoint, with its size on disk (it is sparse: see client_state.py)."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), FILE_NAME)
    if not os.path.isfile(path):
        return f"{FILE_NAME} (missing)"
    stat = os.stat(path)
    return f"{FILE_NAME} ({512 * stat.st_blocks:,} bytes on disk, {stat.st_size:,} apparent)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m fedbat_mpi.checkpoint PATH  (prints a checkpoint's round, configuration and sizes)"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(usage, file=sys.stderr)
        return UsageError.exit_status
    return run_command("fedbat_mpi.checkpoint", lambda: print(describe(argv[0])))


if __name__ == "__main__":
    sys.exit(main())
