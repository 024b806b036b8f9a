# Sourced by the GPU scripts: sets $py to a Python with fedbat_mpi's needs and $mpirun beside it.
# Uses .venv/ when it exists; otherwise the machine's python3 (with torch) plus the mpi4py and MPICH
# wheels from .whl/ (see bench/README.md).
if [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    # A venv that sees python3's own packages (torch) through a .pth file, with MPI wheels on top; made
    # once: gpu_check.sh sources this again, maybe while other parts of gpu_session.sh run from it.
    py=/tmp/fedbat-venv/bin/python
    if ! "$py" -c "import mpi4py, torch" 2>/dev/null; then
        python3 -m venv /tmp/fedbat-venv
        python3 -c "import site; print('\n'.join(site.getsitepackages()))" \
            >"$("$py" -c "import site; print(site.getsitepackages()[0])")/machine-packages.pth"
        "$py" -m pip install -q --no-index --no-deps .whl/*.whl
    fi
fi
mpirun=$(dirname "$py")/mpirun
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
