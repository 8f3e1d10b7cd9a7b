"""The generic batch script (jobs/slurm/distbelief.sbatch) and the array sweep
(jobs/slurm/sweep.sbatch) on the private single-node Slurm cluster (conftest.slurm_cluster):
the plan check before launch, one run directory per array task, and a requeued job that Slurm
gives another task count continuing its checkpoint on the new shape."""

import json
import tomllib
from pathlib import Path

import pytest

from tests.fault.launch import hydra
from tests.slurm.conftest import REPO
from tests.slurm.jobs import batch_env, wait_for_output, wait_until_training

GENERIC = REPO / "jobs" / "slurm" / "distbelief.sbatch"
SWEEP = REPO / "jobs" / "slurm" / "sweep.sbatch"
JOB_TIMEOUT_S = 90


def submit(cluster, tmp_path: Path, script: Path, options: tuple[str, ...], args: tuple[str, ...]) -> str:
    """sbatch script from the repository root, run directories and output under tmp_path."""
    env = batch_env(cluster, tmp_path / "runs", LAUNCH="srun")
    return cluster.sbatch(script, *options, cwd=REPO, env=env, args=args)


def explain(cluster, what, log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no output file)"
    return f"{what}\n--- job output {log}:\n{text}\n{cluster.diagnostics()}"


def test_a_job_that_does_not_fit_stops_before_launch(slurm_cluster, slurm_digits_h5, tmp_path):
    """5 ranks wanted, 4 tasks given: plan's message and exit code 2, no rank started."""
    args = ("jobs/digits_downpour.toml", "--set", f"data.path={slurm_digits_h5}")
    job_id = submit(slurm_cluster, tmp_path, GENERIC, ("-n", "4", f"--output={tmp_path}/%x-%j.out"), args)
    log = tmp_path / f"distbelief-{job_id}.out"
    result = slurm_cluster.wait_job(job_id, timeout=30)
    assert (result.state, result.exit_code) == ("FAILED", "2:0"), explain(slurm_cluster, result, log)
    output = log.read_text()
    assert "jobs/digits_downpour.toml: cannot run on 4 ranks" in output, output
    assert "needs 5 ranks (2 shards + 3 replicas" in output, output
    assert "distbelief exit code" not in output and not (tmp_path / "runs").exists(), output


def test_sweep_runs_one_value_per_array_task(slurm_cluster, slurm_digits_h5, tmp_path):
    """Array tasks 0 and 1 train with the list's two learning rates, each in its own run
    directory; task 2 is outside the list and fails with exit code 2, naming the key."""
    options = ("--array=0-2", "-n", "1", f"--output={tmp_path}/%x-%A_%a.out")
    args = ("jobs/digits_mlp.toml", "optimizer.learning_rate=0.05,0.2")
    args += ("--set", "run.epochs=2", "--set", f"data.path={slurm_digits_h5}")
    array_id = submit(slurm_cluster, tmp_path, SWEEP, options, args)
    results = {i: slurm_cluster.wait_job(f"{array_id}_{i}", timeout=JOB_TIMEOUT_S) for i in range(3)}
    logs = {i: tmp_path / f"sweep-{array_id}_{i}.out" for i in range(3)}

    for index, rate in ((0, 0.05), (1, 0.2)):
        result, why = results[index], explain(slurm_cluster, results[index], logs[index])
        assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), why
        run_dir = tmp_path / "runs" / f"{array_id}_{index}"
        spec = tomllib.loads((run_dir / "job.toml").read_text())
        assert spec["optimizer"]["learning_rate"] == rate and spec["run"]["epochs"] == 2, spec
        assert json.loads((run_dir / "summary.json").read_text())["test_accuracy"] > 0.5, why
    result, why = results[2], explain(slurm_cluster, results[2], logs[2])
    assert (result.state, result.exit_code) == ("FAILED", "2:0"), why
    assert "array index 2 is outside the 2 values of optimizer.learning_rate (indices 0-1)" in logs[2].read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [f"{array_id}_0", f"{array_id}_1"]


# Downpour digits, 2 shards, replicas = "auto": 3 replicas on 5 tasks, then 2 on 4.
FIRST_TASKS, SECOND_TASKS = 5, 4


