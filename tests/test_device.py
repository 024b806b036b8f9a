"""``--device``: which device each option gives, and the errors of the CUDA paths (no GPU needed)."""

import pytest
import torch

from fedbat_mpi.client.device import choose_device, select_device
from fedbat_mpi.errors import UsageError


@pytest.mark.parametrize(
    "option,local_rank,available,count,expected",
    [
        ("cpu", 3, True, 4, "cpu"),
        ("auto", 3, False, 0, "cpu"),
        ("auto", 0, True, 4, "cuda:0"),
        ("auto", 5, True, 4, "cuda:1"),  # ranks of a node share its GPUs round robin
        ("cuda", 7, True, 2, "cuda:1"),
        ("cuda:3", 0, True, 4, "cuda:3"),  # an explicit GPU ignores the local rank
        ("cuda:01", 0, True, 4, "cuda:1"),
    ],
)
def test_each_option_names_its_device(option, local_rank, available, count, expected):
    assert choose_device(option, local_rank, available, count) == torch.device(expected)


@pytest.mark.parametrize(
    "option,available,count,message",
    [
        ("cuda", False, 0, "--device: cuda requested but CUDA is not available on this node"),
        ("cuda:0", False, 0, "--device: cuda:0 requested but CUDA is not available on this node"),
        ("cuda", True, 0, "--device: cuda requested but CUDA is not available on this node"),
        ("cuda:2", True, 2, "--device: cuda:2 but only 2 GPUs are visible"),
        ("cuda:99999999999999999999", True, 2, "--device: cuda:99999999999999999999 but only 2 GPUs are visible"),
    ],
)
def test_cuda_requests_the_node_cannot_meet_are_usage_errors(option, available, count, message):
    with pytest.raises(UsageError) as error:
        choose_device(option, 0, available, count)
    assert str(error.value) == message


def test_select_device_on_this_machine():
    assert select_device("cpu", 0) == torch.device("cpu")
    if torch.cuda.is_available():
        assert select_device("cuda", 0).type == "cuda" and torch.backends.cudnn.deterministic
    else:
        assert select_device("auto", 0) == torch.device("cpu")
        with pytest.raises(UsageError, match="CUDA is not available"):
            select_device("cuda", 0)
