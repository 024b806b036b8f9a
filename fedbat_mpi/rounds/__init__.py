"""The round loop that every rank runs: set-up, client sampling, the rounds, stop signals.

Kept free of imports: ``fedbat_mpi.run`` installs the stop-signal handlers from ``signals`` before
torch and MPI are loaded.
"""
