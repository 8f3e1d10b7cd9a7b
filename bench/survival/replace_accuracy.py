"""Accuracy with a replaced replica against runs where nobody left, side by side.

Digits Downpour, 5 ranks, 40 epochs, MPICH (`-disable-auto-cleanup`); each pair runs a baseline,
then the same job with replica 2 leaving after 60 steps and replaced (faults.replica_loss =
replace). Prints each pair, then the medians and the median of the differences.

    python bench/survival/replace_accuracy.py DIGITS_H5 [--pairs 5]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = [str(Path(sys.executable).parent / "mpiexec"), "-disable-auto-cleanup", "-n", "5"]
LEAVE = ['faults.inject="leave"', "faults.inject_replica=2", "faults.inject_after_steps=60"]


def accuracy(data: str, sets: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [
            item for key_value in [f"data.path={data}", "run.epochs=40", *sets] for item in ("--set", key_value)
        ]
        command = [
            *MPIEXEC,
            sys.executable,
            "-m",
            "distbelief_mpi",
            "train",
            str(REPO / "jobs" / "digits_downpour.toml"),
        ]
        subprocess.run(
            [*command, "--run-dir", str(run_dir), "--no-progress", *overrides],
            cwd=REPO,
            capture_output=True,
            timeout=300,
        )
        return json.loads((run_dir / "summary.json").read_text())["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    base, replaced = [], []
    for pair in range(args.pairs):
        base.append(accuracy(args.data, []))
        replaced.append(accuracy(args.data, [*LEAVE, 'faults.replica_loss="replace"']))
        print(f"pair {pair}: nobody left {base[-1]:.4f}, replaced {replaced[-1]:.4f}", flush=True)
    differences = [r - b for b, r in zip(base, replaced)]
    print(
        f"median: nobody left {statistics.median(base):.4f}, replaced {statistics.median(replaced):.4f}; "
        f"median difference {statistics.median(differences) * 100:+.2f} points "
        f"(range {min(differences) * 100:+.2f} to {max(differences) * 100:+.2f})"
    )


if __name__ == "__main__":
    main()
