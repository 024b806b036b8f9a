"""A run on this rank: set-up agreed by all ranks, the round loop with checkpoints, the report.

Entered from ``fedbat_mpi.run``, which installs the stop-signal handlers before this module's
imports (torch, MPI) so that no signal during start-up is lost.
"""

import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from typing import TextIO

import torch

from fedbat_mpi.config import Config, build_parser, parse_command_line, resumed_config, threads_caveat
from fedbat_mpi.data import data_sha256, load_dataset
from fedbat_mpi.errors import FAILURE, EveryRankStops, UsageError
from fedbat_mpi.server import checkpoint
from fedbat_mpi.server.client_state import ClientStateStore
from fedbat_mpi.server.report import Report
from fedbat_mpi.wire.comm import Communicator

from . import out_lock
from .engine import Engine
from .heap import keep_freed_heap
from .signals import PREEMPTED, StopRequest

ABORT_GRACE_S = 1.0  # seconds between a failing rank's traceback and MPI_Abort, which kills every rank


@dataclass
class Run:
    """A run ready to go on this rank."""

    config: Config
    engine: Engine
    checkpoint_path: str
    resumed: checkpoint.RunState | None
    resumed_from: str  # the checkpoint's path ("" for a new run)
    data_sha256: str  # rank 0: the data set's digest, which its checkpoints record ("" elsewhere)
    out_lock: TextIO | None = None  # rank 0's hold on the output folder (``out_lock.py``), for the run's life


def _set_up(argv: list[str], comm: Communicator) -> Run:
    invocation = parse_command_line(argv)
    resumed, path = None, ""  # path: the checkpoint's, when resuming
    if invocation.resume is None:
        config = Config(**invocation.options).validate()
    else:
        path = invocation.checkpoint_path()
        resumed = checkpoint.load(path)
        options = dict(invocation.options)
        if invocation.resume and "out" not in options:
            options["out"] = os.path.dirname(os.path.abspath(path))
        config = resumed_config(resumed.config, options, resumed.round)
    if comm.size > config.clients_per_round:
        raise UsageError(
            f"--clients-per-round: expected at least the number of MPI ranks ({comm.size}), "
            f"got {config.clients_per_round}"
        )
    torch.set_num_threads(config.threads)
    dataset = load_dataset(config.dataset, config.data_dir)
    config = replace(config, model=config.model or dataset.default_model)
    digest = data_sha256(dataset) if comm.is_root else ""
    if resumed is not None and digest and resumed.data_sha256 and digest != resumed.data_sha256:
        raise UsageError(f"--data-dir: {config.data_dir} holds other {config.dataset} data than {path} was "
                         f"trained on (data SHA-256 {digest[:12]}..., the checkpoint's "
                         f"{resumed.data_sha256[:12]}...); resume with the data the run began with")  # fmt: skip
    engine = Engine(config, comm, dataset)
    if resumed is not None:
        engine.restore(resumed)
        if engine.state_size:
            _check_resumed_state(config, engine, resumed, path)
    return Run(config, engine, os.path.join(config.out_dir, checkpoint.FILE_NAME), resumed, path, digest)


def _refuse_another_runs_checkpoint(out_dir: str, resumed_path: str) -> None:
    """A UsageError if ``out_dir`` holds a checkpoint that this run would write over without continuing
    it: any, for a new run (``resumed_path`` empty); for a resumed run, one beside a checkpoint from
    another folder (the run being continued may be resumed from its own ``checkpoint.prev.h5``)."""
    existing = os.path.join(out_dir, checkpoint.FILE_NAME)
    if not os.path.exists(existing):
        return
    if not resumed_path:
        raise UsageError(f"--out: {out_dir} already holds a checkpoint; add --resume to continue that run "
                         "or choose another --out")  # fmt: skip
    if not os.path.samefile(os.path.dirname(os.path.abspath(resumed_path)), out_dir):
        raise UsageError(f"--out: {out_dir} already holds another run's checkpoint, which resuming "
                         f"{resumed_path} there would replace; choose another --out")  # fmt: skip


