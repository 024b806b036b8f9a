"""The real ``jobs/cifar100.slurm`` on a real single-node Slurm: stopped by a signal, requeued and resumed;
cancelled; at its time limit, then resubmitted; each time ending with the model of a run never stopped.
And the real ``jobs/study.slurm``: a grid of two runs as a job array.

The script is submitted as a user would, changed only through ``sbatch`` options and FEDBAT_*
variables: 2 tasks on the 2-CPU node (``--overcommit``), no GPUs (``--gpus-per-task=0`` overrides
the script's 1), the test's Python, and a tiny run of the embedded data on top of the CIFAR-100 preset.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedbat_mpi.testing.launch import command, environment, metrics, without_timings

from . import slurm_cluster

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


@pytest.fixture(autouse=True)
def no_job_left_behind(request):
    """A test of the cluster that fails mid-job leaves no job running into the next test; a test
    without the cluster does not start (or skip for the lack of) one."""
    yield
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").cancel_jobs()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cluster) -> list[dict]:
    """The same run without Slurm and without a stop. Made while no job runs: MPICH's ranks poll while
    they wait, and four of them on two cores make every round several times slower."""
    out = tmp_path_factory.mktemp("uninterrupted")
    line = command(2, ["--preset", "cifar100-dir0.1", *TINY.split(), "--out", str(out)])
    done = subprocess.run(line, check=False, capture_output=True, text=True, timeout=300, env=environment())
    assert done.returncode == 0, done.stdout + done.stderr
    rows = metrics(out)
    assert [row["round"] for row in rows] == list(range(1, ROUNDS + 1))
    return without_timings(rows)


def submit(cluster, submit_dir: Path, fedbat_args: str, **env: str) -> str:
    """``sbatch jobs/cifar100.slurm`` from ``submit_dir``; the job id."""
    env = dict(cluster.env, FEDBAT_HOME=str(REPO), FEDBAT_PYTHON=sys.executable, FEDBAT_LAUNCHER="srun",
               FEDBAT_ARGS=fedbat_args, **env)  # fmt: skip
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


def run_folder(submit_dir: Path, job_id: str) -> Path:
    return submit_dir / "runs" / f"fedbat-cifar100-{job_id}"  # FEDBAT_OUT's default


def wait_for_rounds(cluster, submit_dir: Path, job_id: str, out: Path, rounds: int) -> None:
    def done():
        path = out / "metrics.jsonl"
        return path.exists() and len(path.read_text().splitlines()) >= rounds

    wait_for_job(cluster, submit_dir, job_id, f"{rounds} rounds done", done, timeout=180)


def stopped_after(output: str) -> int:
    """The round after which the ranks stopped for a signal, from the job's output."""
    return int(output.split("stop signal received: checkpoint after round ")[1].split()[0])


def assert_resumed_to_the_uninterrupted_model(out: Path, uninterrupted: list[dict], why: str) -> None:
    rows = metrics(out)
    assert [row["round"] for row in rows] == list(range(1, ROUNDS + 1)), why
    assert rows[-1]["model_sha256"] == uninterrupted[-1]["model_sha256"], why
    assert without_timings(rows) == uninterrupted, why


