#!/usr/bin/env bash
# Every GPU figure the open issues still need, on one GPU, in parts (each a few minutes on an H100):
#   smoke      bench/grouping.py --quick --graphs: grouped (with and without CUDA graphs) and
#              one-at-a-time FedBAT work on CUDA, CNN4 under dir:0.3 and ResNet-10 with augmented
#              batches, under a minute;
#   aggregate  bench/aggregate.py --device cuda: issue 9's server step on the GPU (1,000 CNN4-MNIST and
#              1,000 ResNet-10 payloads), about a minute;
#   grouping   bench/grouping.py --graphs: issue 8's targets (fmnist-iid / dir0.3 per algorithm grouped
#              and one at a time, FedBAT and FedAvg grouped also with --cuda-graphs on, 1,000 clients a
#              round, the ResNet-10 speed-up), about 8 minutes without the graph runs (measured
#              2026-11-27: 7 for the Fashion-MNIST cases, 1 for the rest; the graph runs add about 2);
#              use FEDBAT_GROUPING_CASES to split it over calls;
#   graphs     bench/step_graphs.py --compile: issue 8's item 4, the grouped step eager against a CUDA
#              graph and torch.compile, and train_group with and without --cuda-graphs, not yet run on
#              a GPU (estimated 1-3 minutes, compiling included);
#   agreement  bench/agreement.py: issue 8's accuracy check, 20 rounds of fmnist-iid and fmnist-dir0.3
#              grouped and one at a time, the four runs at once (exit 1 beyond 0.5 points; needs
#              FEDBAT_FMNIST_DIR), about 3 minutes (estimated: the slowest run, dir0.3 one at a time,
#              is 20 rounds of about 8 s);
#   cost       bench/study_cost.py: issue 10's steady rounds of the SVHN/CIFAR presets and the cost of
#              the grid on a node of 8 GPUs, about 4 minutes;
#   check      bench/gpu_check.sh: determinism on CUDA (fails when 1/2/4-rank runs differ), the default
#              on 8 and 1 ranks and client updates/s with 1-8 ranks sharing the GPU, 2 minutes;
#   determinism  the first of those alone (1/2/4 ranks, a resume, grouped graphs on against off), about a minute.
# Usage: bench/gpu_session.sh OUT_DIR [PART...] (default: smoke aggregate graphs grouping cost check).
# Parts joined by "+" run at the same time (e.g. smoke+determinism+agreement): only for parts whose
# results are not timings (smoke, determinism, agreement), whose small-model runs leave the GPU mostly
# idle; timed parts run alone, one after the other. Each part writes PART.txt (its output) and, where
# it has one, PART.json straight into OUT_DIR as it goes, so that a lease cut short still returns the
# parts done (the device returns 8 files: four parts a call). FEDBAT_FMNIST_DIR, when set, is a
# --data-dir holding the real fashion-mnist/ files for grouping and agreement (accuracies then mean
# something); FEDBAT_GROUPING_CASES (e.g. "fmnist-1000 cifar10-iid") runs only those cases of grouping.
# Exits 1 when a part failed.
set -uo pipefail
out=${1:-${OUT:-/tmp/fedbat-gpu-session}}
shift || true
parts_known=" smoke aggregate graphs grouping agreement cost check determinism "
[[ $parts_known != *" ${out%%+*} "* ]] || { echo "gpu_session.sh: the first argument is the output folder, got the part $out" >&2; exit 2; }
parts=("${@:-smoke aggregate graphs grouping cost check}")
read -r -a parts <<<"${parts[*]}"
for group in "${parts[@]}"; do
    for part in ${group//+/ }; do
        [[ $parts_known == *" $part "* ]] || { echo "gpu_session.sh: unknown part $part ($parts_known)" >&2; exit 2; }
    done
done
mkdir -p "$out"
scratch=$(mktemp -d)
source bench/gpu_env.sh || exit 1
"$py" -c "import torch, mpi4py; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'mpi4py', mpi4py.__version__, 'cudnn tf32', torch.backends.cudnn.allow_tf32)"
real_fmnist=(${FEDBAT_FMNIST_DIR:+--fmnist-dir "$FEDBAT_FMNIST_DIR"})

run_part() {  # one part's command, its records into $out
    case $1 in
    smoke) "$py" bench/grouping.py --quick --graphs --device cuda --json "$scratch/smoke.json" ;;
    aggregate)  # the payloads in pinned memory, as rank 0 receives them: one copy of each chunk's rows
        "$py" bench/aggregate.py --device cuda --models cnn4-mnist resnet10 --clients 1000 --repeats 3 \
            --json "$out/aggregate.json" ;;
    graphs) "$py" bench/step_graphs.py --device cuda --compile --json "$out/graphs.json" ;;
    grouping) "$py" bench/grouping.py --graphs --device cuda "${real_fmnist[@]}" ${FEDBAT_GROUPING_CASES:+--cases $FEDBAT_GROUPING_CASES} \
        --json "$out/grouping.json" ;;
    agreement) "$py" bench/agreement.py --device cuda --data-dir "${FEDBAT_FMNIST_DIR:-/usr/share/datasets}" \
        --json "$out/agreement.json" ;;
    cost) "$py" bench/study_cost.py --device cuda --json "$out/cost.json" ;;
    check)
        bash bench/gpu_check.sh "$scratch/check"
        local checked=$?
        cp "$scratch/check/scaling-gpu.json" "$out/check.json" || checked=1
        return "$checked" ;;
    determinism) bash bench/gpu_check.sh "$scratch/determinism" determinism ;;
    esac
}

logged_part() {  # a part with its output in $out/PART.txt, the last lines and its seconds on stdout
    local start=$SECONDS
    run_part "$1" 2>&1 | tee "$out/$1.txt" | tail -n 40
    local failed=${PIPESTATUS[0]}
    [ "$failed" = 0 ] || echo "part $1 failed" | tee -a "$out/$1.txt" >&2
    echo "part $1: $((SECONDS - start)) s"
    return "$failed"
}

status=0
for group in "${parts[@]}"; do
    if [[ $group != *+* ]]; then
        logged_part "$group" || status=1
        continue
    fi
    pids=()
    for part in ${group//+/ }; do
        logged_part "$part" >"$scratch/$part.tail" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=1; done
    for part in ${group//+/ }; do cat "$scratch/$part.tail"; done
done
exit "$status"
