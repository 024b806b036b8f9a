"""``python -m fedbat_mpi.study GRID.yaml``: every run of a grid (``fedbat_mpi.grid``) under one folder.

The driver starts the runs as subprocesses (``LAUNCHER python -m fedbat_mpi.run --config RUN/options.yaml
--out RUN``), ``runs_at_once`` at a time, each writing its output to ``RUN/run.log``; it skips finished
runs, resumes stopped ones (``--resume``) and prints a progress line whenever a run starts or ends; a
run whose checkpoint is not its own (other options: a copied file, an edited grid) is not started.
``--task I`` runs only run I (a Slurm array task), ``--list`` shows where every run stands, ``--count``
prints the number of runs.

A stop signal to the driver (SIGTERM, SIGINT, SIGUSR1, and SIGHUP: a closed terminal) is passed on to
every running run as SIGUSR1 (its ranks finish their round, checkpoint and exit 75); the driver starts
no more runs and exits 75 once they have ended: run the same command again to go on. A signal the
driver was started with ignored stays ignored: under ``nohup`` a closed terminal stops nothing. The
handlers are in place before torch loads; ``--list`` and ``--count``
keep the usual effects. A run that fails is reported on one line, its log's last line included, and
the others go on.

On a node with several GPUs, ``--gpus 0,1,2,3`` (default: the devices ``CUDA_VISIBLE_DEVICES`` lists,
when it lists more than one) spreads the runs that run at once over them: each run sees one GPU
(``CUDA_VISIBLE_DEVICES`` set to it), the one fewest running runs use.

Exit status: 0 when every run has finished; 75 when a stop signal ended the study or a run early; else
2 when every failed run failed on a mistake in its input (e.g. a missing data set), or 1 (a run's
traceback, a run killed by a signal, a launcher that exited 0 before its run finished).
"""

import sys

from fedbat_mpi.rounds.signals import StopCount


def main(argv: list[str] | None = None) -> int:
    # The handlers come first: a stop signal (or a closed terminal) may come while torch is loading.
    stops = StopCount().install()
    from fedbat_mpi import study_driver
    from fedbat_mpi.errors import run_command

    args = sys.argv[1:] if argv is None else argv
    try:
        return run_command("fedbat_mpi.study", lambda: study_driver.command(args, stops))
    finally:  # a caller's own handlers back (main called in-process, as the tests do)
        stops.uninstall()


if __name__ == "__main__":
    sys.exit(main())
