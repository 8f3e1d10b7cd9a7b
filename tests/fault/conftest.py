import contextlib
import os
import subprocess

import pytest

# The random-point trials: a few in CI, many with DISTBELIEF_FAULT_TRIALS=20 (the long mode).
TRIALS = int(os.environ.get("DISTBELIEF_FAULT_TRIALS", "6"))


@pytest.fixture(scope="session")
def trials() -> int:
    return TRIALS


@contextlib.contextmanager
def small_tmpfs(mount, size: str):
    """A tmpfs of `size` (e.g. "400k") at mount, to fill up; skips the test without root."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(mount, leave_free: int) -> None:
    """Top the file system up with a filler file, leaving `leave_free` bytes."""
    import shutil

    with open(mount / "filler", "wb") as filler:
        filler.write(bytes(max(0, shutil.disk_usage(mount).free - leave_free)))
