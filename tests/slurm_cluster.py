"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd on loopback.

Everything lives under one folder the test gives (state, spool, logs, pid files, the munge key and
socket, and the cluster's own ``slurm.conf``); the daemons find that configuration through
``SLURM_CONF``, and so do the client commands run with ``cluster.env``. Nothing in /etc or /var is
read or written. Ports are picked free at start. ``running(folder)`` starts the cluster, skips the
test (with the reason and the logs) when Slurm is not installed or cannot start here, and stops every
daemon it started, by PID, when the test ends, passed or failed.

The node has 2 CPUs and no GPUs, whatever the machine has (``config_overrides``). ``MpiDefault=pmi2``
suits the MPICH wheel (``--mpi=pmix`` does not work with it). ``cred_expire=5`` lets a requeued job
start again after seconds instead of minutes. ``KillWait=30`` (Slurm's default) leaves ranks that got
SIGTERM (scancel, time limit) the time to finish their round and checkpoint, even on a busy machine.
Job ids start at a random ``FirstJobId``: MPICH names its shared memory after the PMI2 KVS name, which
is the job and step id, so a job must not share its id with one of another test cluster running on
the machine, nor with a killed one whose segment was left in /dev/shm (MPI_Init then fails or hangs).
"""

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "sinfo")
START_TIMEOUT_S = 20
KILL_WAIT_S = 30

SLURM_CONF = """\
ClusterName=fedbat-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
MpiDefault=pmi2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
KillWait={kill_wait}
FirstJobId={first_job_id}
ReturnToService=2
MailProg=/bin/true
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """A started cluster: run client commands with ``cluster.env``; ``stop()`` ends every daemon."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._daemons: dict[str, subprocess.Popen] = {}
        self._socket_dir: str | None = None

    # --- client commands -------------------------------------------------------------------------

    def run(self, *command: str, check: bool = True, timeout: float = 30, **kwargs):
        """A Slurm client command against this cluster: its CompletedProcess, output as text."""
        kwargs.setdefault("env", self.env)
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            failure = f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}"
            raise AssertionError(f"{failure}\n{self.logs()}")
        return done

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (``JobState``, ``ExitCode``, ``Restarts``, ...)."""
        text = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def wait_for(self, what: str, ready, timeout: float, details=lambda: ""):
        """Poll ``ready()`` until it returns something true; after ``timeout`` seconds, fail with
        ``details()`` (e.g. the job's output) and the daemons' logs."""
        deadline = time.monotonic() + timeout
        while not (value := ready()):
            if time.monotonic() > deadline:
                timed_out = f"timed out after {timeout:.0f} s waiting for {what}"
                raise AssertionError(f"{timed_out}\n{details()}\n{self.logs()}")
            time.sleep(0.5)
        return value

    def logs(self, lines: int = 25) -> str:
        """The last lines of every daemon's log, for failure messages."""
        parts = []
        for name in DAEMONS:
            # the log file (slurmctld, slurmd; with times), else what the daemon wrote to stderr
            path = self.root / "log" / f"{name}.log"
            if not path.exists() or path.stat().st_size == 0:
                path = path.with_suffix(".out")
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    # --- daemons ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start munged, slurmctld and slurmd in the foreground (our children); wait for an idle node."""
        for folder in ("state", "spool", "run", "log", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        munge_dir = self.root / "munge"
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge_socket = munge_dir / "munge.socket"
        if len(str(munge_socket)) > 100:  # a Unix socket path holds at most 107 bytes
            self._socket_dir = tempfile.mkdtemp(prefix="fedbat-munge-")
            munge_socket = Path(self._socket_dir) / "munge.socket"
        ctld_port, slurmd_port = free_ports(2)
        conf = SLURM_CONF.format(root=self.root, ctld_port=ctld_port, slurmd_port=slurmd_port,
                                 munge_socket=munge_socket, kill_wait=KILL_WAIT_S,
                                 first_job_id=random.randrange(10_000, 60_000_000))  # fmt: skip
        self.conf.write_text(conf)
        # --force: munged would refuse a socket whose parent folders are not world-executable, and
        # pytest's tmp folders are private; everything here runs as root, which reaches it anyway.
        self._spawn("munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                    f"--pid-file={munge_dir / 'munged.pid'}",
                    f"--seed-file={munge_dir / 'munged.seed'}")  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not munge_socket.exists():
            self._check_started(deadline, "munged did not create its socket")
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-N", "localhost", "-f", str(self.conf))  # -N: the node's name here
        while self._node_state() != "idle":
            self._check_started(deadline, "the node did not become idle")

    def _check_started(self, deadline: float, waiting: str) -> None:
        for name, process in self._daemons.items():
            if process.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with status {process.returncode} at start")
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{waiting} within {START_TIMEOUT_S} s")
        time.sleep(0.2)

    def _spawn(self, name: str, *args: str) -> None:
        # In the foreground, daemons also log to stderr: munged only there, slurm* before their log opens.
        program = find(name)
        assert program is not None, f"{name} is not installed"  # running() skips before then
        with open(self.root / "log" / f"{name}.out", "ab") as log:  # the child keeps its own descriptor
            self._daemons[name] = subprocess.Popen(
                [program, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                start_new_session=True,  # a Ctrl-C to pytest must leave the stop to stop()
            )  # fmt: skip

    def _node_state(self) -> str:
        try:
            done = self.run("sinfo", "--noheader", "--format=%T", check=False, timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (the PIDs we started)."""
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.cancel_jobs()
        for name in reversed(DAEMONS):
            process = self._daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def cancel_jobs(self) -> None:
        """scancel every job and wait for them to leave; kill what a job left behind by its PIDs."""
        jobs = self.run("squeue", "--noheader", "--format=%i", timeout=10).stdout.split()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False, timeout=10)
        deadline = time.monotonic() + KILL_WAIT_S + 15
        while time.monotonic() < deadline:
            if not self.run("squeue", "--noheader", "--format=%i", timeout=10).stdout.split():
                return
            time.sleep(0.5)
        for job in jobs:  # still there: the processes of its steps on this node, listed by slurmd
            listed = self.run("scontrol", "listpids", job, check=False, timeout=10).stdout.split("\n")[1:]
            for pid in {int(line.split()[0]) for line in listed if line[:1].isdigit()}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


class ClusterUnavailable(Exception):
    """Slurm cannot be started on this machine."""


def find(program: str) -> str | None:
    """A program's path: on PATH, or in the sbin folders, which users' PATH often leaves out."""
    return shutil.which(program) or shutil.which(program, path="/usr/local/sbin:/usr/sbin:/sbin")


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 free at this moment (held open together, so all distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for held in sockets:
            held.bind(("127.0.0.1", 0))
        return [held.getsockname()[1] for held in sockets]


@contextlib.contextmanager
def running(root: Path):
    """A started ``SlurmCluster`` under ``root``; skips when Slurm is missing or will not start."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if find(name) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("a test Slurm cluster needs root: slurmd starts job steps as the submitting user")
    cluster = SlurmCluster(root)
    try:
        try:
            cluster.start()
        except (ClusterUnavailable, OSError, subprocess.SubprocessError) as error:
            pytest.skip(f"Slurm did not start here: {error}\n{cluster.logs()}")
        yield cluster
    finally:
        cluster.stop()
