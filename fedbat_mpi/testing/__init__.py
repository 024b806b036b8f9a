"""What the tests (``tests/``) and the benchmarks (``bench/``) share, as ``numpy.testing`` is to numpy.

- :mod:`~fedbat_mpi.testing.launch`: the ``mpirun`` beside this Python, the command line and environment
  of a run, launching one, and reading its ``metrics.jsonl``;
- :mod:`~fedbat_mpi.testing.payloads`: a model's layout, deterministic client payloads, and the server
  step written out per tensor in float64 (the reference the aggregation is checked against);
- :mod:`~fedbat_mpi.testing.formats`: small data sets written in each official file format (IDX,
  MATLAB v5, the CIFAR binary batches and python pickles).

Import the module you need: this package imports none of them, so that launching a run does not import
torch. Nothing here imports pytest: a missing prerequisite raises an error, which a test reports as its
failure and a benchmark as its exit message.
"""
