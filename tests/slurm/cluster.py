"""A private Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's packages
(apt-get install slurm-wlm munge), started as our own child processes on localhost with a
configuration, munge key, ports and state directories of their own under one temporary
directory. One node (this machine) by default; tests/slurm/multinode.py runs one slurmd per
emulated host. Nothing under /etc is read or written; the clients (sbatch, squeue, scontrol, srun
inside the jobs) find the cluster through SLURM_CONF.

The node declares more CPUs than the machine has (CPUS), and slurmd is told to believe the
configuration (SlurmdParameters=config_overrides), so jobs of several ranks fit on a 2-core machine.
Slurm needs no cgroups here: proctrack/linuxproc, task/none.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CPUS = 8
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
INSTALL_HINT = "apt-get install -y slurm-wlm munge"
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_environ() -> dict[str, str]:
    """Our environment without any Slurm or PMI variables, in case the tests themselves run inside
    a job of a real cluster: the private cluster's clients must not see that job."""
    prefixes = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "PMI_", "PMIX_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@dataclass
class JobResult:
    job_id: str
    state: str  # COMPLETED, FAILED, ...
    exit_code: str  # "rc:signal", as scontrol prints it
    record: str  # the full `scontrol show job` line


class SlurmCluster:
    """nodes: {node name: address}, one slurmd each (default: this machine on 127.0.0.1);
    controller_address: where slurmctld, on this machine, is reached (tests/slurm/multinode.py
    puts the nodes on emulated hosts and the controller on their bridge)."""

    def __init__(
        self,
        base: Path | None = None,
        cpus: int = CPUS,
        nodes: dict[str, str] | None = None,
        controller_address: str = "127.0.0.1",
    ):
        self.base = Path(base or tempfile.mkdtemp(prefix="distbelief-slurm-"))
        # munged wants every directory above its socket searchable by all.
        os.chmod(self.base, 0o755)
        self.cpus = cpus
        # slurmctld only runs on the host SlurmctldHost names: this machine.
        self.controller = socket.gethostname().split(".")[0]
        self.controller_address = controller_address
        self.nodes = nodes or {self.controller: "127.0.0.1"}
        self.conf = self.base / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.logs = self.base / "log"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**_clean_environ(), "SLURM_CONF": str(self.conf)}

    # -- start and stop ------------------------------------------------------------------------

    def write_config(self) -> None:
        for sub in ("munge", "state", "log", *(f"spool/{node}" for node in self.nodes)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.base / "munge", 0o755)
        key = self.base / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        b = self.base
        node_lines = "\n".join(
            f"NodeName={node} NodeAddr={address} CPUs={self.cpus} RealMemory=1000 State=UNKNOWN"
            for node, address in self.nodes.items()
        )
        # %n: each slurmd's own node name, so that several slurmds share one configuration.
        self.conf.write_text(f"""\
# Written by tests/slurm/cluster.py: a private Slurm cluster for the tests, see docs/slurm.md.
ClusterName=distbelief-test
SlurmctldHost={self.controller}({self.controller_address})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool/%n
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd-%n.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=5
{node_lines}
PartitionName=debug Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.logs / f"{name}.stdout", "wb")
        self.processes[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL, cwd=self.base
        )
        out.close()

    def start(self, timeout: float = 30) -> None:
        self.write_config()
        m = self.base / "munge"
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--key-file={m}/munge.key",
                f"--socket={self.munge_socket}",
                f"--pid-file={m}/munged.pid",
                f"--seed-file={m}/munged.seed",
                f"--log-file={self.logs}/munged.log",
            ],
        )
        self._wait_for(lambda: self.munge_socket.exists(), timeout, "munged's socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(self.conf)])
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", self.slurmd_argv(node))
        self._wait_for(self.all_idle, timeout, f"nodes {', '.join(self.nodes)} idle in sinfo")

    def slurmd_argv(self, node: str) -> list[str]:
        """The command line of node's slurmd (run on this machine here; on its host in multinode.py)."""
        return [_which("slurmd"), "-D", "-f", str(self.conf), "-N", node]

    def _wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}\n{self.diagnostics()}")
            if condition():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{self.diagnostics()}")

    def stop(self) -> list[str]:
        """Cancel any job left, stop the daemons (slurmd, slurmctld, munged); return what is
        still running afterwards (should be nothing)."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            ids = self.client("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if ids:
                self.client("scancel", *ids, check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.client("squeue", "-h", check=False).stdout.strip():
                    time.sleep(0.3)
        slurmds = [name for name in self.processes if name.startswith("slurmd-")]
        for name in (*slurmds, "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        left = [f"{n} (pid {p.pid})" for n, p in self.processes.items() if p.poll() is None]
        return left + self.leftover_processes()

    def leftover_processes(self) -> list[str]:
        """Processes that still use our directory: its cwd, an open file or their command line
        (slurmstepd keeps slurmd's log open and runs in the log directory)."""
        found, base = [], str(self.base)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                paths = [os.readlink(proc / "cwd")] + [os.readlink(fd) for fd in (proc / "fd").iterdir()]
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if base in cmdline or any(p.startswith(base + "/") or p == base for p in paths):
                found.append(f"pid {proc.name}: {cmdline.strip()}")
        return found

    # -- clients -------------------------------------------------------------------------------

    def client(
        self,
        name: str,
        *args: str,
        timeout: float = 20,
        check: bool = True,
        cwd: Path | None = None,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a Slurm client command under `timeout`, with SLURM_CONF pointing at this cluster."""
        command = ["timeout", "-k", "5", str(int(timeout)), name, *args]
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=cwd, env={**self.env, **(env or {})}, timeout=timeout + 10
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def node_states(self) -> dict[str, str]:
        """{node: its state as sinfo prints it (idle, alloc, mix, down*, ...)}; {} if sinfo fails."""
        done = self.client("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=10)
        if done.returncode != 0:
            return {}
        return dict(line.split() for line in done.stdout.splitlines() if len(line.split()) == 2)

    def all_idle(self) -> bool:
        states = self.node_states()
        return all(states.get(node) == "idle" for node in self.nodes)

    def sbatch(
        self, script: Path, *options: str, cwd: Path, env: dict | None = None, args: tuple[str, ...] = ()
    ) -> str:
        """sbatch [options] script [args]: the job's ID (an array job's: the ID its tasks share)."""
        done = self.client("sbatch", "--parsable", *options, str(script), *args, cwd=cwd, env=env)
        return done.stdout.strip().split(";")[0]

    def job_record(self, job_id: str) -> dict[str, str]:
        done = self.client("scontrol", "-o", "show", "job", job_id, check=False, timeout=10)
        fields = {}
        for item in done.stdout.split():
            key, _, value = item.partition("=")
            fields.setdefault(key, value)
        fields["_line"] = done.stdout.strip()
        return fields

    def wait_job(self, job_id: str, timeout: float) -> JobResult:
        """Poll `scontrol show job` until the job ends; on timeout cancel it and raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job_record(job_id)
            if record.get("JobState") in TERMINAL_STATES:
                return JobResult(job_id, record["JobState"], record.get("ExitCode", "?"), record["_line"])
            time.sleep(0.5)
        self.client("scancel", job_id, check=False)
        raise TimeoutError(
            f"job {job_id} still not finished after {timeout} s: "
            f"{self.job_record(job_id)['_line']}\n{self.diagnostics()}"
        )

    def release_requeued(self, job_id: str, timeout: float = 30) -> None:
        """Let a job that requeued itself start now: Slurm holds it back for two minutes (BeginTime)."""
        self.wait_pending(job_id, timeout)
        # Released while a node still cleans up the first run, the job is killed at once ("Job
        # credential revoked", seen under load): wait until every node is idle again.
        self._wait_for(self.all_idle, timeout, "every node idle after the requeue")
        time.sleep(1.0)  # the revoked credential of the killed run expires with its clean-up
        self.client("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait_pending(self, job_id: str, timeout: float = 30) -> None:
        self._wait_for(lambda: self.job_record(job_id).get("JobState") == "PENDING", timeout, f"job {job_id} pending")

    def resize_pending(self, job_id: str, tasks: int, cpus_per_task: int = 1) -> None:
        """Give a pending (e.g. requeued) job another task count, held meanwhile so it cannot
        start half-changed. NumCPUs too: with NumTasks alone Slurm 22.05 still allocates the old
        CPU count, and srun refuses more tasks than that."""
        self.client("scontrol", "hold", job_id)
        self.client("scontrol", "update", f"JobId={job_id}", f"NumTasks={tasks}", f"NumCPUs={tasks * cpus_per_task}")
        self.client("scontrol", "release", job_id)

    def diagnostics(self, lines: int = 25) -> str:
        parts = []
        for log in sorted(self.logs.glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)
