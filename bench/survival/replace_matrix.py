"""The built replacement (faults.replica_loss = replace) under each MPI and each way of leaving.

Digits Downpour, 5 ranks (2 shards, 3 replicas); replica 2 (world rank 4) leaves 1.5 s into
training: "exit" (injected: `_exit(1)` after 60 steps) or "kill" (SIGKILL from outside, found by
its rank in the launcher's environment). One line of JSON per run: did the job finish, was the
replica replaced, from which step, the spawn's time, the accuracy, mpiexec's exit code, seconds.

    python bench/survival/replace_matrix.py DIGITS_H5 [--repeats 2] [--openmpi-python PY]

PY: a Python whose mpi4py is built against Open MPI with this package importable
(docs/multihost.md); without it only MPICH (the wheel's Hydra, this venv) runs.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "digits_downpour.toml"
MPICH = [str(Path(sys.executable).parent / "mpiexec"), "-disable-auto-cleanup"]
OPENMPI = [
    "/usr/bin/mpiexec.openmpi",
    *("--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--enable-recovery"),
    *("--mca", "osc", "ucx,sm", "--mca", "mpi_yield_when_idle", "1"),
]
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")


def run_once(mpiexec: list[str], python: str, how: str, data: str, run_dir: Path) -> dict:
    sets = [f"data.path={data}", 'faults.replica_loss="replace"']
    sets += ["run.epochs=40"] if how == "exit" else ["run.epochs=120"]
    if how == "exit":
        sets += ['faults.inject="leave"', "faults.inject_replica=2", "faults.inject_after_steps=60"]
    overrides = [item for key_value in sets for item in ("--set", key_value)]
    command = [*mpiexec, "-n", "5", python, "-m", "distbelief_mpi", "train", str(JOB), "--run-dir", str(run_dir)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*command, "--no-progress", *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if how == "kill":
        _kill_rank_when_training(run_dir, 4)
    try:
        _, err = proc.communicate(timeout=120)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        code = "timeout (120 s)"
    for pid in _pids_naming(run_dir):  # what a hung launcher left behind (the replacement names run_dir too)
        os.kill(pid, signal.SIGKILL)
    seconds = round(time.monotonic() - started, 1)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return {
        "finished": summary is not None,
        "replaced": (summary or {}).get("replicas_replaced"),
        "test_accuracy": (summary or {}).get("test_accuracy"),
        "exit_code": code,
        "seconds": seconds,
        "stderr_tail": "" if summary else err[-600:],
    }


def _kill_rank_when_training(run_dir: Path, rank: int) -> None:
    """SIGKILL the world rank's process once metrics.jsonl shows training under way."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (run_dir / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.5)
    for pid in _pids_naming(run_dir):
        if _rank_of(pid) == rank:
            os.kill(pid, signal.SIGKILL)
            return


def _pids_naming(run_dir: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        name, _, value = entry.decode(errors="replace").partition("=")
        if name in RANK_VARIABLES:
            return int(value)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--openmpi-python")
    args = parser.parse_args()
    cells = [("MPICH", MPICH, sys.executable)]
    if args.openmpi_python:
        cells.append(("Open MPI", OPENMPI, args.openmpi_python))
    for name, mpiexec, python in cells:
        for how in ("exit", "kill"):
            for repeat in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    result = run_once(mpiexec, python, how, args.data, Path(tmp) / "run")
                print(json.dumps({"mpi": name, "leaves_by": how, "repeat": repeat, **result}), flush=True)


if __name__ == "__main__":
    main()
