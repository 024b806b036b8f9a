"""The suite's own rule (tests/conftest.py): with FEDBAT_NO_SKIPS=1 a skipped test fails, with its reason."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING = '''
import pytest

def test_needs_something_missing():
    pytest.skip("tool X is not installed")

def test_passes():
    pass
'''


@pytest.mark.parametrize("no_skips,status", [("1", 1), ("0", 0)])
def test_a_skip_fails_the_run_only_when_no_skips_are_allowed(tmp_path, no_skips, status):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_example.py").write_text(SKIPPING)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=dict(os.environ, FEDBAT_NO_SKIPS=no_skips))  # fmt: skip
    assert done.returncode == status, done.stdout
    assert "tool X is not installed" in done.stdout  # the reason is printed either way
