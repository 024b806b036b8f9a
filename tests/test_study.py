"""``python -m fedbat_mpi.study`` through real runs: a grid of 2 algorithms x 2 seeds, two runs at once,
each one rank under mpirun; stopped by SIGTERM to the driver, resumed by running it again, then skipped.
Bad grid files fail at once with one line."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
import yaml

from fedbat_mpi import study, study_driver
from fedbat_mpi.config import PRESETS
from fedbat_mpi.errors import UsageError
from fedbat_mpi.grid import load_study
from fedbat_mpi.rounds.out_lock import hold_out_dir
from fedbat_mpi.rounds.signals import DRIVER_STOP_SIGNALS, StopCount
from fedbat_mpi.server import checkpoint
from fedbat_mpi.testing.launch import environment, launch, metrics, without_timings

REPOSITORY = Path(__file__).resolve().parent.parent  # the checkout: its jobs/ and docs/

ROUNDS = 3
# A tiny run of the embedded data: 2 clients a round of 200 images each, one epoch.
BASE = {"num-clients": 40, "clients-per-round": 2, "local-epochs": 1, "batch-size": 64,
        "eval-batch-size": 1000, "rounds": ROUNDS, "checkpoint-every": 1}  # fmt: skip
NAMES = ["fedavg-seed0", "fedavg-seed1", "fedbat-seed0", "fedbat-seed1"]


def write_grid(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def driver(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedbat_mpi.study", *args]


def run_study(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(driver(*args), capture_output=True, text=True, timeout=timeout, env=environment())


def start_study(*args: str, launcher: list[str] | None = None, **streams) -> subprocess.Popen:
    """The driver started in the background, its output piped unless ``streams`` say where."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **streams}
    return subprocess.Popen([*(launcher or []), *driver(*args)], stdin=subprocess.DEVNULL, text=True,
                            env=environment(), **streams)  # fmt: skip


def wait_for_a_round(process: subprocess.Popen, run_folders: list[Path]) -> None:
    """Until one of the runs has finished a round; fails if the driver ends or stalls first."""
    deadline = time.monotonic() + 180
    while not any((folder / "metrics.jsonl").exists() for folder in run_folders):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the study ended or stalled before a round: {process.communicate()}")
        time.sleep(0.1)


def standings(grid: Path, capsys) -> dict[str, str]:
    """``--list``: each run's folder name and where it stands."""
    assert study.main([str(grid), "--list"]) == 0
    listed = capsys.readouterr().out
    return dict(line.split(maxsplit=1)[1].split("  ", 1) for line in listed.splitlines())


