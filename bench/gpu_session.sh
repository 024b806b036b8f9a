#!/usr/bin/env bash
# Every GPU figure the open issues still need, on one GPU, in parts (each part a few minutes on an H100):
#   grouping   bench/grouping.py: issue 8's targets (fmnist-iid / dir0.3 per algorithm grouped and one
#              at a time, 1,000 clients a round, the ResNet-10 speed-up), about 5 minutes;
#   aggregate  bench/aggregate.py --device cuda: issue 9's server step on the GPU (1,000 CNN4-MNIST and
#              1,000 ResNet-10 payloads), about 1 minute;
#   cost       bench/study_cost.py: issue 10's steady rounds of the SVHN/CIFAR presets and the cost of
#              the grid on a node of 8 GPUs, about 4 minutes;
#   check      bench/gpu_check.sh: determinism on CUDA (fails when 1/2/4-rank runs differ), 2 minutes.
# Usage: bench/gpu_session.sh OUT_DIR [PART...] (default: every part; on a device lent for 10 minutes a
# call, run "grouping aggregate" and "cost check" as two calls). Packs OUT_DIR/records into
# OUT_DIR/gpu-session-PARTS.tar.gz; exits 1 when a part failed.
set -uo pipefail
out=${1:-${OUT:-/tmp/fedbat-gpu-session}}
shift || true
parts=("${@:-grouping aggregate cost check}")
read -r -a parts <<<"${parts[*]}"
mkdir -p "$out/records"
source bench/gpu_env.sh
status=0
for part in "${parts[@]}"; do
    case $part in
    grouping) "$py" bench/grouping.py --device cuda --json "$out/records/grouping.json" ;;
    aggregate) "$py" bench/aggregate.py --device cuda --models cnn4-mnist resnet10 --clients 1000 --repeats 3 \
        --json "$out/records/aggregate-cuda.json" ;;
    cost) "$py" bench/study_cost.py --device cuda --json "$out/records/study_cost.json" ;;
    check) bash bench/gpu_check.sh "$out/records/check" ;;
    *) echo "gpu_session.sh: unknown part $part (grouping, aggregate, cost, check)" >&2; exit 2 ;;
    esac >"$out/records/$part.txt" 2>&1 || { status=1; echo "part $part failed" >&2; }
    tail -n 20 "$out/records/$part.txt"
done
tar -czf "$out/gpu-session-$(IFS=-; echo "${parts[*]}").tar.gz" -C "$out" records
exit "$status"
