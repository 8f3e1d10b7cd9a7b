"""Launch `distbelief train` under mpiexec directly (not through tests/mpi/rank_main.py):
after a rank has left, the survivors end with os._exit, which skips the wrapper's record."""

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mpi.runner import REPO, launcher_flags, mpiexec_path


@dataclass
class Ended:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\n"
            f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-5000:]}"
        )


def hydra() -> bool:
    """MPICH's launcher (the wheel's and Debian's): the one with -disable-auto-cleanup."""
    version = subprocess.run([mpiexec_path(), "--version"], capture_output=True, text=True).stdout
    return "HYDRA" in version.upper()


def train(
    n: int, job: str, run_dir: Path, sets: list[str], timeout: float = 120, mpiexec_flags: tuple[str, ...] = ()
) -> Ended:
    mpiexec = mpiexec_path()
    overrides = [item for key_value in sets for item in ("--set", key_value)]
    command = [
        "timeout",
        "-k",
        "10",
        str(int(timeout)),
        mpiexec,
        *launcher_flags(mpiexec),
        *mpiexec_flags,
        "-n",
        str(n),
        sys.executable,
        "-m",
        "distbelief_mpi",
        "train",
        str(REPO / "jobs" / job),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *overrides,
    ]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout + 30)
    return Ended(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def leftover_processes(run_dir: Path) -> list[str]:
    """Processes whose command line names run_dir: none may outlive the job."""
    found = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]
