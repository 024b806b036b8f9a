"""Comparing finished runs: the Markdown summary table and the PNG accuracy curves."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedbat_mpi import plot, summary
from fedbat_mpi.config import Config
from fedbat_mpi.records import read_run
from fedbat_mpi.server.report import Report


def _fake_run(folder: Path, algorithm: str, partition: str, accuracies: list[float], uplink: int) -> Path:
    """A run folder as fedbat_mpi.run writes it (config.yaml + metrics.jsonl)."""
    folder.mkdir(parents=True)
    config = Config(algorithm=algorithm, partition=partition, dataset="fmnist").as_dict()
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"round": r + 1, "clients": list(range(10)), "test_acc": acc, "uplink_bytes": uplink}
            for r, acc in enumerate(accuracies)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_summary_reports_best_final_and_cost_to_target(tmp_path):
    fedbat = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5, 0.82, 0.81], 500_000)
    fedavg = _fake_run(tmp_path / "b", "fedavg", "iid", [0.6, 0.7, 0.79], 15_000_000)
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.summary", str(fedbat), str(fedavg), "--target", "0.8"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2] == "| fmnist iid | fedavg | 3 | 79.00 % (3) | 79.00 % | — | — | 1,500.0 kB |"
    assert lines[3] == "| fmnist iid | fedbat | 3 | 82.00 % (2) | 81.00 % | 2 | 1.0 MB | 50.0 kB |"


def test_a_round_at_exactly_the_target_reaches_it(tmp_path, capsys):
    run = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5, 0.8, 0.85], 500_000)
    assert summary.main([str(run), "--target", "0.8"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == (
        "| fmnist iid | fedbat | 3 | 85.00 % (3) | 85.00 % | 2 | 1.0 MB | 50.0 kB |"
    )


def test_the_best_round_is_the_earliest_of_those_with_the_best_accuracy(tmp_path, capsys):
    run = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5, 0.82, 0.7, 0.82], 500_000)
    assert summary.main([str(run), "--target", "0.9"]) == 0
    assert "| 82.00 % (2) |" in capsys.readouterr().out


def test_a_plot_shows_accuracy_in_percent_by_round_and_by_cumulative_uplink(tmp_path, monkeypatch):
    runs = [read_run(str(_fake_run(tmp_path / name, name, "iid", accuracies, uplink)))
            for name, accuracies, uplink in [("fedbat", [0.5, 0.8], 500_000), ("fedavg", [0.6, 0.7], 15_000_000)]]  # fmt: skip
    figures: list[Figure] = []
    monkeypatch.setattr(plot.plt, "close", figures.append)  # keep the figure to read its lines
    plot.plot_setting("fmnist-iid", runs, tmp_path / "plot.png")
    monkeypatch.undo()
    by_round, by_bytes = figures[0].axes
    plot.plt.close(figures[0])
    rounds, accuracies = _points(by_round, "fedbat")
    assert rounds == [1, 2] and accuracies == pytest.approx([50, 80])
    uplink, accuracies = _points(by_bytes, "fedavg")
    assert uplink == [15_000_000, 30_000_000]  # a round's uplink, summed
    assert accuracies == pytest.approx([60, 70]) and by_bytes.get_xscale() == "log"


def _points(axes: Axes, label: str) -> tuple[list[float], list[float]]:
    """The x and y values of the line labelled ``label`` in ``axes``."""
    [line] = [line for line in axes.lines if line.get_label() == label]
    return np.asarray(line.get_xdata()).tolist(), np.asarray(line.get_ydata()).tolist()


def test_a_runs_summary_sums_the_bytes_and_names_the_earliest_best_round(tmp_path):
    rows = [{"round": r, "clients": [0, 1], "test_acc": acc, "uplink_bytes": 100, "downlink_bytes": 200,
             "model_sha256": "ab" * 32} for r, acc in enumerate([0.5, 0.7, 0.7], start=1)]  # fmt: skip
    report = Report(Config(out=f"{tmp_path}/"), 1000, rows, stream=io.StringIO())
    text = report.summary(wall_s=1.0)
    report.close()
    assert "final test accuracy 70.00%, best 70.00% (round 2)" in text
    assert "uplink 300 B (50 B per client per round), downlink 600 B" in text
    assert "float32 FedAvg would have sent 6.0 kB up: 20.0x more" in text
    assert text.endswith(f"outputs in {tmp_path}/")  # one slash, though --out ended with one


def test_plots_are_written_per_setting_and_are_png(tmp_path):
    runs = [
        _fake_run(tmp_path / "a", "fedbat", "iid", [0.5, 0.8], 500_000),
        _fake_run(tmp_path / "b", "fedavg", "iid", [0.6, 0.7], 15_000_000),
        _fake_run(tmp_path / "c", "fedbat", "dir:0.3", [0.4, 0.6], 500_000),
    ]
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.plot", *map(str, runs), "--out", str(tmp_path / "png")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "png").iterdir())
    assert [f.name for f in files] == ["accuracy-fmnist-dir0.3.png", "accuracy-fmnist-iid.png"]
    for file in files:
        assert file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and file.stat().st_size > 10_000


def test_a_folder_without_a_run_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.summary", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_a_folder_with_foreign_files_is_one_line_and_exit_2(tmp_path):
    not_a_config = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5], 500_000)
    (not_a_config / "config.yaml").write_text("- 1\n")
    short_rows = _fake_run(tmp_path / "b", "fedbat", "iid", [0.5], 500_000)
    (short_rows / "metrics.jsonl").write_text('{"round": 1}\n')
    for folder, expected in ((not_a_config, "config.yaml is not a run's configuration"),
                             (short_rows, "metrics.jsonl row 1 is not a round's metrics")):  # fmt: skip
        for command in ("summary", "plot"):
            done = subprocess.run([sys.executable, "-m", f"fedbat_mpi.{command}", str(folder)], capture_output=True,
                                  text=True)  # fmt: skip
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr


def test_a_target_that_is_no_accuracy_is_one_line_and_exit_2(tmp_path):
    run = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5], 500_000)
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.summary", str(run), "--target", "80"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == (
        "fedbat_mpi.summary: error: --target: expected a test accuracy in (0, 1], got 80.0"
    )


@pytest.mark.parametrize("out,expected", [
    ("", "--out: expected a folder name, got ''"),
    ("TMP/a-file", "--out: cannot make the folder TMP/a-file: File exists"),
    ("TMP/a-file/png", "--out: cannot make the folder TMP/a-file/png: Not a directory"),
    ("TMP/png", "--out: cannot write TMP/png/accuracy-fmnist-iid.png: Is a directory"),
], ids=["empty", "a-file", "under-a-file", "a-folder-in-the-way"])  # fmt: skip
def test_a_plot_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, out, expected):
    run = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5], 500_000)
    (tmp_path / "a-file").write_text("kept\n")
    (tmp_path / "png" / "accuracy-fmnist-iid.png").mkdir(parents=True)  # where the figure would go
    out, expected = out.replace("TMP", str(tmp_path)), expected.replace("TMP", str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "fedbat_mpi.plot", str(run), "--out", out], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr == f"fedbat_mpi.plot: error: {expected}\n", done.stderr
    assert (tmp_path / "a-file").read_text() == "kept\n" and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("file,change,expected", [
    ("metrics.jsonl", {"test_acc": "x"}, "metrics.jsonl row 2 is not a round's metrics (test_acc: expected a number, got 'x')"),
    ("metrics.jsonl", {"clients": 5}, "metrics.jsonl row 2 is not a round's metrics (clients: expected a non-empty list, got 5)"),
    ("metrics.jsonl", {"clients": []}, "metrics.jsonl row 2 is not a round's metrics (clients: expected a non-empty list, got [])"),
    ("metrics.jsonl", {"uplink_bytes": None}, "metrics.jsonl row 2 is not a round's metrics (uplink_bytes: expected an integer, got None)"),
    ("metrics.jsonl", {"round": True}, "metrics.jsonl row 2 is not a round's metrics (round: expected an integer, got True)"),
    ("config.yaml", {"algorithm": 5}, "config.yaml is not a run's configuration (algorithm: expected text, got 5)"),
], ids=["accuracy-text", "clients-number", "clients-empty", "uplink-null", "round-boolean", "algorithm-number"])  # fmt: skip
@pytest.mark.parametrize("command", ["summary", "plot"])
def test_a_value_of_the_wrong_type_is_one_line_and_exit_2(tmp_path, capsys, command, file, change, expected):
    run = _fake_run(tmp_path / "a", "fedbat", "iid", [0.5, 0.6], 500_000)
    if file == "config.yaml":
        config = yaml.safe_load((run / file).read_text())
        (run / file).write_text(yaml.safe_dump({**config, **change}))
    else:
        first, second = (json.loads(line) for line in (run / file).read_text().splitlines())
        (run / file).write_text(json.dumps(first) + "\n" + json.dumps({**second, **change}) + "\n")
    main = {"summary": summary.main, "plot": plot.main}[command]
    assert main([str(run), *(["--out", str(tmp_path / "png")] if command == "plot" else [])]) == 2
    assert capsys.readouterr().err == f"fedbat_mpi.{command}: error: {run}: {expected}\n"
    assert not (tmp_path / "png").exists()
