"""``python -m fedbat_mpi.run``: a federated run over the MPI ranks of the job.

Exit status: 0 when the run is finished; 2 with one line on stderr for a mistake the user can fix
(bad option, missing data set, unreadable, damaged or mismatched checkpoint, too many ranks, a damaged
client-state row found during a round); 75 when a stop signal (SIGTERM, SIGUSR1) ended the run early,
with a checkpoint, to be continued with ``--resume``; 1 for a payload rank 0 cannot use (one line: a
diverged run, a bad header), which ends every rank together, and after an unexpected failure on any
rank, which ends every rank through ``MPI_Abort`` so that none is left waiting in a collective.
"""

import sys

from fedbat_mpi.rounds.signals import StopRequest


def main(argv: list[str] | None = None) -> int:
    # The handlers come first: a batch system may signal a job that is still importing torch.
    stop = StopRequest()
    from fedbat_mpi.rounds import job

    return job.main(sys.argv[1:] if argv is None else argv, stop)


if __name__ == "__main__":
    sys.exit(main())
