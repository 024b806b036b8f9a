"""End to end through ``mpirun``: a bad payload from rank 1 ends every rank, named, and nothing is saved."""

import re
from pathlib import Path

import pytest

from fedbat_mpi.server import checkpoint
from fedbat_mpi.testing.launch import TINY, launch, metrics

SCRIPT = [str(Path(__file__).with_name("send_bad_payload.py"))]

# (defect injected by send_bad_payload.py, algorithm, what rank 0's error says after naming the client)
CASES = [
    ("nan-weight", "fedbat", r"aggregation weight nan, expected a finite number > 0"),
    ("update-size", "fedbat", r"update size d = \d+, the model's binarized tensors have \d+"),
    ("duplicate", "signsgd", r"duplicate client id \(first sent at byte \d+\)"),
    ("nan-value", "fedavg", r"update value 0 is nan; the new global model would not be finite"),
    ("unsampled", "stosign", r"payloads came from clients \[.*\], the round sampled \[.*\]"),
]


@pytest.mark.parametrize(("defect", "algorithm", "cause"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_payload_from_rank_1_ends_every_rank_and_names_the_client(defect, algorithm, cause, tmp_path):
    per_round = "4" if defect == "duplicate" else "2"  # a duplicate needs two clients on rank 1
    options = ["--clients-per-round", per_round, "--checkpoint-every", "1", "--algorithm", algorithm]
    args = [*TINY, *options, "--out", str(tmp_path)]
    # mpirun returns only when every rank has ended; a rank left waiting would run into the timeout.
    done = launch(2, args, timeout=120, script=SCRIPT, BAD_PAYLOAD=defect)
    assert done.returncode == 1, done.stderr[-3000:]
    announced = re.search(r"sending a bad payload for client (\d+)", done.stderr)
    assert announced, done.stderr[-3000:]
    client = announced.group(1)
    named = rf"client {client}\)?: {cause}" if defect != "unsampled" else rf"round 2: {cause}"
    # Every rank stops together: rank 0's one line, no traceback, no MPI_Abort report. mpirun may splice
    # rank 1's announcement and rank 0's line together: what is left once the announcement is out is one line.
    # The defect's own name, not [a-z-]+: spliced, "duplicatefedbat_mpi: error" would lose "fedbat" too.
    rank_0 = re.sub(rf"sending a bad payload for client \d+: {defect}", "", done.stderr, count=1).strip()
    assert re.fullmatch(rf"fedbat_mpi: error: PayloadError: [^\n]*{named}[^\n]*", rank_0), done.stderr[-3000:]
    # Round 2 failed on rank 0 before its checkpoint: round 1's checkpoint and metrics are all there is.
    assert [row["round"] for row in metrics(tmp_path)] == [1]
    assert checkpoint.load(str(tmp_path / checkpoint.FILE_NAME)).round == 1


def test_a_run_that_diverges_ends_every_rank_with_one_line_naming_the_client(tmp_path):
    done = launch(2, [*TINY, "--algorithm", "fedavg", "--lr", "1e6", "--rounds", "3", "--out", str(tmp_path)],
                  timeout=120)  # fmt: skip
    assert done.returncode == 1
    [error] = done.stderr.splitlines()
    assert re.fullmatch(r"fedbat_mpi: error: PayloadError: client \d+: (dense|update) value \d+ is (nan|inf|-inf); "
                        r"the new global model would not be finite \(training diverged\? a lower --lr may help\)",
                        error), error  # fmt: skip


def test_a_run_diverging_under_a_server_step_size_names_that_option_too(tmp_path):
    """z-SignFedAvg's server step ``--z-server-lr`` moves the model as far as ``--lr`` does: both named."""
    options = ["--algorithm", "z-signfedavg", "--z-server-lr", "1e38", "--rounds", "3"]
    done = launch(2, [*TINY, *options, "--out", str(tmp_path)], timeout=120)
    assert done.returncode == 1
    [error] = done.stderr.splitlines()
    assert re.fullmatch(r"fedbat_mpi: error: PayloadError: client \d+: dense value \d+ is (nan|inf|-inf); "
                        r"the new global model would not be finite "
                        r"\(training diverged\? a lower --lr or --z-server-lr may help\)", error), error  # fmt: skip
