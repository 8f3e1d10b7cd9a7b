"""topology.replicas = "auto" under real mpiexec: the same job spec on 2, 3 and 4 ranks trains 1, 2
and 3 Downpour replicas after its one shard, and a size that holds no whole replica stops every
rank with plan's message."""

import json
import subprocess
import sys

import pytest

from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

DOWNPOUR_JOB = str(REPO / "jobs" / "digits_downpour.toml")
# A short run: a few seconds per launch on a shared 2-core machine.
SHORT = ["run.epochs=0", "run.steps=40", "run.eval_every=0", "run.progress_seconds=0", "optimizer.warmstart_steps=0"]


def train_auto(n, tmp_path, digits_h5, *overrides):
    sets = [f"data.path={digits_h5}", "topology.shards=1", "topology.replicas=auto", *SHORT, *overrides]
    target = ["distbelief", "train", DOWNPOUR_JOB, "--run-dir", str(tmp_path / "run")]
    for item in sets:
        target += ["--set", item]
    return run_mpi(n, target, tmp_path, timeout=180), sets


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_auto_replicas_fill_the_world(tmp_path, digits_h5, world_size):
    run, _ = train_auto(world_size, tmp_path, digits_h5)
    assert_all_ranks(run, world_size)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    replicas = world_size - 1
    assert summary["world_size"] == world_size and summary["n_shards"] == 1, summary
    assert summary["n_replicas"] == replicas, summary
    assert len(summary["replica_steps"]) == replicas and all(summary["replica_steps"]), summary
    assert summary["pushes_applied"] > 0, summary
    # The run records the count it resolved to: job.toml is runnable as it is on this size.
    assert f"\nreplicas = {replicas}\n" in (tmp_path / "run" / "job.toml").read_text()


def test_a_size_with_no_whole_replica_stops_every_rank_with_plans_message(tmp_path, digits_h5):
    run, sets = train_auto(4, tmp_path, digits_h5, "topology.partitions_per_replica=2")
    assert_all_ranks(run, 4, exit_code=2)
    assert "Traceback" not in run.stderr and not (tmp_path / "run" / "job.toml").exists()
    plan = [sys.executable, "-m", "distbelief_mpi.cli", "plan", DOWNPOUR_JOB, "-n", "4"]
    for item in sets:
        plan += ["--set", item]
    planned = subprocess.run(plan, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert planned.returncode == 2, planned.stderr
    message = planned.stderr.removeprefix("error: ")
    assert "cannot run on 4 ranks" in message and "the nearest sizes that fit are 3 (1 replica) and 5" in message
    assert f"error (ranks 0, 1, 2, 3): {message}" in run.stderr, run.stderr
