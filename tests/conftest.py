import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpi.runner import REPO

# Every test is marked by its folder, so `pytest -m unit` is the quick loop (no MPI, no daemons)
# and `pytest -m "not slurm"` leaves out the private Slurm cluster.
FOLDER_MARKERS = {
    "unit": "unit",
    "mpi": "mpi",
    "fault": "fault",
    "slurm": "slurm",
    "bench": "bench",
    "multihost": "multihost",
}


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).parent
    for item in items:
        folder = Path(item.fspath).relative_to(tests_dir).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])


@pytest.fixture(scope="session")
def digits_h5(tmp_path_factory) -> Path:
    """The real digits dataset, built once per test session with the data tool."""
    path = tmp_path_factory.mktemp("data") / "digits.h5"
    subprocess.run(
        [sys.executable, "-m", "data_tools", "digits", str(path)],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    return path
