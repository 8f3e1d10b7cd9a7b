"""`python -m bench all --quick` as a smoke test: every benchmark runs and the report is written.
Figures are not asserted (a shared CI machine); bench/ measures them, BENCHMARKS.md records them."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpi.runner import REPO

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow  # about 90 s on 2 cores
@pytest.mark.timeout(1200)
def test_every_benchmark_runs_in_quick_mode(tmp_path):
    if not FASHION_SOURCE.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    dataset = tmp_path / "fashion.h5"
    subprocess.run(
        [sys.executable, "-m", "data_tools", "fashion-mnist", str(dataset)],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    report = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "all",
            "--quick",
            "--dataset",
            str(dataset),
            "--out-dir",
            str(tmp_path / "results"),
            "--report",
            str(report),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    text = report.read_text()
    for section in (
        "## Local compute",
        "## kernels",
        "## ps_bandwidth",
        "## Parameter server",
        "## Downpour scaling",
        "## Model parallelism",
        "## Sandblaster stragglers",
        "## Time to accuracy",
        "## Resume onto another topology",
        "## Cost model",
    ):
        assert section in text, section
    assert "**failed**" not in text
    for plot in ("model_parallel.png", "time_to_accuracy.png", "cost_model.png"):
        assert (tmp_path / "results" / plot).stat().st_size > 1000, plot
