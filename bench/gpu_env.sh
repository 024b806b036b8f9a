# Sourced by the GPU scripts: sets $py to a Python with fedbat_mpi's needs and $mpirun beside it.
# Uses .venv/ when it exists; otherwise the machine's python3 (with torch) plus the mpi4py and MPICH
# wheels from .whl/ (see bench/README.md).
if [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    # A venv that sees python3's own packages (torch) through a .pth file, with MPI wheels on top; made
    # once: gpu_check.sh sources this again, maybe while other parts of gpu_session.sh run from it.
    # No pip inside it (the machine's Python may lack ensurepip): python3's pip installs into it. The
    # check imports MPI and finds mpirun: the machine's own mpi4py, seen through the .pth, has neither.
    py=/tmp/fedbat-venv/bin/python
    if ! { [ -x /tmp/fedbat-venv/bin/mpirun ] && "$py" -c "from mpi4py import MPI; import torch" 2>/dev/null; }; then
        python3 -m venv --without-pip /tmp/fedbat-venv || return 1
        python3 -c "import site; print('\n'.join(site.getsitepackages()))" \
            >"$("$py" -c "import site; print(site.getsitepackages()[0])")/machine-packages.pth"
        python3 -m pip install -q --no-index --no-deps --prefix /tmp/fedbat-venv .whl/*.whl \
            || { echo "gpu_env.sh: cannot install .whl/ (mpi4py and mpich wheels for this Python?)" >&2; return 1; }
        "$py" -c "from mpi4py import MPI" && [ -x /tmp/fedbat-venv/bin/mpirun ] \
            || { echo "gpu_env.sh: mpi4py or mpirun missing after installing .whl/" >&2; return 1; }
    fi
fi
mpirun=$(dirname "$py")/mpirun
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
