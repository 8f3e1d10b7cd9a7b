"""What every benchmark prints about the machine it ran on, where it writes its results, and
how it launches MPI runs (a `distbelief train` job, or a script's own worker mode)."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(out_dir: str, stem: str, text: str, data) -> Path:
    """OUT_DIR/STEM.md (the markdown section) and OUT_DIR/STEM.json (the raw figures); returns
    the folder, for plots. python -m bench reads the .md back into BENCHMARKS.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return out


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def mpi_library_line() -> str:
    """Callable before MPI_Init (a driver that only launches mpiexec never initializes MPI)."""
    from mpi4py import MPI

    return MPI.Get_library_version().strip().splitlines()[0].strip()


def mpiexec_path() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpiexec not found (install the project: pip install -e .)")
    return found


def launcher_flags(mpiexec: str) -> list[str]:
    """Open MPI refuses more ranks than cores (and root) unless told; MPICH allows both."""
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" not in version and "OpenRTE" not in version:
        return []
    return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def mpiexec_command(ranks: int) -> list[str]:
    mpiexec = mpiexec_path()
    return [mpiexec, *launcher_flags(mpiexec), "-n", str(ranks)]


def train_job(job: str, ranks: int, sets: list[str], run_dir: Path, timeout: float) -> dict:
    """`mpiexec -n RANKS distbelief train jobs/JOB --run-dir RUN_DIR --set ...`; its summary.json."""
    command = [
        *mpiexec_command(ranks),
        sys.executable,
        "-m",
        "distbelief_mpi",
        "train",
        str(REPO / "jobs" / job),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *[item for kv in sets for item in ("--set", kv)],
    ]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=timeout)
    return json.loads((Path(run_dir) / "summary.json").read_text())


def mpi_result(ranks: int, script: str, args: list[str], prefix: str, timeout: float, env: dict | None = None) -> dict:
    """Run `script args` on RANKS ranks; the JSON its rank 0 printed after `prefix`."""
    done = subprocess.run(
        [*mpiexec_command(ranks), sys.executable, script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )
    for line in done.stdout.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix) :])
    raise RuntimeError(
        f"no result from {Path(script).name} {' '.join(args)} on {ranks} ranks (exit "
        f"{done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
