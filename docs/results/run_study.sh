#!/usr/bin/env bash
# The results study of docs/RESULTS.md: FedBAT, FedAvg and the six sign baselines on Fashion-MNIST
# (all 60,000 / 10,000 images, from the Debian package dataset-fashion-mnist) under the paper's three
# partitions. The paper's setting (presets fmnist-iid, fmnist-dir0.3, fmnist-labels0.3: 100 clients,
# 10 a round, batch 64, lr 0.1, rho 6, phi 0.5) with 2 local epochs instead of 10 and 20 rounds
# instead of 100, to fit 2 CPU cores (about 3.5 minutes a run there).
# Usage, from the repository root with the environment active:
#   bash docs/results/run_study.sh            # then: python -m fedbat_mpi.summary / plot (see RESULTS.md)
# Re-running skips finished runs and resumes interrupted ones.
set -euo pipefail
data_dir=${DATA_DIR:-/usr/share/datasets}
out=${OUT:-runs/study}
ranks=${RANKS:-2}
for partition in iid dir0.3 labels0.3; do
    for algorithm in fedbat fedavg signsgd ef-signsgd stosign zsign signsgd-mv z-signfedavg; do
        run_dir=$out/$algorithm-$partition
        resume=()
        [ -f "$run_dir/checkpoint.h5" ] && resume=(--resume)
        mpirun -n "$ranks" python -m fedbat_mpi.run --preset "fmnist-$partition" --data-dir "$data_dir" \
            --algorithm "$algorithm" --local-epochs 2 --rounds 20 --checkpoint-every 5 --out "$run_dir" \
            "${resume[@]}" | tail -n 7
    done
done
