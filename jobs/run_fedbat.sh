# The body shared by jobs/{cifar100,cifar10,svhn,fmnist}.slurm, which source it after their #SBATCH
# lines and FEDBAT_PRESET. It runs `python -m fedbat_mpi.run` on the job's tasks, resumes when the
# run's folder holds a checkpoint, and requeues the job when the run stopped early for a signal
# (jobs/launch.sh, which also reads FEDBAT_PYTHON and FEDBAT_LAUNCHER).
#
# Settings, from the environment (sbatch passes the submitting shell's environment on):
#   FEDBAT_PRESET    the paper setting, a --preset name       [set by each .slurm script]
#   FEDBAT_DATA_DIR  the folder holding the data sets         [$SLURM_SUBMIT_DIR/data]
#   FEDBAT_OUT       the run's folder (checkpoint, metrics)   [$SLURM_SUBMIT_DIR/runs/JOBNAME-JOBID]
#                    a requeued job keeps its id, so it finds its own checkpoint there
#   FEDBAT_ARGS      more options, split at spaces; they override the preset's   [none]
#                    (not --out or --resume, which this script sets: exit 2)
#   FEDBAT_HOME      the repository, where the .slurm scripts find this file   [$SLURM_SUBMIT_DIR]
# See jobs/README.md.

source "${FEDBAT_HOME:-$SLURM_SUBMIT_DIR}/jobs/launch.sh"

read -r -a extra <<<"${FEDBAT_ARGS:-}"
# ${extra[@]+"${extra[@]}"}: the words, or none; bash before 4.4 calls an empty array unbound (set -u).
for arg in ${extra[@]+"${extra[@]}"}; do  # what this script sets: another value would break the resume after a requeue
    case $arg in
        --out | --out=* | --resume | --resume=*)
            echo "FEDBAT_ARGS: ${arg%%=*} is set by the job script" \
                "(the folder by FEDBAT_OUT; it resumes by itself)" >&2
            exit 2
            ;;
    esac
done

data_dir=${FEDBAT_DATA_DIR:-$SLURM_SUBMIT_DIR/data}
out=${FEDBAT_OUT:-$SLURM_SUBMIT_DIR/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID}

args=(--preset "$FEDBAT_PRESET" --data-dir "$data_dir" --out "$out" --threads "$OMP_NUM_THREADS")
args+=(${extra[@]+"${extra[@]}"})
if [[ -f $out/checkpoint.h5 ]]; then
    args+=(--resume)
fi
resume_how="resubmit with FEDBAT_OUT=$out to resume from its last checkpoint"
echo "[$(date '+%F %T')] job $SLURM_JOB_ID (start $((${SLURM_RESTART_COUNT:-0} + 1))), $SLURM_NTASKS tasks" \
    "on $SLURM_JOB_NUM_NODES node(s): ${launcher[*]} $python -m fedbat_mpi.run ${args[*]}"
run_and_requeue fedbat_mpi.run "${launcher[@]}" "$python" -m fedbat_mpi.run "${args[@]}"
