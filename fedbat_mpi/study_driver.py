"""The study driver behind ``python -m fedbat_mpi.study`` (its docstring says what it does): starts a
grid's runs as subprocesses, a few at a time, passes stop signals on to them and reports progress."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import TextIO

import yaml

from fedbat_mpi.errors import OneLineParser, UsageError
from fedbat_mpi.grid import GridRun, Study, load_study
from fedbat_mpi.records import read_run
from fedbat_mpi.rounds.out_lock import hold_out_dir
from fedbat_mpi.rounds.signals import PREEMPTED, StopCount

POLL_S = 0.2
DESCRIPTION = "Every run of a grid (fedbat_mpi.grid) under one folder: started, resumed or skipped."


def find_program(name: str) -> str | None:
    """The executable ``name`` beside this Python (a virtual environment's ``mpirun``), else on PATH;
    a path is taken as it is. None when there is none."""
    search = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return shutil.which(name, path=search)


def launcher_command(study: Study, launcher: str) -> list[str]:
    """The launcher's words with ``{ranks}`` filled in, its program found beside this Python (a
    virtual environment's ``mpirun``) or on PATH."""
    words = [word.replace("{ranks}", str(study.ranks_per_run)) for word in launcher.split()]
    if not words:
        raise UsageError("--launcher: expected a command, e.g. mpirun -n {ranks}, got ''")
    found = find_program(words[0])
    if found is None:
        raise UsageError(f"launcher: {words[0]} is neither beside {sys.executable} nor on PATH")
    return [found, *words[1:]]


def write_manifest(study: Study) -> None:
    """``study.json`` in the study folder: the grid file and every run's number, folder and options."""
    try:
        study.folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"out: cannot make the study folder {study.folder}: {error.strerror}") from None
    manifest = {"grid": os.path.abspath(study.path), "runs": [
        {"index": run.index, "name": run.name, "options": run.options} for run in study.runs
    ]}  # fmt: skip
    # Array tasks may write it together, on nodes whose process ids may be equal.
    temporary = study.folder / f".study.json.tmp-{socket.gethostname()}-{os.getpid()}"
    try:
        temporary.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(temporary, study.folder / "study.json")
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"out: cannot write {study.folder / 'study.json'}: {error.strerror}") from None


class Driver:
    """Runs a list of grid runs, a few at a time, and passes each stop signal ``stops`` counts on to them."""

    def __init__(
        self, study: Study, runs: list[GridRun], runs_at_once: int, launcher: list[str], gpus: list[str],
        stops: StopCount,
    ):  # fmt: skip
        self.study, self.runs_at_once, self.launcher, self.gpus = study, runs_at_once, launcher, gpus
        self.stops = stops
        self.gpu_of: dict[str, str] = {}  # the GPU each running run sees, when there are GPUs to spread over
        self.pending = [run for run in runs if not run.standing().done]
        self.done = len(runs) - len(self.pending)
        self.running: dict[str, tuple[GridRun, subprocess.Popen]] = {}
        self.asked_to_stop: dict[str, int] = {}  # stop requests passed on, by run
        self.failed: list[int] = []
        self.stopped = 0
        self.started = time.monotonic()

    def run(self) -> int:
        """Run every pending run; the exit status (module docstring). Should the driver itself fail, the
        runs it started are stopped (each checkpoints) and waited for, never left running unwatched."""
        self._say(f"study {self.study.folder}: {self.done + len(self.pending)} runs")
        try:
            while self.running or (self.pending and not self.stops.count):
                while self.pending and len(self.running) < self.runs_at_once and not self.stops.count:
                    self._start(self.pending.pop(0))
                self._pass_on_stops()
                self._reap()
                time.sleep(POLL_S)
        finally:
            self._stop_and_wait()
        if self.stopped or self.pending:  # the runs not started count as stopped too
            self._say("stopped; run the same command again to go on")
            return PREEMPTED
        self._say("all runs ended")
        if self.failed:
            return UsageError.exit_status if set(self.failed) == {UsageError.exit_status} else 1
        return 0

    def _start(self, run: GridRun) -> None:
        try:  # a run going on in the folder (another driver's, an array task's): refused before writing there
            probe = hold_out_dir(str(run.folder))
        except UsageError as error:
            self.failed.append(UsageError.exit_status)
            self._say(f"{run.name}: not started: {error}", stream=sys.stderr)
            return
        if probe is not None:
            probe.close()  # the run takes the lock itself
        standing = run.standing()
        if standing.problem:  # the run would refuse it (exit 2): its folder is left as the checkpoint's run left it
            self.failed.append(UsageError.exit_status)
            self._say(f"{run.name}: not started: {standing}", stream=sys.stderr)
            return
        options_file = run.folder / "options.yaml"
        command = [*self.launcher, sys.executable, "-m", "fedbat_mpi.run", "--config", str(options_file),
                   "--out", str(run.folder), *(["--resume"] if run.checkpoint.exists() else [])]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(run.config.threads))
        seen = ""
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = least_used(self.gpus, self.gpu_of.values())
            seen = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} "
        try:  # a full disk or a file in the way fails this run alone
            options_file.write_text("# written by python -m fedbat_mpi.study: this run's options (--config)\n"
                                    + yaml.safe_dump(run.options, sort_keys=False))  # fmt: skip
            with open(run.folder / "run.log", "a") as log:  # the child keeps its own descriptor
                log.write(f"[{datetime.now():%F %T}] fedbat_mpi.study: {seen}{shlex.join(command)}\n")
                log.flush()
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,  # a Ctrl-C reaches the driver alone, which passes it on as a stop
                )  # fmt: skip
        except OSError as error:
            self.failed.append(1)
            self._say(f"{run.name}: not started: {error}", stream=sys.stderr)
            return
        if self.gpus:
            self.gpu_of[run.name] = env["CUDA_VISIBLE_DEVICES"]
        self.running[run.name] = (run, process)
        self._say(
            f"{run.name}: " + (f"resuming after round {standing.round}" if standing.round else "started")
        )

    def _pass_on_stops(self) -> None:
        for name, (run, process) in self.running.items():
            while self.asked_to_stop.get(name, 0) < self.stops.count:
                process.send_signal(signal.SIGUSR1)
                self.asked_to_stop[name] = self.asked_to_stop.get(name, 0) + 1

    def _reap(self) -> None:
        for name, (run, process) in list(self.running.items()):
            status = process.poll()
            if status is None:
                continue
            del self.running[name]
            self.gpu_of.pop(name, None)
            standing = run.standing()
            if status == 0 and standing.done:
                self.done += 1
                self._say(f"{name}: finished, {_final_accuracy(run)}")
            elif status == PREEMPTED or (name in self.asked_to_stop and status != UsageError.exit_status):
                self.stopped += 1
                self._say(f"{name}: {standing}")
            else:
                self.failed.append(status or 1)
                how = (f"the launcher exited with status 0, but the run did not finish ({standing})" if status == 0
                       else f"killed by signal {-status}" if status < 0 else f"failed with exit status {status}")  # fmt: skip
                self._say(f"{name}: {how}; {run.folder / 'run.log'}: {_last_line(run)}", stream=sys.stderr)

    def _stop_and_wait(self) -> None:
        """The runs still running (after an error of the driver's) asked to stop, then waited for."""
        for name, (_, process) in self.running.items():
            if not self.asked_to_stop.get(name):
                process.send_signal(signal.SIGUSR1)
        for _, process in self.running.values():
            process.wait()

    def _say(self, event: str, stream: TextIO = sys.stdout) -> None:
        elapsed = int(time.monotonic() - self.started)
        counts = f"{self.done} done, {len(self.running)} running, {len(self.pending)} left"
        counts += f", {len(self.failed)} failed" if self.failed else ""
        counts += f", {self.stopped} stopped" if self.stopped else ""
        clock = f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
        try:
            print(f"[{clock}] {event} | {counts}", file=stream, flush=True)
        except OSError:  # a closed terminal (its SIGHUP is a stop): the driver still waits for its runs
            pass


