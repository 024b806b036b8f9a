"""``python -m fedbat_mpi.summary RUN_DIR... [--target ACC]``: a Markdown table comparing runs.

Per run: best and final test accuracy, the first round reaching the target accuracy and the uplink
bytes sent until then, and the uplink per client per round. The best accuracy's round is the earliest
round with that accuracy.
"""

import sys

from fedbat_mpi.errors import OneLineParser, UsageError, run_command
from fedbat_mpi.records import RunRecord, read_run


def _megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:,.1f} MB"


def table(runs: list[RunRecord], target: float) -> str:
    header = (f"| setting | algorithm | rounds | best acc (round) | final acc | first round ≥ {100 * target:g} % "
              f"| uplink to {100 * target:g} % | uplink per client per round |")  # fmt: skip
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: (r.setting, r.algorithm)):
        rows = run.rows
        best = max(rows, key=lambda row: row["test_acc"])
        reached = next((i for i, row in enumerate(rows) if row["test_acc"] >= target), None)
        uplink = run.cumulative_uplink()
        per_client = uplink[-1] / sum(len(row["clients"]) for row in rows)
        lines.append(
            f"| {run.setting} | {run.algorithm} | {len(rows)} | {100 * best['test_acc']:.2f} % ({best['round']}) "
            f"| {100 * rows[-1]['test_acc']:.2f} % | {rows[reached]['round'] if reached is not None else '—'} "
            f"| {_megabytes(uplink[reached]) if reached is not None else '—'} | {per_client / 1e3:,.1f} kB |"
        )
    return "\n".join(lines)


def _command(argv: list[str] | None) -> None:
    parser = OneLineParser(prog="python -m fedbat_mpi.summary", description="A Markdown table comparing runs: "
                           "best and final test accuracy, the first round at the target accuracy and the "
                           "uplink sent until then, the uplink per client per round.")  # fmt: skip
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's --out folder (config.yaml, metrics.jsonl)")
    parser.add_argument("--target", type=float, default=0.8, help="target test accuracy, in (0, 1] (default: 0.8)")
    args = parser.parse_args(argv)
    if not 0 < args.target <= 1:
        raise UsageError(f"--target: expected a test accuracy in (0, 1], got {args.target}")
    print(table([read_run(folder) for folder in args.runs], args.target))


def main(argv: list[str] | None = None) -> int:
    return run_command("fedbat_mpi.summary", lambda: _command(argv))


if __name__ == "__main__":
    sys.exit(main())
