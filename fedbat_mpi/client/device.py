"""The torch device of a rank: its node-local share of the GPUs, or the CPU."""

import torch

from fedbat_mpi.errors import UsageError


def choose_device(option: str, local_rank: int, cuda_available: bool, gpu_count: int) -> torch.device:
    """The device ``--device option`` names on a node with ``gpu_count`` usable GPUs.

    ``auto`` takes ``cuda:(local_rank % #GPUs)`` when CUDA works, else the CPU; ``cuda`` does the
    same but refuses a node without CUDA; ``cuda:N`` must name a visible GPU.
    """
    if option == "cpu" or (option == "auto" and not cuda_available):
        return torch.device("cpu")
    if not cuda_available or gpu_count < 1:
        raise UsageError(f"--device: {option} requested but CUDA is not available on this node")
    if option in ("auto", "cuda"):
        return torch.device("cuda", local_rank % gpu_count)
    index = int(option.partition(":")[2])  # validated as cuda:DIGITS ("cuda:01" is GPU 1)
    if index >= gpu_count:
        raise UsageError(f"--device: {option} but only {gpu_count} GPUs are visible")
    return torch.device("cuda", index)


def select_device(option: str, local_rank: int) -> torch.device:
    """This rank's device for ``--device option``; on a GPU, made current with deterministic cuDNN.
    cuDNN's convolutions keep PyTorch's default float32 precision, TF32 (README, "What is guaranteed")."""
    available = torch.cuda.is_available()
    device = choose_device(option, local_rank, available, torch.cuda.device_count() if available else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = True  # same model for any number of ranks on GPUs too
        torch.backends.cudnn.benchmark = False
    return device


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of convolution tensors on ``device``: channels-last on the CPU, where oneDNN's
    convolutions and pooling measured faster with it (BENCHMARKS.md §10);
    the default elsewhere. A layout changes float rounding, not what is computed."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def in_memory_format(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """N×C×H×W ``images`` as the device's convolutions want them. On the CPU (channels-last), one-channel
    images get explicit channels-last strides, a view of the same bytes: a one-channel tensor made
    channels-last with ``.contiguous(memory_format=...)`` keeps NCHW strides, and a convolution of it
    (its weight, one input channel, is both layouts) writes NCHW output, so the first block's
    BatchNorm and max-pooling ran in NCHW (max-pooling 13x slower there, BENCHMARKS.md §10). With
    more channels the channels-last weight decides the output's layout, and the images stay as they are."""
    n, c, h, w = images.shape
    if memory_format(device) is not torch.channels_last or c != 1:
        return images
    flat = images.contiguous()  # NCHW and NHWC are the same bytes when C = 1
    return flat.as_strided((n, c, h, w), (h * w, 1, w, 1), flat.storage_offset())
