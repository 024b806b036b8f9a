"""The real ``jobs/cifar100.slurm`` on a real single-node Slurm: preempted, requeued, resumed, same model.

The script is submitted as a user would, changed only through ``sbatch`` options and FEDBAT_*
variables: 2 tasks on the 2-CPU node (``--overcommit``), no GPUs (``--gpus-per-task=0`` overrides
the script's 1), the test's Python, and a tiny run of the embedded data on top of the CIFAR-100 preset.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import slurm_cluster
from .launch import command, environment, metrics, without_timings

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 6
TINY = ("--dataset embedded --model cnn4-mnist --num-clients 32 --clients-per-round 4 --local-epochs 1 "
        f"--batch-size 64 --eval-batch-size 1000 --rounds {ROUNDS} --checkpoint-every 1")  # fmt: skip
SBATCH_OPTIONS = ["--ntasks=2", "--overcommit", "--gpus-per-task=0", "--cpus-per-task=1", "--time=10"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster.running(tmp_path_factory.mktemp("slurm")) as started:
        yield started


def submit(cluster, submit_dir: Path, fedbat_args: str) -> str:
    """``sbatch jobs/cifar100.slurm`` from ``submit_dir``; the job id."""
    env = dict(cluster.env, FEDBAT_HOME=str(REPO), FEDBAT_PYTHON=sys.executable, FEDBAT_LAUNCHER="srun",
               FEDBAT_ARGS=fedbat_args)  # fmt: skip
    done = cluster.run("sbatch", "--parsable", *SBATCH_OPTIONS, str(REPO / "jobs" / "cifar100.slurm"),
                       cwd=submit_dir, env=env)  # fmt: skip
    return done.stdout.strip().split(";")[0]


def job_output(submit_dir: Path, job_id: str) -> str:
    path = submit_dir / f"fedbat-cifar100-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no job output yet)"


def inspect_checkpoint(out: Path) -> tuple[int, int]:
    """(round, rounds) of ``out/checkpoint.h5``, read by ``python -m fedbat_mpi.checkpoint``."""
    inspected = subprocess.run([sys.executable, "-m", "fedbat_mpi.checkpoint", str(out / "checkpoint.h5")],
                               check=False, capture_output=True, text=True, timeout=60, env=environment())  # fmt: skip
    found = re.search(r"^  round (\d+) of (\d+)$", inspected.stdout, re.MULTILINE)
    assert found, f"python -m fedbat_mpi.checkpoint: {inspected.stdout}{inspected.stderr}"
    return int(found[1]), int(found[2])


def explain(cluster, submit_dir: Path, job_id: str) -> str:
    """What to look at when a check fails: the job's output and the daemons' logs."""
    return f"\n--- job {job_id} output\n{job_output(submit_dir, job_id)}\n{cluster.logs()}"


def wait_for_job(cluster, submit_dir: Path, job_id: str, what: str, ready, timeout: float):
    """``cluster.wait_for`` that shows the job's output when it times out."""
    return cluster.wait_for(
        f"{what} (job {job_id})", ready, timeout, details=lambda: job_output(submit_dir, job_id)
    )


def wait_until_ended(cluster, submit_dir: Path, job_id: str, timeout: float) -> dict[str, str]:
    def ended():
        job = cluster.job(job_id)
        return job if job["JobState"] in ENDED else None

    return wait_for_job(cluster, submit_dir, job_id, "the job to end", ended, timeout)


def test_preempted_job_checkpoints_requeues_and_resumes_to_the_uninterrupted_model(cluster, tmp_path):
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    job_id = submit(cluster, submit_dir, TINY)
    out = submit_dir / "runs" / f"fedbat-cifar100-{job_id}"  # FEDBAT_OUT's default

    def two_rounds_done():
        path = out / "metrics.jsonl"
        return path.exists() and len(path.read_text().splitlines()) >= 2

    wait_for_job(cluster, submit_dir, job_id, "2 rounds done", two_rounds_done, timeout=120)
    cluster.run("scancel", "--signal=USR1", job_id)  # to the job steps, as --signal=USR1@180 does

    # The ranks stop after the round they are in, checkpoint and exit 75; the script requeues the job.
    # Slurm holds a requeued job back for about cred_expire (5 s here), so the checkpoint is still
    # the one of the stop when we look at it (or a later one, should the job already run again).
    def requeued():
        return f"requeued job {job_id}" in job_output(submit_dir, job_id)

    wait_for_job(cluster, submit_dir, job_id, "the requeue", requeued, timeout=90)
    output = job_output(submit_dir, job_id)
    why = explain(cluster, submit_dir, job_id)
    assert "fedbat_mpi.run exited with status 75" in output, why
    stopped_after = int(output.split("stop signal received: checkpoint after round ")[1].split()[0])
    assert 2 <= stopped_after < ROUNDS, why
    assert inspect_checkpoint(out)[0] >= stopped_after, why

    job = wait_until_ended(cluster, submit_dir, job_id, timeout=150)
    output = job_output(submit_dir, job_id)
    why = explain(cluster, submit_dir, job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", why
    assert job["Restarts"] == "1", why
    starts = [line for line in output.splitlines() if "fedbat_mpi.run --preset" in line]
    assert len(starts) == 2 and "(start 2)" in starts[1], why
    assert not starts[0].endswith("--resume") and starts[1].endswith("--resume"), why
    assert f"resuming after round {stopped_after}" in output, why
    assert inspect_checkpoint(out) == (ROUNDS, ROUNDS), why

    # The same run without Slurm and without a stop. Not alongside the job: MPICH's ranks poll
    # while they wait, and four of them on two cores make every round several times slower.
    reference_out = tmp_path / "uninterrupted"
    reference = subprocess.run(
        command(2, ["--preset", "cifar100-dir0.1", *TINY.split(), "--out", str(reference_out)]),
        check=False, capture_output=True, text=True, timeout=120, env=environment(),
    )  # fmt: skip
    assert reference.returncode == 0, reference.stdout + reference.stderr
    resumed_rows, reference_rows = metrics(out), metrics(reference_out)
    assert [row["round"] for row in resumed_rows] == list(range(1, ROUNDS + 1)), why
    assert resumed_rows[-1]["model_sha256"] == reference_rows[-1]["model_sha256"], why
    assert without_timings(resumed_rows) == without_timings(reference_rows), why


def test_job_exits_with_the_programs_status(cluster, tmp_path):
    job_id = submit(cluster, tmp_path, "--rounds -1")
    job = wait_until_ended(cluster, tmp_path, job_id, timeout=60)
    why = explain(cluster, tmp_path, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "2:0", "0"), why
    assert "--rounds: expected a positive integer, got -1" in job_output(tmp_path, job_id), why
