"""``python -m fedbat_mpi.run``: a federated run over the MPI ranks of the job.

Exit status: 0 on success; 2 with one line on stderr for a mistake the user can fix (bad option,
missing data set, too many ranks); 1 after an unexpected failure on any rank, which ends every
rank through ``MPI_Abort`` so that none is left waiting in a collective.
"""

import sys
import time
import traceback
from dataclasses import replace

import torch

from .comm import Communicator
from .config import Config, parse_config
from .data import load_dataset
from .engine import Engine
from .errors import UsageError
from .report import Report


def _set_up(argv: list[str] | None, comm: Communicator) -> tuple[Config, Engine]:
    config = parse_config(argv)
    if comm.size > config.clients_per_round:
        raise UsageError(
            f"--clients-per-round: expected at least the number of MPI ranks ({comm.size}), "
            f"got {config.clients_per_round}"
        )
    torch.set_num_threads(config.threads)
    dataset = load_dataset(config.dataset, config.data_dir)
    config = replace(config, model=config.model or dataset.default_model)
    return config, Engine(config, comm, dataset)


def _agreed_set_up(argv: list[str] | None, comm: Communicator) -> tuple[Config, Engine] | None:
    """Set up on every rank; on a UsageError anywhere, the lowest failing rank prints it once."""
    error: UsageError | None = None
    try:
        result = _set_up(argv, comm)
    except UsageError as caught:
        error, result = caught, None
    failed = comm.lowest_rank_with(error is not None)
    if failed is None:
        return result
    if comm.rank == failed:
        where = "" if failed == 0 else f" (on rank {failed})"
        print(f"fedbat_mpi: error{where}: {error}", file=sys.stderr, flush=True)
    return None


def train(argv: list[str] | None, comm: Communicator) -> int:
    start = time.perf_counter()
    set_up = _agreed_set_up(argv, comm)
    if set_up is None:
        return UsageError.exit_status
    config, engine = set_up
    report = Report(config, engine.float32_payload_bytes()) if comm.is_root else None
    for result in engine.rounds():
        if report is not None:
            report.add(result)
    if report is not None:
        report.close()
        print(report.summary(time.perf_counter() - start), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    comm = Communicator()
    if "-h" in argv or "--help" in argv:
        if comm.is_root:
            from .config import build_parser

            build_parser().print_help()
        return 0
    try:
        return train(argv, comm)
    except BaseException:  # noqa: BLE001 - any failure must end every rank, not leave them waiting
        traceback.print_exc()
        sys.stderr.flush()
        comm.abort(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
