#!/usr/bin/env bash
# Every test: the lint (ruff) and the type check (mypy), their settings in pyproject.toml: the package
# with every function annotated, bench/ and tests/ (one mypy run, ~50 s) with every body checked (bench's
# scripts drive the GPU measurements, whose CUDA-only branches no CPU test runs); the serial suite (which
# also launches end-to-end runs through mpirun); then the pytest-mpi suite on 2 and on 4 ranks. Skips are listed
# with their reasons (-rs); with FEDBAT_NO_SKIPS=1 a skip fails the run (tests/conftest.py).
# Usage: tests/run_all.sh [PYTHON] [MPIRUN]
set -euo pipefail
py=${1:-.venv/bin/python}
mpirun=${2:-$(dirname "$py")/mpirun}
export OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
"$py" -m ruff check --no-cache fedbat_mpi bench tests
"$py" -m mypy --cache-dir=/dev/null
"$py" -m mypy --cache-dir=/dev/null --allow-untyped-defs --allow-incomplete-defs bench tests
"$py" -m pytest -q -rs -p no:cacheprovider -m "not mpi" tests
for ranks in 2 4; do
    echo "== pytest-mpi on $ranks ranks"
    timeout 900 "$mpirun" -n "$ranks" "$py" -m mpi4py -m pytest -q -rs -p no:cacheprovider --color=no \
        --with-mpi -m mpi tests
done
