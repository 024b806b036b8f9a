"""Rank 0's outputs: ``metrics.jsonl``, the resolved configuration, progress lines and the summary."""

import dataclasses
import json
import os
import sys
from typing import TextIO

import yaml

from fedbat_mpi.config import Config
from fedbat_mpi.errors import UsageError
from fedbat_mpi.rounds.engine import RoundResult


def _size(num_bytes: float) -> str:
    """Bytes in decimal units: ``512 B``, ``56.5 kB``, ``1.6 MB``, ``2.3 GB``."""
    if num_bytes < 1000:
        return f"{int(num_bytes)} B"
    for unit in ("kB", "MB"):
        num_bytes /= 1000
        if num_bytes < 1000:
            return f"{num_bytes:.1f} {unit}"
    return f"{num_bytes / 1000:.1f} GB"


def _open_to_write(path: str) -> TextIO:
    """``path`` opened for writing; a UsageError naming ``--out`` if it cannot be (a folder in its way)."""
    try:
        return open(path, "w")
    except OSError as error:
        raise UsageError(f"--out: cannot write {path} ({error.strerror})") from None


class Report:
    """Writes one metrics row per round and prints progress; keeps totals for the summary."""

    def __init__(self, config: Config, float32_payload_bytes: int, history: list[dict], stream: TextIO = sys.stdout):
        """Start ``metrics.jsonl`` with ``history``, the rows of the rounds a checkpoint holds."""
        self.config = config
        self.float32_payload_bytes = float32_payload_bytes
        self.stream = stream
        self.rows: list[dict] = list(history)
        os.makedirs(config.out_dir, exist_ok=True)
        with _open_to_write(os.path.join(config.out_dir, "config.yaml")) as handle:
            yaml.safe_dump(config.as_dict(), handle, sort_keys=False)
        self.metrics = _open_to_write(os.path.join(config.out_dir, "metrics.jsonl"))
        self.metrics.writelines(json.dumps(row) + "\n" for row in self.rows)
        self.metrics.flush()

    def add(self, result: RoundResult) -> None:
        row = dataclasses.asdict(result)
        self.rows.append(row)
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        print(
            f"round {result.round:4d}/{self.config.rounds}  test_acc {100 * result.test_acc:6.2f}%  "
            f"test_loss {result.test_loss:.4f}  train_loss {result.train_loss:.4f}  "
            f"up {_size(result.uplink_bytes)}  {result.time_s:.2f} s",
            file=self.stream,
            flush=True,
        )

    def saved(self, path: str, round_index: int, seconds: float) -> None:
        """A progress line for the checkpoint written after ``round_index``."""
        print(f"checkpoint after round {round_index}: {path} ({_size(os.path.getsize(path))}, {seconds:.2f} s)",
              file=self.stream, flush=True)  # fmt: skip

    def summary(self, wall_s: float) -> str:
        rows = self.rows
        uploads = sum(len(row["clients"]) for row in rows)
        up = sum(row["uplink_bytes"] for row in rows)
        down = sum(row["downlink_bytes"] for row in rows)
        float32_up = uploads * self.float32_payload_bytes
        best = max(rows, key=lambda row: row["test_acc"])
        return "\n".join([
            f"{self.config.algorithm} on {self.config.dataset}: {len(rows)} round{'s' if len(rows) != 1 else ''}, this run {wall_s:.1f} s",
            f"  final test accuracy {100 * rows[-1]['test_acc']:.2f}%, best {100 * best['test_acc']:.2f}% "
            f"(round {best['round']})",
            f"  uplink {_size(up)} ({_size(up / uploads)} per client per round), downlink {_size(down)}",
            f"  float32 FedAvg would have sent {_size(float32_up)} up: {float32_up / up:.1f}x more",
            f"  model_sha256 {rows[-1]['model_sha256']}",
            f"  outputs in {os.path.join(self.config.out_dir, '')}",  # one slash, also after / or x/
        ])  # fmt: skip

    def close(self) -> None:
        self.metrics.close()