def test_a_stopped_study_resumes_to_the_uninterrupted_models_and_then_skips_its_finished_runs(tmp_path, capsys):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), runs_at_once=2, base=BASE,
                      grid={"algorithm": ["fedavg", "fedbat"], "seed": [0, 1]})  # fmt: skip
    assert study.main([str(grid), "--count"]) == 0 and capsys.readouterr().out == "4\n"

    process = start_study(str(grid))
    wait_for_a_round(process, [folder / name for name in NAMES[:2]])
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 75, stdout + stderr
    assert "run the same command again to go on" in stdout, stdout
    stood = standings(grid, capsys)
    assert list(stood) == NAMES, stood
    stopped = [name for name, standing in stood.items() if standing.startswith("stopped at round")]
    assert stopped and set(stopped) <= set(NAMES[:2]), stood  # the two runs started; the others wait
    assert stood[NAMES[2]] == stood[NAMES[3]] == "not started", stood
    manifest = json.loads((folder / "study.json").read_text())
    assert [run["name"] for run in manifest["runs"]] == NAMES

    resumed = run_study(str(grid))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for name in stopped:
        assert f"{name}: resuming after round" in resumed.stdout, resumed.stdout
    assert set(standings(grid, capsys).values()) == {f"done at round {ROUNDS}"}

    # The resumed run ends with the model and metrics of the same run never stopped.
    name = stopped[0]
    options = next(run["options"] for run in manifest["runs"] if run["name"] == name)
    config = write_grid(tmp_path / "uninterrupted.yaml", **options)
    done = launch(None, ["--config", str(config), "--out", str(tmp_path / "uninterrupted")])
    assert done.returncode == 0, done.stderr
    assert without_timings(metrics(folder / name)) == without_timings(metrics(tmp_path / "uninterrupted"))

    logs = {name: (folder / name / "run.log").read_text() for name in NAMES}
    again = run_study(str(grid), timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ": started" not in again.stdout and "4 done, 0 running, 0 left" in again.stdout, again.stdout
    assert {name: (folder / name / "run.log").read_text() for name in NAMES} == logs


def test_the_driver_catches_stop_signals_before_it_loads_torch():
    loaded = subprocess.run([sys.executable, "-c", "import sys, fedbat_mpi.study; print(sorted(name for name in "
                             "sys.modules if name.split('.')[0] in ('torch', 'numpy', 'h5py', 'yaml')))"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert loaded.stdout == "[]\n", loaded.stdout + loaded.stderr


def test_the_driver_called_in_process_gives_the_callers_signal_handlers_back(tmp_path, capsys):
    before = {number: signal.getsignal(number) for number in DRIVER_STOP_SIGNALS}
    assert study.main([str(tmp_path / "missing.yaml")]) == 2
    assert {number: signal.getsignal(number) for number in DRIVER_STOP_SIGNALS} == before


def catches(pid: int, number: int) -> bool:
    """Whether process ``pid`` has a handler for signal ``number`` (its ``SigCgt`` mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (number - 1) & 1)


def test_a_stop_signal_while_the_driver_loads_stops_the_study_before_any_run_starts(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base=BASE, grid={"seed": [0]})
    process = start_study(str(grid))
    deadline = time.monotonic() + 60
    while not catches(process.pid, signal.SIGTERM):  # its handler, the first thing the driver installs
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stdout + stderr
    assert "stopped; run the same command again to go on" in stdout, stdout
    assert not (tmp_path / "study" / "seed0" / "run.log").exists()


def test_a_closed_terminal_stops_the_study_and_its_running_run_checkpoints(tmp_path, capsys):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), base={**BASE, "rounds": 100}, grid={"seed": [0]})
    terminal, its_device = os.openpty()
    process = start_study(str(grid), stdout=its_device, stderr=its_device)
    os.close(its_device)
    wait_for_a_round(process, [folder / "seed0"])
    os.close(terminal)  # the terminal is gone: the driver's progress lines cannot be written any more
    process.send_signal(signal.SIGHUP)  # what the kernel sends when a session's terminal closes
    assert process.wait(timeout=180) == 75
    assert re.fullmatch(r"stopped at round \d+ of 100", standings(grid, capsys)["seed0"])


def test_under_nohup_a_hangup_stops_nothing(tmp_path, capsys):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), base=BASE, grid={"seed": [0]})
    process = start_study(str(grid), launcher=["nohup"])
    wait_for_a_round(process, [folder / "seed0"])
    process.send_signal(signal.SIGHUP)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stdout + stderr
    assert standings(grid, capsys) == {"seed0": f"done at round {ROUNDS}"}


def test_a_finished_checkpoint_of_other_options_is_not_counted_as_done(tmp_path, capsys):
    """A copied checkpoint, or a grid edited after its runs finished: the run's checkpoint is checked as
    ``--resume`` checks it, so the driver names it as refused (exit 2) instead of skipping it as done,
    and starts nothing there (its options.yaml stays the checkpoint run's)."""
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base=BASE, grid={"seed": [0, 2]})
    plan = load_study(str(grid))
    for run, seed in zip(plan.runs, [0, 0]):  # seed2's folder holds seed0's finished checkpoint
        run.folder.mkdir(parents=True)
        saved = {**run.config.as_dict(), "seed": seed, "model": "cnn4-mnist"}
        checkpoint.save(str(run.checkpoint), checkpoint.RunState(ROUNDS, saved, {}, [], 1))
    stood = standings(grid, capsys)
    assert stood["seed0"] == f"done at round {ROUNDS}"
    assert stood["seed2"].startswith("checkpoint refused (--seed: the checkpoint was made with 0, got 2"), stood
    copied = plan.runs[1].checkpoint.read_bytes()
    done = run_study(str(grid))
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert "] seed2: not started: checkpoint refused (--seed: the checkpoint was made with 0, got 2" in line, line
    assert "2 runs | 1 done, 0 running, 1 left" in done.stdout and "seed0" not in done.stdout, done.stdout
    assert plan.runs[1].checkpoint.read_bytes() == copied and not (plan.runs[1].folder / "options.yaml").exists()
    edited = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base={**BASE, "rounds": ROUNDS - 1},
                        grid={"seed": [0, 2]})  # fmt: skip
    assert "already finished round 3, got 2" in standings(edited, capsys)["seed0"]


def test_a_run_going_on_in_its_folder_is_not_started_again_and_nothing_is_written_there(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base=BASE, grid={"seed": [0]})
    folder = load_study(str(grid)).runs[0].folder
    held = hold_out_dir(str(folder))  # as a run started by another driver or an array task holds it
    try:
        done = run_study(str(grid), timeout=60)
    finally:
        assert held is not None
        held.close()
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert "seed0: not started: --out: another run is using" in line, line
    assert sorted(path.name for path in folder.iterdir()) == ["run.lock"]


def test_a_failed_run_is_reported_on_one_line_and_the_others_finish(tmp_path, capsys):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), runs_at_once=2,
                      base={**BASE, "rounds": 1, "data-dir": str(tmp_path)},
                      grid={"dataset": ["embedded", "fmnist"]})  # fmt: skip
    done = run_study(str(grid))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"fmnist: failed with exit status 2; {folder / 'fmnist' / 'run.log'}: fedbat_mpi: error:" in done.stderr
    assert "not found under --data-dir" in done.stderr
    assert standings(grid, capsys) == {"embedded": "done at round 1", "fmnist": "not started"}