def test_requeue_onto_another_task_count_resumes_on_the_new_shape(slurm_cluster, slurm_digits_h5, tmp_path):
    """Preempted on 5 tasks (2 shards + 3 replicas), requeued, resized to 4 tasks while pending:
    the second start runs 2 shards + 2 replicas from the checkpoint and finishes."""
    args = (
        "jobs/digits_downpour.toml",
        "--set",
        "topology.replicas=auto",
        "--set",
        f"data.path={slurm_digits_h5}",
    )
    args += ("--set", "run.epochs=0", "--set", "run.seconds=6", "--set", "checkpoint.every_seconds=2")
    options = ("-n", str(FIRST_TASKS), f"--output={tmp_path}/%x-%j.out")
    job_id = submit(slurm_cluster, tmp_path, GENERIC, options, args)
    log, run_dir = tmp_path / f"distbelief-{job_id}.out", tmp_path / "runs" / job_id

    def why() -> str:
        return explain(slurm_cluster, slurm_cluster.job_record(job_id), log)

    wait_until_training(run_dir)
    slurm_cluster.client("scancel", "--signal=TERM", job_id)  # what --signal=TERM@120 sends
    wait_for_output(log, "requeueing job", 60, why)
    slurm_cluster.wait_pending(job_id)
    slurm_cluster.resize_pending(job_id, SECOND_TASKS)
    slurm_cluster.release_requeued(job_id)
    result = slurm_cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), why()

    first, _, second = log.read_text().partition("requeueing job")
    assert f": {FIRST_TASKS} ranks" in first and "distbelief exit code: 75" in first, why()
    assert f": {SECOND_TASKS} ranks" in second and f"--ntasks={SECOND_TASKS} " in second, why()
    assert "distbelief exit code: 0" in second, why()
    summary = json.loads((run_dir / "summary.json").read_text())
    replicas = SECOND_TASKS - 2
    assert (summary["world_size"], summary["n_shards"], summary["n_replicas"]) == (SECOND_TASKS, 2, replicas), summary
    resumed = summary["resumed_from"]
    assert resumed is not None and resumed["step"] > 0, summary
    assert resumed.get("from_topology", {}).get("replicas") == FIRST_TASKS - 2, summary
    assert summary["stopped_on"] == "seconds" and summary["test_accuracy"] >= 0.9, summary


def test_a_replica_lost_in_a_batch_job_is_replaced_and_the_job_completes(slurm_cluster, slurm_digits_h5, tmp_path):
    """LAUNCH=mpiexec with MPIEXEC_FLAGS=-disable-auto-cleanup and faults.replica_loss =
    replace: replica 2 exits after 60 steps, the lead and the shards spawn its replacement inside
    the allocation, and the script reads summary.json rather than mpiexec's code (the leaver's)."""
    if not hydra():
        pytest.skip("-disable-auto-cleanup is MPICH's (hydra) launcher flag")
    args = ("jobs/digits_downpour.toml", "--set", f"data.path={slurm_digits_h5}", "--set", "run.epochs=40")
    args += ("--set", 'faults.replica_loss="replace"', "--set", 'faults.inject="leave"')
    args += ("--set", "faults.inject_replica=2", "--set", "faults.inject_after_steps=60")
    env = batch_env(slurm_cluster, tmp_path / "runs", LAUNCH="mpiexec", MPIEXEC_FLAGS="-disable-auto-cleanup")
    job_id = slurm_cluster.sbatch(GENERIC, "-n", "5", f"--output={tmp_path}/%x-%j.out", cwd=REPO, env=env, args=args)
    log = tmp_path / f"distbelief-{job_id}.out"
    result = slurm_cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), explain(slurm_cluster, result, log)
    output = log.read_text()
    assert "launch: mpiexec -disable-auto-cleanup -n 5" in output, output
    assert "the run finished after losing a replica" in output, output
    summary = json.loads((tmp_path / "runs" / job_id / "summary.json").read_text())
    assert summary["replicas_lost"] == [2] and summary["replicas_replaced"][0]["replica_id"] == 2, summary
    assert summary["steps"] <= min(summary["steps_pushed_per_shard"]), summary
