"""Submit the real batch scripts (jobs/slurm/*.sbatch) to a private single-node Slurm cluster
(conftest.slurm_cluster) in both launch styles, and check what a user would: the job's final
state and exit code, and its run directory."""

import json
from pathlib import Path

import pytest

from tests.slurm.conftest import REPO
from tests.slurm.jobs import batch_env, wait_for_output, wait_until_training

SCRIPT = REPO / "jobs" / "slurm" / "digits_downpour.sbatch"
JOB_TIMEOUT_S = 90


def submit(cluster, tmp_path: Path, **settings: str) -> tuple[str, Path]:
    """sbatch the digits Downpour script from the repository root, as the docs say, with its run
    directory and output file under tmp_path; settings are the script's environment variables."""
    env = batch_env(cluster, tmp_path / "runs", **settings)
    job_id = cluster.sbatch(SCRIPT, f"--output={tmp_path}/%x-%j.out", cwd=REPO, env=env)
    return job_id, tmp_path / f"digits_downpour-{job_id}.out"


def explain(cluster, result, log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no output file)"
    return f"{result}\n--- job output {log}:\n{text}\n{cluster.diagnostics()}"


@pytest.mark.parametrize("launch", ["srun", "mpiexec"])
def test_digits_downpour_batch_job(slurm_cluster, slurm_digits_h5, tmp_path, launch):
    job_id, log = submit(
        slurm_cluster, tmp_path, LAUNCH=launch, EXTRA_ARGS=f"--set run.epochs=40 --set data.path={slurm_digits_h5}"
    )
    result = slurm_cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), explain(slurm_cluster, result, log)

    output = log.read_text()
    expected_launcher = "srun --mpi=pmi2 --ntasks=5" if launch == "srun" else "mpiexec -n 5"
    assert f"launch: {expected_launcher}" in output, output
    assert "distbelief exit code: 0" in output, output

    run_dir = tmp_path / "runs" / job_id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 5, summary
    assert (summary["n_shards"], summary["n_replicas"]) == (2, 3), summary
    assert summary["test_accuracy"] >= 0.9, summary
    assert (run_dir / "job.toml").exists() and (run_dir / "params.h5").exists()
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [f"rank-{r}.log" for r in range(5)]


def test_a_failing_script_fails_the_job(slurm_cluster, tmp_path):
    """The script's exit code is the job's: a bad LAUNCH stops it with 2 before any work."""
    job_id, log = submit(slurm_cluster, tmp_path, LAUNCH="bogus")
    result = slurm_cluster.wait_job(job_id, timeout=30)
    assert (result.state, result.exit_code) == ("FAILED", "2:0"), explain(slurm_cluster, result, log)
    assert "LAUNCH must be srun or mpiexec, not 'bogus'" in log.read_text()
    assert not (tmp_path / "runs").exists()


def test_preempted_job_checkpoints_requeues_and_resumes(slurm_cluster, slurm_digits_h5, tmp_path):
    """Slurm's warning signal mid-run: the job commits a checkpoint, exits 75 and requeues itself;
    the requeued job continues from that checkpoint (--resume auto) and completes."""
    job_id, log = submit(
        slurm_cluster,
        tmp_path,
        LAUNCH="srun",
        EXTRA_ARGS=f"--set run.epochs=0 --set run.seconds=6 --set data.path={slurm_digits_h5}",
    )
    run_dir = tmp_path / "runs" / job_id
    wait_until_training(run_dir)
    slurm_cluster.client("scancel", "--signal=TERM", job_id)  # what --signal=TERM@120 sends
    wait_for_output(log, "requeueing job", 60, lambda: explain(slurm_cluster, slurm_cluster.job_record(job_id), log))
    slurm_cluster.release_requeued(job_id)
    result = slurm_cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), explain(slurm_cluster, result, log)
    output = log.read_text()
    assert "distbelief exit code: 75" in output and "distbelief exit code: 0" in output, output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_from"]["step"] > 0, summary
    assert summary["stopped_on"] == "seconds", summary
