# The body shared by jobs/*.slurm, which source it after their #SBATCH lines and FEDBAT_PRESET.
# It runs `python -m fedbat_mpi.run` on the job's tasks, resumes when the run's folder holds a
# checkpoint, and requeues the job when the run stopped early for a signal (exit status 75), unless
# Slurm itself is ending the job (scancel, time limit, preemption): then its output says how to resume.
#
# Settings, from the environment (sbatch passes the submitting shell's environment on):
#   FEDBAT_PRESET    the paper setting, a --preset name       [set by each .slurm script]
#   FEDBAT_DATA_DIR  the folder holding the data sets         [$SLURM_SUBMIT_DIR/data]
#   FEDBAT_OUT       the run's folder (checkpoint, metrics)   [$SLURM_SUBMIT_DIR/runs/JOBNAME-JOBID]
#                    a requeued job keeps its id, so it finds its own checkpoint there
#   FEDBAT_ARGS      more options, split at spaces; they override the preset's   [none]
#   FEDBAT_PYTHON    the Python that has fedbat_mpi installed [$SLURM_SUBMIT_DIR/.venv/bin/python]
#   FEDBAT_LAUNCHER  what starts one rank per task, split at spaces   [srun]
#                    plain srun uses the cluster's MpiDefault; "srun --mpi=pmix" for Open MPI,
#                    "srun --mpi=pmi2" for MPICH, or "mpirun" (it reads the allocation itself).
#   FEDBAT_HOME      the repository, where the .slurm scripts find this file   [$SLURM_SUBMIT_DIR]
# See jobs/README.md.

set -uo pipefail  # no -e: the program's exit status decides what happens next

PREEMPTED=75  # fedbat_mpi.run: stopped by a signal after writing a checkpoint; run again with --resume

data_dir=${FEDBAT_DATA_DIR:-$SLURM_SUBMIT_DIR/data}
out=${FEDBAT_OUT:-$SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}
python=${FEDBAT_PYTHON:-$SLURM_SUBMIT_DIR/.venv/bin/python}
read -r -a launcher <<<"${FEDBAT_LAUNCHER:-srun}"
read -r -a extra <<<"${FEDBAT_ARGS:-}"

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# srun of Slurm 22.05 and 23.02 does not take --cpus-per-task from the job; hand it on.
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
# Open MPI busy-polls while a rank waits in a collective; with more ranks than cores (--overcommit)
# that made an Allreduce 8x slower (128 ms instead of 16). Waiting ranks yield the core instead.
# MPICH ignores the variable.
export OMPI_MCA_mpi_yield_when_idle=1

args=(--preset "$FEDBAT_PRESET" --data-dir "$data_dir" --out "$out" --threads "$OMP_NUM_THREADS")
args+=("${extra[@]}")
if [[ -f $out/checkpoint.h5 ]]; then
    args+=(--resume)
fi
echo "[$(date '+%F %T')] job $SLURM_JOB_ID (start $((${SLURM_RESTART_COUNT:-0} + 1))), $SLURM_NTASKS tasks" \
    "on $SLURM_JOB_NUM_NODES node(s): ${launcher[*]} $python -m fedbat_mpi.run ${args[*]}"

# The launcher runs in the background so that this shell can take signals while it waits and
# still requeue the job afterwards. Slurm signals the ranks itself: `--signal=USR1@180` goes to the
# job steps only, and at the time limit, on preemption or scancel SIGTERM goes to every process of
# the job. So the handler passes on only SIGUSR1, which reaches this shell alone when asked for
# (`--signal=B:USR1@180`, `scancel --batch --signal=USR1`): a second signal would stop a rank at
# once instead of at the end of the round. A SIGTERM here means Slurm is ending the job: it is not
# requeued then (that would undo a scancel), and the way to resume goes to the job's output at once,
# before the SIGKILL that follows after KillWait. A handler, not an ignored signal, because children
# inherit ignored signals.
launched=
ending=
resume_hint() {
    echo "[$(date '+%F %T')] $1; resubmit with FEDBAT_OUT=$out to resume from its last checkpoint"
}
on_signal() {
    caught=$1
    echo "[$(date '+%F %T')] job script received SIG$1"
    case $1 in
        USR1) kill -s USR1 "$launched" 2>/dev/null ;;
        TERM)
            ending=1
            resume_hint "Slurm is ending the job (scancel, time limit or preemption): it is not requeued"
            ;;
    esac
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

"${launcher[@]}" "$python" -m fedbat_mpi.run "${args[@]}" &
launched=$!
while true; do
    caught=
    wait "$launched"
    status=$?
    [[ -n $caught ]] || break  # a handled signal interrupts `wait`: wait again for the real status
done

echo "[$(date '+%F %T')] fedbat_mpi.run exited with status $status"
if ((status == PREEMPTED)) && [[ -z $ending ]]; then
    if scontrol requeue "$SLURM_JOB_ID"; then
        echo "[$(date '+%F %T')] requeued job $SLURM_JOB_ID; it resumes from $out/checkpoint.h5"
        exit 0
    fi
    resume_hint "could not requeue job $SLURM_JOB_ID"
fi
exit "$status"
