#!/usr/bin/env bash
# --client-group on one GPU: client updates per second of one rank training 16 clients a round one
# after another (group 1) or 4, 8, 16 at once, FedBAT and FedAvg on the embedded data, and the final
# accuracy of each (grouping changes only float rounding). Usage: bench/gpu_group.sh [OUT_DIR]
set -euo pipefail
out=${1:-${OUT:-/tmp/fedbat-gpu-group}}
mkdir -p "$out"
source bench/gpu_env.sh || exit 1
for algorithm in fedbat fedavg; do
    for group in 1 4 8 16; do
        run=$out/$algorithm-$group
        "$mpirun" -n 1 "$py" -m fedbat_mpi.run --device cuda --algorithm "$algorithm" --clients-per-round 16 \
            --rounds 6 --client-group "$group" --checkpoint-every 0 --out "$run" >/dev/null
        "$py" - "$run" "$algorithm" "$group" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
timed = rows[1:]  # round 1 is warm-up
seconds = sum(r["time_s"] for r in timed)
train = sum(r["phase_s"]["train"] for r in timed)
updates = sum(len(r["clients"]) for r in timed)
print(f"{sys.argv[2]:7s} group {int(sys.argv[3]):2d}: {updates / seconds:6.1f} updates/s "
      f"({updates / train:6.1f} counting training only), final test_acc {100 * rows[-1]['test_acc']:.2f}%")
PY
    done
done
