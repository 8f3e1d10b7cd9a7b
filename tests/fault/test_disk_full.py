"""A disk that fills up while a checkpoint is written (a small tmpfs, topped up with a filler
file) stops the run with a clear message, and the previous checkpoint stays complete."""

import os
import subprocess
import sys

import pytest

from distbelief_mpi.checkpoint.params_file import load_params
from distbelief_mpi.checkpoint.store import complete_checkpoints
from tests.fault.conftest import fill_disk, small_tmpfs
from tests.mpi.runner import REPO

JOB = str(REPO / "jobs" / "digits_mlp.toml")
FREE_BYTES = 20_000  # room for logs and metrics lines, not for a 40 KB parameter file


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path / "disk", "400k") as mount:
        yield mount


def train(*args):
    command = [
        "timeout",
        "-k",
        "5",
        "120",
        sys.executable,
        "-m",
        "distbelief_mpi",
        "train",
        JOB,
        "--no-progress",
        "--set",
        "run.epochs=0",
        "--set",
        "checkpoint.every_steps=10",
        "--set",
        "checkpoint.keep=5",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=150)


def test_a_full_disk_while_checkpointing_is_clear_and_keeps_the_previous_checkpoint(small_disk, digits_h5):
    run_dir = small_disk / "run"
    first = train("--set", f"data.path={digits_h5}", "--run-dir", str(run_dir), "--set", "run.steps=10")
    assert first.returncode == 0, first.stderr
    fill_disk(small_disk, FREE_BYTES)
    done = train("--set", f"data.path={digits_h5}", "--resume", str(run_dir), "--set", "run.steps=30")
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "cannot write the checkpoint (No space left on device)" in done.stderr, done.stderr
    assert "step-000000010, is intact" in done.stderr and "Traceback" not in done.stderr
    (newest,) = complete_checkpoints(run_dir / "checkpoints")
    assert newest.name == "step-000000010"
    load_params(newest / "params.h5")
    assert not [p for p in (run_dir / "checkpoints").rglob("*") if ".tmp" in p.name], "a temporary file was left"
    os.remove(small_disk / "filler")


@pytest.mark.parametrize("leave_free", [20_000, 300_000], ids=["below the metadata margin", "data space short"])
def test_streamed_hdf5_on_a_full_disk_is_a_plain_error_and_leaves_nothing(small_disk, leave_free):
    """runtime/files.hdf5_stream: with too little room for the metadata (refused first) or for
    the data (posix_fallocate refuses before any data is written), the writer gets ENOSPC as an
    OSError and goes on living (HDF5 failing its own writes crashes the process), and no
    temporary file is left. Run in a child process: a crash must not take pytest with it."""
    fill_disk(small_disk, leave_free)
    program = (
        "import errno, numpy as np, sys\n"
        "from distbelief_mpi.runtime.files import write_hdf5_arrays\n"
        "try:\n"
        f"    write_hdf5_arrays({str(small_disk / 'x.h5')!r}, {{'params': np.ones(200_000, np.float32)}}, {{}})\n"
        "except OSError as exc:\n"
        "    sys.exit(0 if exc.errno == errno.ENOSPC else 3)\n"
        "sys.exit(4)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
