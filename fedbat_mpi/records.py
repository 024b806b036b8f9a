"""Reading finished runs back: a run folder's configuration and ``metrics.jsonl`` rows."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedbat_mpi.errors import UsageError

CONFIG_KEYS = ("algorithm", "dataset", "partition")  # what the readers of a run's configuration use (text)
# What they use of each metrics row: what each value must be, and the check.
ROW_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "round": ("an integer", lambda value: type(value) is int),
    "clients": ("a non-empty list", lambda value: isinstance(value, list) and len(value) > 0),
    "test_acc": ("a number", lambda value: type(value) in (int, float)),
    "uplink_bytes": ("an integer", lambda value: type(value) is int),
}


@dataclass
class RunRecord:
    """One run's configuration and metrics, as written to its ``--out`` folder."""

    config: dict
    rows: list[dict]

    @property
    def algorithm(self) -> str:
        return self.config["algorithm"]

    @property
    def setting(self) -> str:
        """The data set and partition, e.g. ``fmnist dir:0.3``."""
        return f"{self.config['dataset']} {self.config['partition']}"

    def cumulative_uplink(self) -> list[int]:
        total, out = 0, []
        for row in self.rows:
            total += row["uplink_bytes"]
            out.append(total)
        return out


def read_run(folder: str) -> RunRecord:
    """The run in ``folder``; a UsageError if it has no configuration or no finished round, or either
    lacks what a run writes or holds a value of another type."""
    path = Path(folder)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise UsageError(f"{folder}: not a run folder with config.yaml and metrics.jsonl ({error})") from None
    if not isinstance(config, dict) or not all(key in config for key in CONFIG_KEYS):
        raise UsageError(f"{folder}: config.yaml is not a run's configuration (needs {', '.join(CONFIG_KEYS)})")
    for key in CONFIG_KEYS:
        if not isinstance(config[key], str):
            raise UsageError(f"{folder}: config.yaml is not a run's configuration ({key}: expected text, got {config[key]!r})")
    if not rows:
        raise UsageError(f"{folder}: metrics.jsonl has no rounds yet")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not all(key in row for key in ROW_KEYS):
            raise UsageError(f"{folder}: metrics.jsonl row {number} is not a round's metrics (needs {', '.join(ROW_KEYS)})")
        for key, (expected, valid) in ROW_KEYS.items():
            if not valid(row[key]):
                raise UsageError(f"{folder}: metrics.jsonl row {number} is not a round's metrics "
                                 f"({key}: expected {expected}, got {row[key]!r})")  # fmt: skip
    return RunRecord(config, rows)
