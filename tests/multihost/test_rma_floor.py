"""bench/rma_floor.py in quick mode: bare one-sided MPI between two emulated hosts. Figures are
not held to numbers (a shared machine), only to what must hold whatever the machine: every
operation was timed against a spinning and a sleeping target, and a push that also learns of its
answer costs more than its flushed Put."""

import json
import os
import subprocess
import sys

from tests.mpi.runner import REPO
from tests.multihost.conftest import instance_name

OPS = {"pingpong", "put", "get", "accumulate", "fetch_and_op", "compare_and_swap"}
OPS |= {"push_until_applied", "push_notified", "pingpong_16MiB", "put_16MiB", "get_16MiB"}


def test_rma_floor_quick(tmp_path, namespaces_usable):
    name = f"r{instance_name()[0][1:]}"
    subnet = f"10.238.{os.getpid() % 250}"
    argv = [sys.executable, "bench/rma_floor.py", "--quick", "--name", name, "--subnet", subnet]
    done = subprocess.run([*argv, "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads((tmp_path / "rma_floor.json").read_text())["results"]
    assert list(results) == ["unshaped, target spins", "unshaped, target sleeps"]
    for res in results.values():
        assert res["host"] == "h2"  # the origin ran on the second emulated host
        assert set(res["median_us"]) == OPS and all(t > 0 for t in res["median_us"].values()), res
        assert res["median_us"]["push_until_applied"] > res["median_us"]["put"], res
    assert "| unshaped, target sleeps |" in (tmp_path / "rma_floor.md").read_text()