def test_a_run_killed_by_a_signal_ends_the_study_with_status_1(tmp_path):
    killer = tmp_path / "killer.sh"  # the launcher: dies by SIGKILL instead of starting the run
    killer.write_text("#!/bin/sh\nkill -KILL $$\n")
    killer.chmod(0o755)
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), launcher=str(killer),
                      base={**BASE, "rounds": 1}, grid={"seed": [0]})  # fmt: skip
    done = run_study(str(grid))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "seed0: killed by signal 9;" in done.stderr, done.stderr


def test_a_launcher_that_starts_nothing_is_a_failed_run_and_the_others_go_on(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), launcher="true", base=BASE,
                      grid={"seed": [0, 1]})  # fmt: skip
    assert study.main([str(grid)]) == 1
    failures = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1].split(";")[0] for line in failures] == [
        f"seed{seed}: the launcher exited with status 0, but the run did not finish (not started)" for seed in (0, 1)
    ], failures


@pytest.mark.parametrize("grid_file,expected", [
    ({"base": {"roundz": 3}}, "base: unknown option 'roundz'"),
    ({"base": {"out": "x"}}, "base: out: each run's folder is set by the study"),
    ({"grid": {"seed": []}}, "grid: seed: expected a non-empty list of values, got []"),
    ({"grid": {"seed": ["zero"]}}, "grid: --seed: expected int, got 'zero'"),
    ({"grid": {"lr": [0.1, -1]}}, "run lr-1.0: --lr: expected a positive number up to 3.40e+38, got -1.0"),
    ({"grid": {"preset": ["fmnist-iid", "fmnist-dirichlet"]}}, "preset: expected one of embedded, fmnist-iid"),
    ({"base": {"preset": ["fmnist-iid", "svhn-iid"]}}, "base: preset: expected one of embedded, fmnist-iid"),
    ({"grid": {"preset": [["fmnist-iid"]]}}, "grid: preset: expected one of embedded, fmnist-iid"),
    ({"grid": {"model": ["cnn4-mnist", "cnn4"]}},
     "run cnn4: --model: cnn4 takes 3x32x32 images, but --dataset embedded holds 1x28x28"),
    ({"runs-at-onse": 2}, "unknown key 'runs-at-onse'"),
    ({"ranks_per_run": 0}, "ranks_per_run: expected a positive integer, got 0"),
    ({"base": {"lr": None}}, "base: --lr: expected float, got null"),
    ({"grid": {"lr": [None]}}, "grid: --lr: expected float, got null"),
    ({"grid": []}, "grid: expected a mapping of option names to lists of values, got []"),
    ({"grid": 0}, "grid: expected a mapping of option names to lists of values, got 0"),
    ({"base": []}, "base: expected a mapping of option names to values, got []"),
    ({"base": False}, "base: expected a mapping of option names to values, got False"),
    ({"grid": {"local-epochs": [1, 2, 3], "local_epochs": [5]}},
     "grid: local_epochs given twice (as local-epochs and local_epochs)"),
    ({"base": {"local-epochs": 1, "local_epochs": 3}}, "base: local_epochs given twice (as local-epochs and local_epochs)"),
    ({"runs-at-once": 2, "runs_at_once": 3}, "runs_at_once given twice (as runs-at-once and runs_at_once)"),
    ({"grid": {"seed": [0], "data_dir": ["/" + "x" * 279]}},
     "grid: run 0: its folder name would be 286 bytes, more than a file name may be (255); shorten its data_dir value"),
], ids=["unknown-option", "out", "empty-list", "wrong-type", "bad-value", "unknown-preset", "preset-a-list",
        "preset-value-a-list", "model-for-other-images",
        "unknown-key", "ranks", "null-in-base", "null-in-grid", "grid-a-list", "grid-a-number", "base-a-list",
        "base-false", "grid-option-twice", "base-option-twice", "key-twice", "folder-name-too-long"])  # fmt: skip
