"""Ranks started with different job specs (an MPMD launch with different --set) all stop
within 10 s, before any work, with exit code 2 and the differing keys named."""

import subprocess
import sys
import time

from tests.mpi.runner import REPO, launcher_flags, mpiexec_path


def test_ranks_with_different_specs_stop_with_the_keys_named(tmp_path, digits_h5):
    mpiexec = mpiexec_path()
    rank_command = [
        sys.executable,
        "-m",
        "distbelief_mpi",
        "train",
        str(REPO / "jobs" / "digits_downpour.toml"),
        "--set",
        f"data.path={digits_h5}",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    command = [
        "timeout",
        "-k",
        "5",
        "60",
        mpiexec,
        *launcher_flags(mpiexec),
        "-n",
        "1",
        *rank_command,
        "--set",
        "optimizer.server_learning_rate=0.5",
        ":",
        "-n",
        "4",
        *rank_command,
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=90)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "the job spec differs between ranks: optimizer.server_learning_rate (" in done.stderr
    assert "(ranks 1, 2, 3, 4)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
