"""The accuracy tables of docs/RESULTS.md's E = 10 section, from runs' ``metrics.jsonl``: test accuracy
at rounds 5, 10, 20, ..., 100 with the means of rounds 31-35 and 91-100, then the mean of each ten
rounds. (Best and final accuracy and the uplink to a target: ``python -m fedbat_mpi.summary``.)

    python docs/results/e10_tables.py FedBAT=docs/results/e10/fedbat-dir0.3 ZSign=docs/results/e10/zsign-dir0.3
"""

import json
import sys
from pathlib import Path

ROUNDS = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)


def accuracies(run: Path) -> dict[int, float]:
    """Test accuracy in percent by round."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["round"]: 100 * row["test_acc"] for row in rows}


def mean(acc: dict[int, float], first: int, last: int) -> str:
    """The mean over rounds ``first``..``last``, or a dash where the run has not reached ``last``."""
    if last not in acc:
        return "—"
    return f"{sum(acc[r] for r in range(first, last + 1)) / (last - first + 1):.2f}"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(named_runs: list[str]) -> None:
    runs = {name: accuracies(Path(folder)) for name, folder in (arg.split("=", 1) for arg in named_runs)}
    print(row(["algorithm", *(f"round {r}" for r in ROUNDS), "mean of rounds 31-35", "mean of rounds 91-100"]))
    print(row(["---"] * (len(ROUNDS) + 3)))
    for name, acc in runs.items():
        at = [f"{acc[r]:.2f}" if r in acc else "—" for r in ROUNDS]
        print(row([name, *at, mean(acc, 31, 35), mean(acc, 91, 100)]))
    print()
    windows = [(first, first + 9) for first in range(1, 101, 10)]
    print(row(["algorithm", *(f"{first}-{last}" for first, last in windows)]))
    print(row(["---"] * (len(windows) + 1)))
    for name, acc in runs.items():
        print(row([name, *(mean(acc, first, last) for first, last in windows)]))


if __name__ == "__main__":
    if len(sys.argv) < 2 or any("=" not in arg for arg in sys.argv[1:]):
        sys.exit("usage: python docs/results/e10_tables.py NAME=RUN_FOLDER [NAME=RUN_FOLDER ...]")
    main(sys.argv[1:])