def test_a_bad_grid_file_is_one_line_naming_the_key_and_nothing_is_written(tmp_path, capsys, grid_file, expected):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), **grid_file)
    assert study.main([str(grid)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith(f"fedbat_mpi.study: error: {grid}: ") and expected in captured.err, captured.err
    assert not folder.exists()


@pytest.mark.parametrize("text,args,expected", [
    (b"grid: {seed: [0]}  # \xff\n", [], "grid file: TMP/grid.yaml is not valid YAML"),
    (b"out: 5\n", ["--list"], "TMP/grid.yaml: out: expected a folder name, got 5"),
    (b"out: [a]\n", ["--list"], "TMP/grid.yaml: out: expected a folder name, got ['a']"),
    (b"", ["--out", ""], "--out: expected a folder name, got ''"),
    (b"", ["--out", "TMP/a-file", "--launcher", "true"],
     "out: cannot make the study folder TMP/a-file: File exists"),
    (b"launcher: 'false'\n", ["--out", "TMP/study", "--launcher", ""], "--launcher: expected a command"),
    (b"grid:\n  seed: [0]\n  seed: [1]\n", ["--out", "TMP/study"], "grid file: TMP/grid.yaml: seed given twice (lines 2 and 3)"),
], ids=["not-utf-8", "out-number", "out-list", "out-empty", "out-a-file", "launcher-empty", "key-twice"])  # fmt: skip
def test_a_bad_study_folder_grid_file_or_launcher_is_one_line(tmp_path, capsys, text, args, expected):
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(text)
    (tmp_path / "a-file").write_text("")
    assert study.main([str(grid), *(arg.replace("TMP", str(tmp_path)) for arg in args)]) == 2
    captured, expected = capsys.readouterr(), expected.replace("TMP", str(tmp_path))
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith(f"fedbat_mpi.study: error: {expected}"), captured.err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "grid.yaml"]


def test_run_folders_stay_in_the_study_folder_and_ordinary_names_are_kept(tmp_path):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), grid={"data_dir": ["..", ".", "a/b", "/c"]})
    runs = load_study(str(grid)).runs
    assert [run.name for run in runs] == ["data_dir..", "data_dir.", "a_b", "_c"]
    assert all(run.folder.parent == folder for run in runs)
    grid = write_grid(tmp_path / "grid.yaml", grid={"partition": ["iid", "dir:0.3"], "seed": [0, 1]})
    names = [run.name for run in load_study(str(grid)).runs]
    assert names == ["iid-seed0", "iid-seed1", "dir0.3-seed0", "dir0.3-seed1"]


