import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpi.runner import REPO  # noqa: E402


@pytest.fixture(scope="session")
def digits_h5(tmp_path_factory) -> Path:
    """The real digits dataset, built once per test session with the data tool."""
    path = tmp_path_factory.mktemp("data") / "digits.h5"
    subprocess.run([sys.executable, "-m", "data_tools", "digits", str(path)], check=True, cwd=REPO,
                   capture_output=True, timeout=120)
    return path
