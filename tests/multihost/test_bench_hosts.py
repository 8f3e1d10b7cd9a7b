"""bench/model_parallel_hosts.py in quick mode: the LC net split 1+1 over 2 emulated hosts,
unshaped and at 1gbit, next to P = 1; every run gives a speed-up, a prediction and the link it
measured, and the hosts are gone afterwards. Figures are not asserted (a shared machine)."""

import json
import os
import subprocess
import sys

from tests.mpi.runner import REPO
from tests.multihost.conftest import instance_name


def test_model_parallel_hosts_quick(tmp_path, namespaces_usable):
    name = instance_name()[0]
    subnet = f"10.234.{100 + (os.getpid() % 70) * 2}"  # and the next /24 for the shaped hosts
    done = subprocess.run(
        [
            sys.executable,
            "bench/model_parallel_hosts.py",
            "--quick",
            "--models",
            "local",
            "--name",
            name,
            "--subnet",
            subnet,
            "--out-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads((tmp_path / "model_parallel_hosts.json").read_text())
    rows = {(r["rate"], r["layout"]): r for r in results["rows"]}
    assert set(rows) == {("unshaped", "1+1"), ("1gbit", "1+1")}, rows
    for row in rows.values():
        assert row["measured_speedup"] > 0 and row["predicted_speedup"] > 0
        assert row["net_latency_us"] > 0 and row["net_gb_per_s"] > 0
        assert row["mb_sent"] > 0
    # the shaper holds: 1 Gbit/s is 0.125 GB/s; the measured link stays well below the unshaped veth's
    assert rows[("1gbit", "1+1")]["net_gb_per_s"] < 0.2
    assert "## Model parallelism across hosts" in (tmp_path / "model_parallel_hosts.md").read_text()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{name}-h1" not in namespaces and f"{name}1-h1" not in namespaces
