#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one short script (a few minutes):
#   1. 1 and 2 ranks sharing one GPU give the same model_sha256 and metrics (determinism on CUDA);
#   2. wall time of the embedded default on 8 ranks sharing the GPU, and on 1 rank;
#   3. client updates per second with 1, 2, 4 and 8 ranks sharing the GPU (bench/scaling.py).
# Usage: bench/gpu_check.sh [OUT_DIR] (environment: bench/gpu_env.sh).
set -euo pipefail
out=${1:-${OUT:-/tmp/fedbat-gpu-check}}
mkdir -p "$out"
source bench/gpu_env.sh
"$py" -c "import torch, mpi4py; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'mpi4py', mpi4py.__version__)"

tiny=(--num-clients 40 --clients-per-round 8 --local-epochs 1 --rounds 3 --device cuda)
for ranks in 1 2; do
    "$mpirun" -n "$ranks" "$py" -m fedbat_mpi.run "${tiny[@]}" --out "$out/tiny-$ranks" | tail -n 3
done
"$py" - "$out" <<'PY'
import json, sys
rows = {n: [json.loads(l) for l in open(f"{sys.argv[1]}/tiny-{n}/metrics.jsonl")] for n in (1, 2)}
strip = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "phase_s")}
same = [strip(a) == strip(b) for a, b in zip(rows[1], rows[2])]
print("cuda: 1 vs 2 ranks identical rows:", same)
PY
for ranks in 8 1; do
    start=$(date +%s.%N)
    "$mpirun" -n "$ranks" "$py" -m fedbat_mpi.run --device cuda --out "$out/default-$ranks" | tail -n 6
    echo "default on $ranks rank(s) sharing one GPU: $(awk "BEGIN {print $(date +%s.%N) - $start}") s wall"
done
"$py" bench/scaling.py --ranks 1 2 4 8 --device cuda --clients-per-round 16 --rounds 4 --json "$out/scaling-gpu.json"
