"""Every benchmark in bench/ starts and writes its JSON (tiny sizes, ``--quick``; no timings checked)."""

import json
from pathlib import Path

import pytest

from fedbat_mpi.testing.launch import launch

BENCH = Path(__file__).resolve().parent.parent / "bench"

# (script, extra options, a key every result row has). At most 2 ranks, so the suite stays serial.
SMOKE = [
    ("codec", ["--models", "cnn4-mnist"], "pack_unpack_vs_copy_bool"),
    ("aggregate", [], "decode_plus_aggregate_s"),
    ("gather", ["--ranks", "2"], "fedbat_vs_raw"),
    ("scaling", ["--ranks", "1"], "updates_per_s"),  # one 1-rank run: the cheapest real run
    ("phases", ["--cases", "cnn4-svhn", "--rounds", "2"], "machinery_share"),
    ("profile_round", ["--ranks", "2"], "share_of_round_samples"),  # py-spy, from the test extra
    ("grouping", [], "round_s"),  # the GPU targets' script, on tiny sizes
    ("cpu_roof", [], "roof_share"),  # one 2-rank run on the embedded data
    ("client_state", [], "checkpoint_s"),
    ("study_cost", [], "round_s"),  # the GPU script for issue 10's projection, on tiny sizes
    ("scale", [], "peak_rss_mib"),  # 5 real 2-rank runs of a few hundred clients, one resumed
    ("step_graphs", [], "ms_per_step"),  # the GPU script for issue 8's launch overhead, eager on the CPU
    ("agreement", ["--presets", "fmnist-iid", "--jobs", "2"], "difference_points"),  # issue 8's GPU check, tiny, runs at once
    ("host_time", [], "host_ms_per_step"),  # the host's cost of a grouped step, in a subprocess
    ("cpu_step", ["--algorithms", "fedavg"], "roof_share"),  # a CPU step's operators against sgemm
    ("graph_reuse", [], "replayed_share"),  # the CUDA-graph path's reuse, on the CPU
    ("binarizer", ["--baseline", str(BENCH.parent)], "baseline_over_this"),  # against itself: the baseline path
]


@pytest.mark.parametrize(("name", "options", "key"), SMOKE, ids=[s[0] for s in SMOKE])
def test_benchmark_starts_and_writes_json(name, options, key, tmp_path):
    out = tmp_path / f"{name}.json"
    script = [str(BENCH / f"{name}.py")]
    done = launch(None, ["--quick", "--json", str(out), *options], timeout=300, script=script)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == name
    assert record["machine"]["cpu"] and record["machine"]["date_utc"]
    assert record["results"] and all(key in row for row in record["results"])
    assert f"wrote {out}" in done.stdout


def _write_run(folder: Path, shas: list[str], time_s: float = 1.0) -> Path:
    folder.mkdir()
    rows = [{"round": r, "test_acc": 0.5, "model_sha256": sha, "time_s": time_s, "phase_s": {"train": time_s}}
            for r, sha in enumerate(shas, start=1)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.mark.parametrize(
    ("other", "status", "needle"),
    [
        (["a", "b"], 0, "identical"),
        (["a", "c"], 1, "round 2: model_sha256 differ"),
        (["a"], 1, "1 rounds instead of 2"),
    ],
)
def test_same_runs_fails_when_runs_differ_and_ignores_timings(tmp_path, other, status, needle):
    first = _write_run(tmp_path / "first", ["a", "b"])
    second = _write_run(tmp_path / "second", other, time_s=9.0)
    done = launch(None, [str(first), str(second)], timeout=60, script=[str(BENCH / "same_runs.py")])
    assert done.returncode == status and needle in done.stdout, done.stdout + done.stderr