def least_used(gpus: list[str], in_use: Iterable[str]) -> str:
    """The first of ``gpus`` that the fewest running runs use."""
    counts = Counter(in_use)
    return min(gpus, key=lambda gpu: counts[gpu])


def gpus_to_spread(option: str | None) -> list[str]:
    """``--gpus`` as a list of device ids; by default those of ``CUDA_VISIBLE_DEVICES`` if it has several."""
    listed = option if option is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    if option is not None and not gpus:
        raise UsageError(f"--gpus: expected GPU ids separated by commas, e.g. 0,1, got {option!r}")
    return gpus if option is not None or len(gpus) > 1 else []


def _final_accuracy(run: GridRun) -> str:
    try:
        return f"test accuracy {100 * read_run(str(run.folder)).rows[-1]['test_acc']:.2f} %"
    except UsageError as error:  # a record changed under the driver: the run's checkpoint says it is done
        return f"but its metrics cannot be read: {error}"


def _last_line(run: GridRun) -> str:
    try:
        text = (run.folder / "run.log").read_text(errors="replace")
    except OSError as error:
        return f"(cannot be read: {error.strerror})"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty log)"


def command(argv: list[str], stops: StopCount) -> int:
    """``python -m fedbat_mpi.study`` with ``argv``; ``stops`` counts the stop signals since it began."""
    parser = OneLineParser(prog="python -m fedbat_mpi.study", description=DESCRIPTION)
    parser.add_argument("grid", metavar="GRID.yaml", help="the grid file (format: fedbat_mpi/grid.py)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print every run and where it stands")
    mode.add_argument("--count", action="store_true", help="print the number of runs")
    mode.add_argument("--task", type=int, metavar="I", help="run only run I (0-based: a Slurm array task)")
    parser.add_argument(
        "--runs-at-once", type=int, metavar="K", help="overrides the grid file's runs_at_once"
    )
    parser.add_argument("--launcher", metavar="COMMAND", help="overrides the grid file's launcher, e.g. srun")
    parser.add_argument("--out", metavar="DIR", help="the study folder (default: the grid file's out)")
    parser.add_argument("--gpus", metavar="IDS", help="GPUs to spread the runs over, e.g. 0,1,2,3 "
                        "(default: CUDA_VISIBLE_DEVICES when it lists several)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.count or args.list:  # not a study run: stop signals take their usual effect
        stops.restore()
    plan = load_study(args.grid, args.out)
    if args.count:
        print(len(plan.runs))
        return 0
    if args.list:
        for run in plan.runs:
            print(f"{run.index:4d}  {run.name}  {run.standing()}")
        return 0
    runs_at_once = plan.runs_at_once if args.runs_at_once is None else args.runs_at_once
    if runs_at_once < 1:
        raise UsageError(f"--runs-at-once: expected a positive integer, got {runs_at_once}")
    runs = plan.runs
    if args.task is not None:
        if not 0 <= args.task < len(runs):
            raise UsageError(f"--task: expected a run number from 0 to {len(runs) - 1}, got {args.task}")
        runs, runs_at_once = [runs[args.task]], 1
    launcher = launcher_command(plan, plan.launcher if args.launcher is None else args.launcher)
    write_manifest(plan)
    # One run of a Slurm array task sees every GPU of its job (one a rank), unless --gpus names some.
    gpus = gpus_to_spread(args.gpus) if args.task is None or args.gpus is not None else []
    return Driver(plan, runs, runs_at_once, launcher, gpus, stops).run()
