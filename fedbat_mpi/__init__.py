"""FedBAT (learnable binarized model updates) and its baselines, simulated over MPI."""

__version__ = "0.1.0"
