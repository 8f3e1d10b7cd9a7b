"""Launch `mpiexec -n N` under `timeout -k`, collect every rank's result, fail if any failed.

Each rank runs tests/mpi/rank_main.py, which runs one target (a `distbelief` command
line or a test program in tests/mpi/programs) and writes RESULT_DIR/rank-R.json with its
exit code and any data. Rank 0's output alone can hide a failure on rank 1; this cannot.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mpiexec_path() -> str:
    beside_python = Path(sys.executable).parent / "mpiexec"
    found = str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
    if not found:
        raise RuntimeError("mpiexec not found: install the project (pip install -e .) or a system MPI")
    return found


@functools.cache
def launcher_flags(mpiexec: str) -> tuple[str, ...]:
    """Ranks outnumber cores here, and CI runs as root: Open MPI refuses both unless told;
    MPICH allows both."""
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" not in version and "OpenRTE" not in version:
        return ()
    return ("--oversubscribe",) + (("--allow-run-as-root",) if os.geteuid() == 0 else ())


@dataclass
class MpiRun:
    returncode: int
    stdout: str
    stderr: str
    ranks: dict[int, dict]  # world rank -> its result record

    def explain(self) -> str:
        return f"mpiexec exit {self.returncode}\nranks: {self.ranks}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def run_mpi(
    n: int, target: list[str], tmp_path: Path, timeout: float = 120, env: dict | None = None, cwd: Path = REPO
) -> MpiRun:
    """Run `target` on n ranks; target is ['distbelief', ...args] or ['program', NAME, ...args]."""
    return finish_mpi(start_mpi(n, target, tmp_path, timeout, env, cwd), timeout)


@dataclass
class Started:
    process: subprocess.Popen
    result_dir: Path


def start_mpi(
    n: int,
    target: list[str],
    tmp_path: Path,
    timeout: float = 120,
    env: dict | None = None,
    cwd: Path = REPO,
    launch: list[str] | None = None,
) -> Started:
    """Launch without waiting (e.g. to signal mpiexec mid-run); finish_mpi collects the results.
    `process.pid` is `timeout`'s, which passes SIGTERM on to mpiexec. launch: the launcher's
    argv up to the program, for n ranks (default `mpiexec -n N`; emulated hosts give theirs)."""
    result_dir = Path(tmp_path) / f"mpi-results-{os.getpid()}-{n}-{abs(hash(tuple(target)))}"
    result_dir.mkdir(parents=True, exist_ok=True)
    mpiexec = mpiexec_path()
    command = [
        "timeout",
        "-k",
        "10",
        str(int(timeout)),
        *(launch or [mpiexec, *launcher_flags(mpiexec), "-n", str(n)]),
        sys.executable,
        "-m",
        "tests.mpi.rank_main",
        str(result_dir),
        *target,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=full_env
    )
    return Started(process, result_dir)


def finish_mpi(started: Started, timeout: float = 120) -> MpiRun:
    stdout, stderr = started.process.communicate(timeout=timeout + 30)
    ranks = {}
    for path in started.result_dir.glob("rank-*.json"):
        record = json.loads(path.read_text())
        ranks[record["rank"]] = record
    return MpiRun(started.process.returncode, stdout, stderr, ranks)


def assert_all_ranks(run: MpiRun, n: int, exit_code: int = 0) -> None:
    """Every one of the n ranks reported, each with the expected exit code."""
    assert run.returncode != 124, f"timed out\n{run.explain()}"
    missing = sorted(set(range(n)) - set(run.ranks))
    assert not missing, f"ranks {missing} reported nothing\n{run.explain()}"
    wrong = {r: rec["exit_code"] for r, rec in run.ranks.items() if rec["exit_code"] != exit_code}
    assert not wrong, f"ranks exited {wrong}, expected {exit_code}\n{run.explain()}"
