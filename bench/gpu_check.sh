#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one short script (a few minutes):
#   1. 1, 2 and 4 ranks sharing one GPU give the same model_sha256 and metrics (determinism on CUDA,
#      one client at a time: groups of a rank's clients depend on the number of ranks), and so does a
#      run resumed on 4 ranks from a checkpoint written on 2; a grouped run gives the same with
#      --cuda-graphs on as off (a replayed step is the eager step), and resumed on its rank count;
#      the script exits 1 at the end when they differ or a run failed (everything else still runs);
#   2. wall time of the embedded default on 8 ranks sharing the GPU, and on 1 rank;
#   3. client updates per second with 1, 2, 4 and 8 ranks sharing the GPU (bench/scaling.py).
# Usage: bench/gpu_check.sh [OUT_DIR] [determinism] (environment: bench/gpu_env.sh); with
# "determinism", step 1 alone (about a minute).
set -euo pipefail
out=${1:-${OUT:-/tmp/fedbat-gpu-check}}
only=${2:-}
mkdir -p "$out"
source bench/gpu_env.sh || exit 1
"$py" -c "import torch, mpi4py; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'mpi4py', mpi4py.__version__)"

tiny=(--num-clients 40 --clients-per-round 8 --local-epochs 1 --rounds 3 --device cuda --client-group 1)
status=0
for ranks in 1 2 4; do  # a failed run is reported, and the rest still runs
    "$mpirun" -n "$ranks" "$py" -m fedbat_mpi.run "${tiny[@]}" --out "$out/tiny-$ranks" | tail -n 3 \
        || { echo "the run on $ranks rank(s) failed"; status=1; }
done
"$py" bench/same_runs.py "$out"/tiny-{1,2,4} || status=1  # determinism on CUDA
# Runs OPTIONS for 2 rounds on RANKS_FIRST ranks into DIR, then resumes it to round 3 on RANKS_THEN.
stopped_and_resumed() {  # DIR RANKS_FIRST RANKS_THEN OPTIONS...
    local dir=$1 first=$2 then=$3
    shift 3
    "$mpirun" -n "$first" "$py" -m fedbat_mpi.run "$@" --rounds 2 --out "$dir" | tail -n 1 \
        && "$mpirun" -n "$then" "$py" -m fedbat_mpi.run --resume --out "$dir" --rounds 3 | tail -n 1 \
        || { echo "$dir: the run stopped after round 2 or its resume failed"; return 1; }
}
# A resume on CUDA: 2 rounds on 2 ranks continued on 4 (one client at a time), equal to tiny-1.
stopped_and_resumed "$out/resumed" 2 4 "${tiny[@]}" || status=1
"$py" bench/same_runs.py "$out"/tiny-1 "$out/resumed" || status=1
# Grouped runs over unequal clients (dir:0.3): buckets that end part full, the captured index paths.
grouped=("${tiny[@]}" --client-group auto --partition dir:0.3)
for graphs in off on; do  # a failed run is reported, and the rest still runs
    "$py" -m fedbat_mpi.run "${grouped[@]}" --cuda-graphs "$graphs" --out "$out/graphs-$graphs" \
        | tail -n 1 || { echo "the grouped run with --cuda-graphs $graphs failed"; status=1; }
done
# A grouped run resumed on its rank count, graphs on: equal to the grouped run without either.
stopped_and_resumed "$out/graphs-resumed" 1 1 "${grouped[@]}" --cuda-graphs on || status=1
"$py" bench/same_runs.py "$out"/graphs-{off,on,resumed} || status=1  # CUDA graphs and resumes change nothing
[ "$only" = determinism ] && exit "$status"
for ranks in 8 1; do
    start=$(date +%s.%N)
    "$mpirun" -n "$ranks" "$py" -m fedbat_mpi.run --device cuda --out "$out/default-$ranks" | tail -n 6 \
        || { echo "the default on $ranks rank(s) failed"; status=1; }
    echo "default on $ranks rank(s) sharing one GPU: $(awk "BEGIN {print $(date +%s.%N) - $start}") s wall"
done
"$py" bench/scaling.py --ranks 1 2 4 8 --device cuda --clients-per-round 16 --rounds 4 \
    --json "$out/scaling-gpu.json" || status=1
exit "$status"
