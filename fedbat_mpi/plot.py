"""``python -m fedbat_mpi.plot RUN_DIR... --out DIR``: accuracy curves of runs as PNG files.

Runs are grouped by setting (data set and partition); each group gets one figure with test accuracy
against the round and against the cumulative uplink bytes (log scale), one line per algorithm.
"""

import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedbat_mpi.client.algorithms import ALGORITHMS  # noqa: E402
from fedbat_mpi.errors import OneLineParser, UsageError, run_command  # noqa: E402
from fedbat_mpi.records import RunRecord, read_run  # noqa: E402


def _color(algorithm: str) -> str:
    """The same colour for an algorithm in every figure."""
    return f"C{ALGORITHMS.index(algorithm) % 10}" if algorithm in ALGORITHMS else "black"


def plot_setting(setting: str, runs: list[RunRecord], path: Path) -> None:
    figure, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for run in sorted(runs, key=lambda r: r.algorithm):
        rounds = [row["round"] for row in run.rows]
        accuracy = [100 * row["test_acc"] for row in run.rows]
        style = {"marker": ".", "label": run.algorithm, "color": _color(run.algorithm)}
        by_round.plot(rounds, accuracy, **style)
        by_bytes.plot(run.cumulative_uplink(), accuracy, **style)
    by_round.set(xlabel="round", ylabel="test accuracy (%)", title=f"{setting}: accuracy by round")
    by_bytes.set(xlabel="uplink bytes (all clients, cumulative)", ylabel="test accuracy (%)", xscale="log",
                 title=f"{setting}: accuracy by uplink bytes")  # fmt: skip
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in (by_round, by_bytes):
        axes.grid(alpha=0.3)
    by_round.legend()
    try:
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise UsageError(f"--out: cannot write {path}: {error.strerror or error}") from None
    finally:
        plt.close(figure)


def plot_runs(folders: list[str], out: str) -> list[Path]:
    """One PNG per setting under ``out``; returns their paths."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for folder in folders:
        run = read_run(folder)
        groups[run.setting].append(run)
    _make_folder(out)
    paths = []
    for setting, runs in sorted(groups.items()):
        path = Path(out) / f"accuracy-{setting.replace(' ', '-').replace(':', '')}.png"
        plot_setting(setting, runs, path)
        paths.append(path)
    return paths


def _make_folder(out: str) -> None:
    """The ``--out`` folder, made if need be; a UsageError when it is no folder name or cannot be made."""
    if not out:
        raise UsageError(f"--out: expected a folder name, got {out!r}")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out: cannot make the folder {out}: {error.strerror or error}") from None


def _command(argv: list[str] | None) -> None:
    parser = OneLineParser(prog="python -m fedbat_mpi.plot", description="Accuracy curves of runs as PNG files: "
                           "one figure per data set and partition, test accuracy against the round and "
                           "against the uplink sent, one line per algorithm.")  # fmt: skip
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's --out folder (config.yaml, metrics.jsonl)")
    parser.add_argument("--out", default="plots", help="folder for the PNG files (default: plots)")
    args = parser.parse_args(argv)
    for path in plot_runs(args.runs, args.out):
        print(path)


def main(argv: list[str] | None = None) -> int:
    return run_command("fedbat_mpi.plot", lambda: _command(argv))


if __name__ == "__main__":
    sys.exit(main())