def test_an_empty_grid_and_base_are_one_run_of_the_default_options(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base:\ngrid:\n")
    (run,) = load_study(str(grid)).runs
    assert (run.name, run.options) == ("run", {})


def test_an_on_off_option_may_be_written_unquoted(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {cuda_graphs: on}\ngrid: {cuda_graphs: [off, on]}\n")
    runs = load_study(str(grid)).runs
    assert [(run.name, run.options["cuda_graphs"]) for run in runs] == [("off", "off"), ("on", "on")]


def test_a_runs_options_are_its_presets_then_base_then_its_grid_values(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", base={"preset": "fmnist-iid", "rounds": 3, "dataset": "embedded"},
                      grid={"partition": ["dir:0.3"]})  # fmt: skip
    (run,) = load_study(str(grid)).runs
    assert run.options == {**PRESETS["fmnist-iid"], "rounds": 3, "dataset": "embedded", "partition": "dir:0.3"}


def test_ranks_per_run_may_equal_the_clients_per_round_but_not_exceed_them(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", ranks_per_run=2, base=BASE, grid={"seed": [0]})
    assert load_study(str(grid)).ranks_per_run == 2
    grid = write_grid(tmp_path / "grid.yaml", ranks_per_run=3, base=BASE, grid={"seed": [0]})
    expected = r"ranks_per_run: expected at most the run's clients per round \(2\), got 3$"
    with pytest.raises(UsageError, match=expected):
        load_study(str(grid))


def test_a_run_asked_to_stop_that_dies_by_a_signal_counts_as_stopped_not_failed(tmp_path):
    class KilledByTheStopSignal:
        def poll(self):
            return -signal.SIGUSR1

    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base=BASE, grid={"seed": [0]})
    plan = load_study(str(grid))
    plan.runs[0].folder.mkdir(parents=True)
    (plan.runs[0].folder / "run.log").write_text("stopped\n")  # what a failure's report would quote
    driver = study_driver.Driver(plan, plan.runs, 1, ["mpirun"], [], StopCount())
    driver.running = {"seed0": (plan.runs[0], cast(subprocess.Popen, KilledByTheStopSignal()))}  # only polled
    driver.asked_to_stop = {"seed0": 1}
    driver._reap()
    assert (driver.stopped, driver.failed, driver.running) == (1, [], {})


def test_runs_at_once_are_spread_over_the_gpus_the_fewest_runs_use(monkeypatch):
    assert study_driver.least_used(["0", "1"], []) == "0"
    assert study_driver.least_used(["0", "1"], ["0"]) == "1"
    assert study_driver.least_used(["0", "1", "2"], ["0", "1", "2", "1", "0"]) == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert study_driver.gpus_to_spread(None) == ["2", "3"]
    assert study_driver.gpus_to_spread("5") == ["5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU: every run shares it, nothing to set
    assert study_driver.gpus_to_spread(None) == []
    with pytest.raises(UsageError, match="--gpus"):
        study_driver.gpus_to_spread(",")


@pytest.mark.parametrize("task", [[], ["--task", "0"]])
def test_a_task_run_sees_all_its_jobs_gpus_where_runs_at_once_get_one_each(tmp_path, task):
    """As a Slurm array task, the one run's ranks share the job's GPUs (one a rank): the driver leaves
    CUDA_VISIBLE_DEVICES alone. Run here on the CPU (``--device auto``); the driver's log line tells."""
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base={**BASE, "rounds": 1},
                      grid={"seed": [0]})  # fmt: skip
    done = subprocess.run(driver(str(grid), *task), capture_output=True, text=True, timeout=120,
                          env=environment(CUDA_VISIBLE_DEVICES="0,1"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    started = (tmp_path / "study" / "seed0" / "run.log").read_text().splitlines()[0]
    assert ("CUDA_VISIBLE_DEVICES=0 " in started) == (not task), started


SHIPPED_GRIDS = sorted([*REPOSITORY.glob("jobs/grids/*.yaml"), *REPOSITORY.glob("docs/results/*.yaml")])


@pytest.mark.parametrize("grid", SHIPPED_GRIDS, ids=[path.name for path in SHIPPED_GRIDS])
def test_every_grid_file_the_repository_ships_is_read_without_error(grid):
    """The study commands that jobs/ and docs/RESULTS.md quote: a typo in one fails here, not hours into a study."""
    plan = load_study(str(grid))
    assert plan.runs and len({run.folder for run in plan.runs}) == len(plan.runs)


def test_a_reader_that_stops_early_ends_the_listing_quietly():
    """``study --list | head``: the closed pipe ends the command with status 0 and nothing on stderr."""
    grid = REPOSITORY / "jobs" / "grids" / "fmnist-paper.yaml"
    command = subprocess.Popen(driver(str(grid), "--list"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment())  # fmt: skip
    assert command.stdout is not None and command.stderr is not None
    command.stdout.close()  # before the command writes: its first write meets a closed pipe
    stderr = command.stderr.read()
    assert command.wait(timeout=60) == 0 and stderr == b"", stderr.decode()


def test_a_run_whose_options_cannot_be_written_fails_alone_and_the_others_finish(tmp_path, capsys):
    folder = tmp_path / "study"
    grid = write_grid(tmp_path / "grid.yaml", out=str(folder), base={**BASE, "rounds": 1}, grid={"seed": [0, 1]})
    (folder / "seed0" / "options.yaml").mkdir(parents=True)  # in the way of the file the driver writes
    done = run_study(str(grid))
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.endswith(f"seed0: not started: [Errno 21] Is a directory: '{folder / 'seed0' / 'options.yaml'}' "
                         "| 0 done, 0 running, 1 left, 1 failed"), line  # fmt: skip
    assert standings(grid, capsys) == {"seed0": "not started", "seed1": "done at round 1"}


def test_a_driver_that_fails_stops_its_running_runs_and_waits_for_them(tmp_path, monkeypatch):
    run = tmp_path / "run.sh"  # the launcher stands in for a run: it stops on SIGUSR1 as a run does
    run.write_text("#!/bin/sh\ntrap 'echo stopped > \"$0.stopped\"; exit 3' USR1\ntouch \"$0.ready\"\n"
                   "while :; do sleep 0.05; done\n")
    run.chmod(0o755)
    grid = write_grid(tmp_path / "grid.yaml", out=str(tmp_path / "study"), base=BASE, grid={"seed": [0]})
    plan = load_study(str(grid))
    driver = study_driver.Driver(plan, plan.runs, 1, [str(run)], [], StopCount())

    def fail_once_started() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run.sh.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the shell has set its trap
        raise OSError("the driver's own failure")

    monkeypatch.setattr(driver, "_reap", fail_once_started)
    try:
        with pytest.raises(OSError, match="the driver's own failure"):
            driver.run()
        [(_, process)] = driver.running.values()
        assert process.returncode == 3 and (tmp_path / "run.sh.stopped").read_text() == "stopped\n"
    finally:  # should the test fail, no endless loop left behind
        for _, started in driver.running.values():
            started.kill()
