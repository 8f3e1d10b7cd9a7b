"""bench/ps_bandwidth.py --hosts in quick mode: a shard on one emulated host, a replica on another;
every figure is measured (ping-pong, fetch, push, small push, the shard's apply time) and the
hosts are gone afterwards. Figures are not asserted against the targets (a shared machine)."""

import json
import os
import subprocess
import sys

from tests.mpi.runner import REPO
from tests.multihost.conftest import instance_name


def test_ps_bandwidth_hosts_quick(tmp_path, namespaces_usable):
    name = f"p{instance_name()[0][1:]}"
    subnet = f"10.237.{os.getpid() % 250}"
    done = subprocess.run(
        [
            sys.executable,
            "bench/ps_bandwidth.py",
            "--hosts",
            "--quick",
            "--params",
            "1000000",
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
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads((tmp_path / "ps_bandwidth_hosts.json").read_text())["results"]
    assert list(results) == ["unshaped"]
    res = results["unshaped"]
    assert res["pingpong"]["rtt_s"] > 0 and res["pingpong"]["bandwidth_bytes_per_s"] > 0
    assert all(res["seconds"][k] > 0 for k in ("fetch", "push", "applied"))
    assert res["small_push"]["pushes"] == 20 and res["small_push"]["apply_s"] > 0
    assert res["small_push"]["median_s"] > res["small_push"]["apply_s"]
    assert "## Parameter-server bandwidth and latency between hosts" in (tmp_path / "ps_bandwidth_hosts.md").read_text()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{name}-h1" not in namespaces
