#!/usr/bin/env bash
# The server step sizes of the classical sign baselines (docs/RESULTS.md, "Server step sizes"): a small
# sweep on the embedded default run (40 IID clients, 8 a round, 2 local epochs, batch 32, lr 0.1) for
# 10 rounds, seed 0, 2 ranks:
#   signsgd-mv:   --mv-server-lr 1e-3 3e-3 1e-2
#   z-signfedavg: --z-server-lr 1 2 4 at --z-sigma 0.01, z = inf
# Usage, from the repository root with the environment active:
#   bash docs/results/sweep_server_lr.sh && python -m fedbat_mpi.summary runs/sweep/* --target 0.7
set -euo pipefail
out=${OUT:-runs/sweep}
ranks=${RANKS:-2}
run() {  # NAME OPTION...
    [ -f "$out/$1/checkpoint.h5" ] && return
    mpirun -n "$ranks" python -m fedbat_mpi.run --rounds 10 --checkpoint-every 0 --out "$out/$1" "${@:2}" | tail -n 7
}
for lr in 1e-3 3e-3 1e-2; do run "signsgd-mv-lr$lr" --algorithm signsgd-mv --mv-server-lr "$lr"; done
for lr in 1 2 4; do run "z-signfedavg-lr$lr" --algorithm z-signfedavg --z-sigma 0.01 --z-server-lr "$lr"; done