def _claim_out_dir(run: Run, comm: Communicator) -> Run:
    """Rank 0, once every rank is set up: the output folder's lock, then a check that no other run's
    checkpoint is in it (after the lock, so that a run still going there is named as such), then
    (resuming a run with per-client state) the client-state store, which opening updates; nothing is
    written before the lock is held."""
    if comm.is_root:
        had_lock_file = os.path.exists(os.path.join(run.config.out_dir, out_lock.FILE_NAME))
        run.out_lock = out_lock.hold_out_dir(run.config.out_dir)
        try:
            _refuse_another_runs_checkpoint(run.config.out_dir, run.resumed_from)
        except UsageError:
            out_lock.release_out_dir(run.out_lock, remove=not had_lock_file)  # refused: nothing written
            raise
        if run.resumed is not None and run.engine.state_size:
            folder, index = run.config.out_dir, run.resumed.client_state
            assert index is not None  # _check_resumed_state made sure
            run.engine.states = ClientStateStore.open(folder, index, run.resumed.round)
    return run


def _check_resumed_state(config: Config, engine: Engine, resumed: checkpoint.RunState, path: str) -> None:
    """A resumed run with per-client state: the checkpoint at ``path`` holds the algorithm's kind of
    state and lies in ``--out`` (else a UsageError)."""
    index, expected = resumed.client_state, (engine.algorithm.state_name, engine.state_size)
    if index is None or (index.name, index.row_size) != expected:
        found = None if index is None else (index.name, index.row_size)
        raise UsageError(f"--resume: {path} holds client state {found}; --algorithm {config.algorithm} needs {expected}")
    folder = os.path.dirname(os.path.abspath(path))
    if not (os.path.isdir(config.out_dir) and os.path.samefile(folder, config.out_dir)):  # links included
        raise UsageError(f"--out: a run with per-client state continues in its checkpoint's folder {folder}, "
                         f"whose client_state.h5 it updates; got {config.out_dir}")  # fmt: skip


def _agreed(comm: Communicator, step: Callable[[], Run]) -> Run | None:
    """``step()`` on every rank; on a UsageError anywhere, the lowest failing rank prints it once and
    every rank gets None."""
    error: UsageError | None = None
    try:
        run = step()
    except UsageError as caught:
        error, run = caught, None
    failed = comm.lowest_rank_with(error is not None)
    if failed is None:
        return run
    if comm.rank == failed:
        _print_error(error, failed)
    return None


def _print_error(error: Exception | None, rank: int) -> None:
    """One line on stderr; an error that is not the user's names its kind (``PayloadError: ...``)."""
    where = "" if rank == 0 else f" (on rank {rank})"
    kind = "" if isinstance(error, UsageError) else f"{type(error).__name__}: "
    print(f"fedbat_mpi: error{where}: {kind}{error}", file=sys.stderr, flush=True)


def _agreed_set_up(argv: list[str], comm: Communicator) -> Run | None:
    """Set up on every rank, then claim the output folder; None (the error printed once) if either fails."""
    run = _agreed(comm, lambda: _set_up(argv, comm))
    return None if run is None else _agreed(comm, lambda: _claim_out_dir(run, comm))


def checkpoint_due(config: Config, round_index: int, stopping: bool) -> bool:
    """The checkpoint policy: every ``--checkpoint-every`` rounds, after the last round, and on a stop."""
    every = config.checkpoint_every
    return stopping or round_index == config.rounds or bool(every and round_index % every == 0)


def save_checkpoint(run: Run, report: Report | None, round_index: int, comm: Communicator) -> None:
    """Rank 0 writes the checkpoint after ``round_index`` (committing the client-state store with it);
    every rank waits for it, so that no rank exits before the checkpoint is whole."""
    if report is not None:
        start = time.perf_counter()
        state = replace(run.engine.run_state(round_index, report.rows), data_sha256=run.data_sha256)
        checkpoint.save_committing(run.checkpoint_path, state, run.engine.states)
        report.saved(run.checkpoint_path, round_index, time.perf_counter() - start)
    comm.barrier()


