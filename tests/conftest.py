"""Suite-wide rule: with ``FEDBAT_NO_SKIPS=1`` (set by ``.ci/run`` once it has installed every
prerequisite: Slurm, munge, the Fashion-MNIST package) a skipped test fails, naming its skip reason,
so that CI cannot lose a test without a sign. Also the fixtures that several test modules use."""

import os

import pytest
import torch

NO_SKIPS = os.environ.get("FEDBAT_NO_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped although FEDBAT_NO_SKIPS=1 (its prerequisites were installed): {reason}"


@pytest.fixture
def one_thread():
    """A run's one thread a rank, which decides the CPU's order of float sums (channels-last convolutions,
    a reduction over many rows) and whether the sign baselines compress in chunks of rows."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
