# Quick start: `make run` (the embedded default on 8 ranks) and `make test` (every test).
# Both create .venv/ first: torch, MPI (the MPICH wheel from PyPI), mpi4py, h5py, pytest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIRUN := $(VENV)/bin/mpirun
RANKS ?= 8

.PHONY: run test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[mpich,test]'
	touch $@

run: venv
	$(MPIRUN) -n $(RANKS) $(PY) -m fedbat_mpi.run $(ARGS)

test: venv
	./tests/run_all.sh $(PY) $(MPIRUN)

clean:
	rm -rf $(VENV) runs
