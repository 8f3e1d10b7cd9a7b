import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.cluster import INSTALL_HINT, SlurmCluster, missing_binaries

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A private single-node Slurm cluster (munged + slurmctld + slurmd) for the whole session,
    stopped at the end; fails if any process of it is left running."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip(
            "the private Slurm cluster needs root (slurmd starts jobs as their user); CI runs these tests as root"
        )
    cluster = SlurmCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        if not left:
            shutil.rmtree(cluster.base, ignore_errors=True)
    assert not left, f"processes left after stopping the Slurm cluster: {left}\n(files kept in {cluster.base})"


@pytest.fixture(scope="session")
def slurm_digits_h5(tmp_path_factory) -> Path:
    """The digits dataset, built once with the data tool."""
    path = tmp_path_factory.mktemp("slurm-data") / "digits.h5"
    subprocess.run(
        ["timeout", "-k", "5", "120", sys.executable, "-m", "data_tools", "digits", str(path)],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=150,
    )
    return path