def open_report(run: Run, comm: Communicator) -> Report | None:
    """Rank 0's report (``metrics.jsonl`` from the checkpoint's rows on, progress lines); None elsewhere.
    A new run of a stateful algorithm also creates its client-state store here. A file of the report
    that cannot be written (a folder in its way) ends every rank with one line and exit 2."""
    report, error = None, None
    if comm.is_root:
        try:
            report = Report(run.config, run.engine.float32_payload_bytes(), run.resumed.metrics if run.resumed else [])
        except UsageError as caught:
            error = caught
    comm.stop_together_on(error, UsageError.exit_status)
    if report is None:
        return None
    engine = run.engine
    if engine.state_size and engine.states is None:  # the report made the folder
        engine.states = engine.new_state_store(run.config.out_dir)
    if run.resumed:
        print(f"resuming after round {run.resumed.round} (checkpoint written on {run.resumed.num_ranks} ranks)",
              flush=True)  # fmt: skip
        caveat = threads_caveat(run.resumed.config, run.config)
        if caveat:
            print(caveat, flush=True)
    return report


def train(argv: list[str], comm: Communicator, stop: StopRequest) -> int:
    """Set up, run the remaining rounds with checkpoints, and report; returns the exit status.

    The round loop: train a round, report it, ask every rank whether a stop was requested, save a
    checkpoint when the policy says so (``checkpoint_due``), and end after a stop (exit 75) or the last
    round (exit 0); the engine is closed then."""
    start = time.perf_counter()
    run = _agreed_set_up(argv, comm)
    if run is None:
        return UsageError.exit_status
    # The aggregator's threads and rank 0's metrics.jsonl end with the run, however it ends.
    with closing(run.engine), ExitStack() as closes:
        first = run.resumed.round + 1 if run.resumed else 1
        # A signal during start-up: nothing new to save, and a finished run has nothing left to requeue.
        if first <= run.config.rounds and comm.any(stop.requested):
            if comm.is_root:
                print(f"stop signal received before the first round; exit status {PREEMPTED}", flush=True)
            return PREEMPTED
        report = open_report(run, comm)
        if report is not None:
            closes.callback(report.close)
        for round_index in range(first, run.config.rounds + 1):
            result = run.engine.run_round(round_index)
            if report is not None and result is not None:  # both on rank 0 only
                report.add(result)
            # A stop in the last round ends the run as complete (exit 0): requeued, it would find nothing to do.
            stopping = comm.any(stop.requested) and round_index < run.config.rounds
            if checkpoint_due(run.config, round_index, stopping):
                save_checkpoint(run, report, round_index, comm)
            if stopping:
                if report is not None:
                    print(f"stop signal received: checkpoint after round {round_index} in "
                          f"{run.checkpoint_path}; continue with --resume (exit status {PREEMPTED})",
                          flush=True)  # fmt: skip
                return PREEMPTED
        if report is not None:
            print(report.summary(time.perf_counter() - start), flush=True)
        return 0


def main(argv: list[str], stop: StopRequest) -> int:
    """Start MPI and run. A round that cannot go on ends every rank together (``EveryRankStops``, one
    line); any other failure on this rank ends every rank through ``MPI_Abort``."""
    keep_freed_heap()  # before the first training step: each step reuses the last one's memory
    comm = Communicator()
    stop.install()  # again: MPI's start-up may have put its own handlers in place
    if "-h" in argv or "--help" in argv:
        if comm.is_root:
            build_parser().print_help()
        return 0
    try:
        return train(argv, comm, stop)
    except EveryRankStops as stopped:  # every rank is here: no MPI_Abort needed
        if stopped.error is not None:
            _print_error(stopped.error, comm.rank)
        return stopped.exit_status
    except BaseException as error:  # noqa: BLE001 - any failure must end every rank, not leave them waiting
        if isinstance(error, UsageError):  # found by one rank alone during a round, the others in a collective
            _print_error(error, comm.rank)
        else:
            traceback.print_exc()
            sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)  # the launcher forwards output asynchronously: let it out first
        status = UsageError.exit_status if isinstance(error, UsageError) else FAILURE
        comm.abort(status)
        return status