@pytest.mark.parametrize("signal_options", [
    ["--signal=USR1"],  # to the job steps (the ranks), as --signal=USR1@180 does
    ["--batch", "--signal=USR1"],  # to the batch shell alone, as --signal=B:USR1@180 does; it passes it on
], ids=["to-the-ranks", "to-the-batch-shell"])  # fmt: skip
def test_preempted_job_checkpoints_requeues_and_resumes_to_the_uninterrupted_model(
    cluster, uninterrupted, tmp_path, signal_options
):
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    job_id = submit(cluster, submit_dir, TINY)
    out = run_folder(submit_dir, job_id)
    wait_for_rounds(cluster, submit_dir, job_id, out, 2)
    cluster.run("scancel", *signal_options, job_id)

    # The ranks stop after the round they are in, checkpoint and exit 75; the script requeues the job.
    # Slurm holds a requeued job back for about cred_expire (5 s here), so the checkpoint is still
    # the one of the stop when we look at it (or a later one, should the job already run again).
    def requeued():
        return f"requeued job {job_id}" in job_output(submit_dir, job_id)

    wait_for_job(cluster, submit_dir, job_id, "the requeue", requeued, timeout=90)
    output = job_output(submit_dir, job_id)
    why = explain(cluster, submit_dir, job_id)
    assert ("job script received SIGUSR1" in output) == ("--batch" in signal_options), why
    assert "fedbat_mpi.run exited with status 75" in output, why
    stopped = stopped_after(output)
    assert 2 <= stopped < ROUNDS, why
    assert inspect_checkpoint(out)[0] >= stopped, why

    job = wait_until_ended(cluster, submit_dir, job_id, timeout=150)
    output = job_output(submit_dir, job_id)
    why = explain(cluster, submit_dir, job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", why
    assert job["Restarts"] == "1", why
    starts = [line for line in output.splitlines() if "fedbat_mpi.run --preset" in line]
    assert len(starts) == 2 and "(start 2)" in starts[1], why
    assert not starts[0].endswith("--resume") and starts[1].endswith("--resume"), why
    assert f"resuming after round {stopped}" in output, why
    assert inspect_checkpoint(out) == (ROUNDS, ROUNDS), why
    assert_resumed_to_the_uninterrupted_model(out, uninterrupted, why)


def test_cancelled_job_checkpoints_and_stays_cancelled(cluster, tmp_path):
    job_id = submit(cluster, tmp_path, TINY)
    out = run_folder(tmp_path, job_id)
    wait_for_rounds(cluster, tmp_path, job_id, out, 2)
    cluster.run("scancel", job_id)  # SIGTERM to every process of the job, once; SIGKILL after KillWait

    # The ranks finish their round within KillWait, checkpoint and exit 75; the script, which got SIGTERM
    # too, must not requeue the job: that would undo the scancel.
    job = wait_until_ended(cluster, tmp_path, job_id, timeout=slurm_cluster.KILL_WAIT_S + 60)
    output = job_output(tmp_path, job_id)
    why = explain(cluster, tmp_path, job_id)
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), why
    assert "job script received SIGTERM" in output and "this script does not requeue it" in output, why
    assert f"resubmit with FEDBAT_OUT={out} to resume" in output, why
    assert "fedbat_mpi.run exited with status 75" in output and "requeued job" not in output, why
    assert inspect_checkpoint(out)[0] == stopped_after(output), why


def test_job_at_its_time_limit_is_not_requeued_and_resubmitted_resumes_to_the_uninterrupted_model(
    cluster, uninterrupted, tmp_path
):
    job_id = submit(cluster, tmp_path, TINY)
    out = run_folder(tmp_path, job_id)
    wait_for_rounds(cluster, tmp_path, job_id, out, 2)
    # The ranks are held (SIGSTOP), as by a long round, so that the run is still going when slurmctld,
    # which checks time limits every 30 s, ends the job: SIGCONT and SIGTERM to every process of it.
    cluster.run("scancel", "--signal=STOP", job_id)
    cluster.run("scontrol", "update", f"JobId={job_id}", "EndTime=now")
    # Each rank gets SIGTERM twice, milliseconds apart (and the job's --signal USR1): one stop request,
    # so the ranks finish their round, checkpoint and exit 75 within KillWait.
    job = wait_until_ended(cluster, tmp_path, job_id, timeout=slurm_cluster.KILL_WAIT_S + 90)
    output = job_output(tmp_path, job_id)
    why = explain(cluster, tmp_path, job_id)
    assert (job["JobState"], job["Restarts"]) == ("TIMEOUT", "0"), why
    assert "DUE TO TIME LIMIT" in output and "job script received SIGTERM" in output, why
    assert "this script does not requeue it" in output and "requeued job" not in output, why
    assert f"resubmit with FEDBAT_OUT={out} to resume" in output, why
    assert "fedbat_mpi.run exited with status 75" in output, why
    stopped = inspect_checkpoint(out)[0]
    assert stopped == stopped_after(output) and 2 <= stopped < ROUNDS, why

    # Resubmitted as the job's output says: a new job that resumes from the checkpoint left.
    second = submit(cluster, tmp_path, TINY, FEDBAT_OUT=str(out))
    job = wait_until_ended(cluster, tmp_path, second, timeout=150)
    output = job_output(tmp_path, second)
    why = explain(cluster, tmp_path, second)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), why
    assert output.splitlines()[0].endswith("--resume") and f"resuming after round {stopped}" in output, why
    assert_resumed_to_the_uninterrupted_model(out, uninterrupted, why)


