"""Do runs give the same results? Compares the ``metrics.jsonl`` rows of run folders, timings aside.

``python bench/same_runs.py RUN_A RUN_B [RUN ...]`` prints one line per run against the first and
exits 1 when any differs (another round count, accuracy, loss, bytes or ``model_sha256``), so that a
determinism check in a script fails instead of printing a list. Exit 2 when a folder has no metrics.
"""

import argparse
import sys
from pathlib import Path

from fedbat_mpi.testing.launch import metrics, without_timings


def first_difference(a: list[dict], b: list[dict]) -> str | None:
    """Where ``b`` first departs from ``a``, in words; ``None`` when they are equal."""
    if len(a) != len(b):
        return f"{len(b)} rounds instead of {len(a)}"
    for row_a, row_b in zip(a, b):
        keys = sorted(k for k in row_a.keys() | row_b.keys() if row_a.get(k) != row_b.get(k))
        if keys:
            return f"round {row_a.get('round')}: {', '.join(keys)} differ"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (--out of each run), two or more")
    runs = parser.parse_args(argv).runs
    if len(runs) < 2:
        parser.error("give at least two run folders")
    try:
        reference, *others = [without_timings(metrics(run)) for run in runs]
    except OSError as error:
        print(f"same_runs: error: {error}", file=sys.stderr)
        return 2
    differing = 0
    for run, rows in zip(runs[1:], others):
        difference = first_difference(reference, rows)
        differing += difference is not None
        last = rows[-1]["model_sha256"][:12] if rows else "no rounds"
        print(f"{run} vs {runs[0]}: {difference or 'identical'} (last model_sha256 {last}…)")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
