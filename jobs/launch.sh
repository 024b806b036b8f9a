# What the job scripts share, sourced by jobs/run_fedbat.sh and jobs/study.slurm: the Python and the
# launcher, the ranks' thread settings, and `run_and_requeue`, which runs a program in the background,
# passes SIGUSR1 on to it, and requeues the job when the program stopped early for a signal (exit
# status 75), unless Slurm itself is ending the job (scancel, time limit, preemption): then the job's
# output says how to resume, from the caller's `resume_how`.
#
# Settings, from the environment (sbatch passes the submitting shell's environment on):
#   FEDBAT_PYTHON    the Python that has fedbat_mpi installed [$SLURM_SUBMIT_DIR/.venv/bin/python]
#   FEDBAT_LAUNCHER  what starts one rank per task, split at spaces   [srun]
#                    plain srun uses the cluster's MpiDefault; "srun --mpi=pmix" for Open MPI,
#                    "srun --mpi=pmi2" for MPICH, or "mpirun" (it reads the allocation itself).
# See jobs/README.md.

set -uo pipefail  # no -e: the program's exit status decides what happens next

PREEMPTED=75  # fedbat_mpi.run and .study: stopped by a signal after writing a checkpoint; run again

python=${FEDBAT_PYTHON:-$SLURM_SUBMIT_DIR/.venv/bin/python}
read -r -a launcher <<<"${FEDBAT_LAUNCHER:-srun}"

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# srun of Slurm 22.05 and 23.02 does not take --cpus-per-task from the job; hand it on.
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
# Open MPI busy-polls while a rank waits in a collective; with more ranks than cores (--overcommit)
# that made an Allreduce 8x slower (128 ms instead of 16). Waiting ranks yield the core instead.
# MPICH ignores the variable.
export OMPI_MCA_mpi_yield_when_idle=1

# The program runs in the background so that this shell can take signals while it waits and
# still requeue the job afterwards. Slurm signals the ranks itself: `--signal=USR1@180` goes to the
# job steps only, and at the time limit, on preemption or scancel SIGTERM goes to every process of
# the job. So the handler passes on only SIGUSR1, which reaches this shell alone when asked for
# (`--signal=B:USR1@180`, `scancel --batch --signal=USR1`): a second signal would stop a rank at
# once instead of at the end of the round. A SIGTERM here means Slurm is ending the job: this script
# does not requeue it then (that would undo a scancel; Slurm requeues it itself after `scontrol
# requeue` or a requeueing preemption), and the way to resume goes to the job's output at once,
# before the SIGKILL that follows after KillWait. A handler, not an ignored signal, because children
# inherit ignored signals.
launched=
ending=
resume_hint() {
    echo "[$(date '+%F %T')] $*; $resume_how"
}
on_signal() {
    caught=$1
    echo "[$(date '+%F %T')] job script received SIG$1"
    case $1 in
        USR1) kill -s USR1 "$launched" 2>/dev/null ;;
        TERM)
            ending=1
            resume_hint "Slurm is ending the job: this script does not requeue it (Slurm does after" \
                "scontrol requeue or a requeueing preemption; else, after scancel or a time limit)"
            ;;
    esac
}

# run_and_requeue NAME COMMAND...: run COMMAND, named NAME in the output; exits with its status, or
# requeues the job (and exits 0) when it stopped early for a signal.
run_and_requeue() {
    local name=$1 status
    shift
    trap 'on_signal USR1' USR1
    trap 'on_signal TERM' TERM
    "$@" &
    launched=$!
    while true; do
        caught=
        wait "$launched"
        status=$?
        [[ -n $caught ]] || break  # a handled signal interrupts `wait`: wait again for the real status
    done
    echo "[$(date '+%F %T')] $name exited with status $status"
    if ((status == PREEMPTED)) && [[ -z $ending ]]; then
        if scontrol requeue "$SLURM_JOB_ID"; then
            echo "[$(date '+%F %T')] requeued job $SLURM_JOB_ID; it resumes from its last checkpoint"
            exit 0
        fi
        resume_hint "could not requeue job $SLURM_JOB_ID"
    fi
    exit "$status"
}