def test_job_exits_with_the_programs_status(cluster, tmp_path):
    job_id = submit(cluster, tmp_path, "--rounds -1")
    job = wait_until_ended(cluster, tmp_path, job_id, timeout=60)
    why = explain(cluster, tmp_path, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "2:0", "0"), why
    assert "--rounds: expected a positive integer, got -1" in job_output(tmp_path, job_id), why


def test_study_array_runs_each_run_of_the_grid_in_its_own_task(cluster, tmp_path):
    folder = tmp_path / "study"
    grid = tmp_path / "grid.yaml"
    base = {"dataset": "embedded", "model": "cnn4-mnist", "num-clients": 32, "clients-per-round": 4,
            "local-epochs": 1, "batch-size": 64, "eval-batch-size": 1000, "rounds": 2}  # fmt: skip
    grid.write_text(yaml.safe_dump({"out": str(folder), "base": base, "grid": {"seed": [0, 1]}}))
    counted = subprocess.run([sys.executable, "-m", "fedbat_mpi.study", str(grid), "--count"], check=False,
                             capture_output=True, text=True, timeout=60, env=environment())  # fmt: skip
    assert counted.stdout == "2\n", counted.stdout + counted.stderr
    env = dict(cluster.env, FEDBAT_HOME=str(REPO), FEDBAT_PYTHON=sys.executable, FEDBAT_LAUNCHER="srun")
    done = cluster.run("sbatch", "--parsable", "--array=0-1", "--ntasks=1", "--gpus-per-task=0", "--cpus-per-task=1",
                       "--time=10", str(REPO / "jobs" / "study.slurm"), str(grid), cwd=tmp_path, env=env)  # fmt: skip
    array_id = done.stdout.strip().split(";")[0]
    for task in (0, 1):
        job_id = f"{array_id}_{task}"
        output = tmp_path / f"fedbat-study-{job_id}.out"

        def details(output=output):
            return output.read_text(errors="replace") if output.exists() else "(no job output yet)"

        def ended(job_id=job_id):
            job = cluster.job(job_id)
            return job if job["JobState"] in ENDED else None

        job = cluster.wait_for(f"array task {job_id} to end", ended, timeout=150, details=details)
        why = f"\n--- array task {job_id} output\n{details()}\n{cluster.logs()}"
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), why
        assert f"array task {task} of job {array_id}" in details(), why
        assert f"seed{task}: finished" in details() and "fedbat_mpi.study exited with status 0" in details(), why
        assert f"srun {sys.executable} -m fedbat_mpi.run" in (folder / f"seed{task}" / "run.log").read_text(), why
    assert [row["round"] for row in metrics(folder / "seed0")] == [1, 2]
    assert metrics(folder / "seed0")[-1]["model_sha256"] != metrics(folder / "seed1")[-1]["model_sha256"]


@pytest.mark.parametrize("given", ["--out elsewhere", "--resume", "--out=elsewhere"])
def test_fedbat_args_may_not_set_the_folder_or_the_resume_the_job_script_manages(tmp_path, given):
    """Refused before anything runs (no Slurm needed): a requeued job must find its checkpoint in FEDBAT_OUT."""
    done = subprocess.run(["bash", str(REPO / "jobs" / "fmnist.slurm")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=environment(SLURM_SUBMIT_DIR=str(tmp_path), FEDBAT_HOME=str(REPO),
                                                      FEDBAT_ARGS=f"--rounds 2 {given}"))  # fmt: skip
    flag = given.split()[0].split("=")[0]
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"FEDBAT_ARGS: {flag} is set by the job script (the folder by FEDBAT_OUT; "
                                        "it resumes by itself)"]  # fmt: skip
    assert list(tmp_path.iterdir()) == []
