"""The server side, on rank 0: aggregation, checkpoints and the run's reports."""
