"""Downpour across emulated hosts: shards on one host, replicas on another, UCX on TCP."""

import json
import socket

from tests.mpi.runner import REPO, assert_all_ranks
from tests.mpi.test_param_server import check_pipelined, records
from tests.multihost.conftest import run_across

DOWNPOUR_JOB = str(REPO / "jobs" / "digits_downpour.toml")


def test_downpour_shards_and_replicas_on_different_hosts(tmp_path, digits_h5, emulated_hosts):
    with emulated_hosts(2) as hosts:
        target = ["distbelief", "train", DOWNPOUR_JOB, "--set", f"data.path={digits_h5}"]
        run = run_across(hosts, [2, 3], [*target, "--run-dir", str(tmp_path / "run")], tmp_path)
    assert_all_ranks(run, 5)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.95, summary
    assert summary["pushes_applied"] > 0 and summary["pushes_rejected"] == 0
    # the ranks really ran on the emulated hosts, not on this machine
    hostnames = {record.get("hostname") for record in run.ranks.values()}
    assert hostnames == {"h1", "h2"} and socket.gethostname() not in hostnames, hostnames


def test_pipelined_transfers_across_hosts_lose_and_double_nothing(tmp_path, emulated_hosts):
    """The split-phase transfers where they matter: shards on h1, replicas on h2 (over TCP)."""
    with emulated_hosts(2) as hosts:
        run = run_across(hosts, [2, 3], ["program", "ps_pipelined", "2", "1000"], tmp_path, timeout=120)
    assert_all_ranks(run, 5)
    check_pipelined(records(run, "shard"), records(run, "replica"), 1000)
