"""``rounds/heap.py``: after ``keep_freed_heap`` a step-like pattern of allocations reuses the heap
instead of faulting in fresh pages; a user's own malloc settings are left alone. Each case runs in a
fresh interpreter (the thresholds are process-wide)."""

import os
import platform
import subprocess
import sys

import pytest

from fedbat_mpi.rounds import heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")

# Ten tensors of about 6 MiB made and freed at once, as a training step's activations are, four times,
# a little larger each time (as glibc's own thresholds then hand every one to mmap and back, this is
# the case they handle worst): prints whether the thresholds were set and the minor page faults of the
# last time.
STEPS = """
import resource, sys, torch
from fedbat_mpi.rounds.heap import keep_freed_heap
tuned = keep_freed_heap() if sys.argv[1] == "tune" else False

def step(k):
    tensors = [torch.ones((6 * 2**20 + k * 2**14) // 4) for _ in range(10)]
    del tensors

for k in range(3):
    step(k)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step(3)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 10 * 6 * 2**20 // 4096  # the pages a step's tensors span


def faults_of_a_step(mode: str, **extra_env: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k not in heap.USER_SETTINGS} | extra_env
    done = subprocess.run([sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, check=True)
    tuned, faults = done.stdout.split()
    return tuned == "True", int(faults)


@glibc
def test_a_step_reuses_the_memory_the_last_one_freed():
    tuned, faults = faults_of_a_step("tune")
    assert tuned
    assert faults < PAGES // 20, f"{faults} minor faults in a step of {PAGES} pages"


@glibc
def test_without_it_glibc_hands_a_step_back_to_the_kernel():
    """What the thresholds are for: with glibc's own, every tensor of such a step is a fresh mapping."""
    tuned, faults = faults_of_a_step("default")
    assert not tuned
    assert faults > PAGES // 2


@pytest.mark.parametrize("setting", [{"MALLOC_TRIM_THRESHOLD_": "1048576"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}])  # fmt: skip
def test_the_users_own_malloc_settings_are_kept(setting):
    assert set(setting) <= set(heap.USER_SETTINGS)
    tuned, _ = faults_of_a_step("tune", **setting)
    assert not tuned
