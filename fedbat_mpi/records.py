"""Reading finished runs back: a run folder's configuration and ``metrics.jsonl`` rows."""

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedbat_mpi.errors import UsageError


@dataclass
class RunRecord:
    """One run's configuration and metrics, as written to its ``--out`` folder."""

    path: Path
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
    """The run in ``folder``; a UsageError if it has no configuration or no finished round."""
    path = Path(folder)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise UsageError(f"{folder}: not a run folder with config.yaml and metrics.jsonl ({error})") from None
    if not rows:
        raise UsageError(f"{folder}: metrics.jsonl has no rounds yet")
    return RunRecord(path, config, rows)
