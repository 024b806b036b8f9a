"""The torch device of a rank: its node-local share of the GPUs, or the CPU."""

import torch

from .errors import UsageError


def select_device(option: str, local_rank: int) -> torch.device:
    """``--device``: ``auto`` takes ``cuda:(local_rank % #GPUs)`` when CUDA works, else the CPU."""
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device: {option} requested but CUDA is not available on this node")
    if option in ("auto", "cuda"):
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = torch.device(option)
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {option} but only {torch.cuda.device_count()} GPUs are visible")
    torch.cuda.set_device(device)
    torch.backends.cudnn.deterministic = True  # same model for any number of ranks on GPUs too
    torch.backends.cudnn.benchmark = False
    return device
