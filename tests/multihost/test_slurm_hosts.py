"""The project's batch scripts on a real 2-node Slurm cluster: one slurmd per emulated host
(tests/slurm/multinode.py), `sbatch --nodes=2` in both launch styles, and a preemption signal
across hosts that the job survives by checkpoint, exit 75 and requeue.

Each rank runs `distbelief` under tests/mpi/rank_main.py (a `distbelief` first in the job's PATH),
which records its world rank, exit code and hostname: so the tests see every rank, and where it ran."""

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from distbelief_mpi.emulation import network_env
from tests.slurm.cluster import INSTALL_HINT, missing_binaries
from tests.slurm.jobs import wait_for_output, wait_until_training
from tests.slurm.multinode import emulated_slurm

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "slurm" / "digits_downpour.sbatch"
HOSTS = {"h1", "h2"}
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def slurm_two_hosts(namespaces_usable):
    """Two emulated hosts with a slurmd each, for this module; torn down even when a test fails."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the private Slurm cluster needs root (slurmd starts jobs as their user)")
    pid = os.getpid()  # names of our own: another test session may have emulated hosts at the same time
    with emulated_slurm(2, name=f"s{pid % 10**6}", subnet=f"10.233.{pid % 250}") as started:
        yield started


def rank_recorder(directory: Path) -> Path:
    """A directory holding a `distbelief` that runs the real one under tests/mpi/rank_main.py,
    recording each rank in $RANK_RECORDS/attempt-N (N: the job's restart count)."""
    directory.mkdir()
    shim = directory / "distbelief"
    shim.write_text(f"""#!/bin/sh
records="$RANK_RECORDS/attempt-${{SLURM_RESTART_COUNT:-0}}"
mkdir -p "$records"
exec {shlex.quote(sys.executable)} -m tests.mpi.rank_main "$records" distbelief "$@"
""")
    shim.chmod(0o755)
    return directory


def submit(cluster, tmp_path: Path, launch: str, extra_args: str, **settings: str) -> tuple[str, Path]:
    """sbatch the digits Downpour script on both nodes from the repository root; UCX kept on TCP
    between hosts (it would reach a peer's shared memory across namespaces otherwise). settings:
    more of the script's variables."""
    recorder = rank_recorder(tmp_path / "bin")
    env = {
        **network_env(),
        "LAUNCH": launch,
        "EXTRA_ARGS": extra_args,
        "RUNS": str(tmp_path / "runs"),
        "RANK_RECORDS": str(tmp_path / "ranks"),
        "VENV": "none",  # activating a venv would put its `distbelief` before the recorder
        "PATH": f"{recorder}:{Path(sys.executable).parent}:{cluster.env.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        **settings,
    }
    job_id = cluster.sbatch(SCRIPT, "--nodes=2", f"--output={tmp_path}/%x-%j.out", cwd=REPO, env=env)
    return job_id, tmp_path / f"digits_downpour-{job_id}.out"


def ranks_of(tmp_path: Path, attempt: int) -> dict[int, dict]:
    records = (tmp_path / "ranks" / f"attempt-{attempt}").glob("rank-*.json")
    return {record["rank"]: record for record in (json.loads(path.read_text()) for path in records)}


def explain(cluster, tmp_path: Path, what, log: Path) -> str:
    output = log.read_text(errors="replace") if log.exists() else "(no output file)"
    ranks = {attempt: ranks_of(tmp_path, attempt) for attempt in (0, 1)}
    return f"{what}\n--- job output {log}:\n{output}\n--- ranks: {ranks}\n{cluster.diagnostics()}"


def assert_step_launched_by_both_slurmds(cluster, job_id: str, why: str) -> None:
    """The job's first step went through Slurm on both nodes: the ranks themselves (srun), or
    Hydra's proxies, which mpiexec inside an allocation starts with srun."""
    for host in sorted(HOSTS):
        assert f"launch task StepId={job_id}.0 " in (cluster.logs / f"slurmd-{host}.log").read_text(), why


def assert_ranks_on_both_hosts(tmp_path: Path, attempt: int, exit_code: int, why: str) -> None:
    ranks = ranks_of(tmp_path, attempt)
    assert sorted(ranks) == list(range(5)), why
    assert {rank: r["exit_code"] for rank, r in ranks.items()} == dict.fromkeys(range(5), exit_code), why
    assert {r["hostname"] for r in ranks.values()} == HOSTS, why


@pytest.mark.parametrize("launch", ["srun", "mpiexec"])
def test_digits_downpour_on_two_nodes(slurm_two_hosts, digits_h5, tmp_path, launch):
    cluster = slurm_two_hosts
    job_id, log = submit(cluster, tmp_path, launch, f"--set run.epochs=40 --set data.path={digits_h5}")
    result = cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    why = explain(cluster, tmp_path, result, log)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), why
    output = log.read_text()
    launcher = "srun --mpi=pmi2 --ntasks=5" if launch == "srun" else "mpiexec -n 5"
    assert "on h[1-2]: 5 ranks" in output and f"launch: {launcher}" in output, why
    assert_step_launched_by_both_slurmds(cluster, job_id, why)
    assert_ranks_on_both_hosts(tmp_path, attempt=0, exit_code=0, why=why)
    summary = json.loads((tmp_path / "runs" / job_id / "summary.json").read_text())
    assert summary["world_size"] == 5 and (summary["n_shards"], summary["n_replicas"]) == (2, 3), summary
    assert summary["test_accuracy"] >= 0.9, summary


def test_preempted_job_resumes_across_hosts(slurm_two_hosts, digits_h5, tmp_path):
    """scancel --signal=TERM (what --signal=TERM@120 sends) mid-run: every rank, on both hosts,
    commits its part of the checkpoint and exits 75; the script requeues the job, which
    continues from that checkpoint (--resume auto) on both hosts and completes."""
    cluster = slurm_two_hosts
    extra = f"--set run.epochs=0 --set run.seconds=6 --set data.path={digits_h5}"
    job_id, log = submit(cluster, tmp_path, "srun", extra)
    run_dir = tmp_path / "runs" / job_id
    wait_until_training(run_dir)
    cluster.client("scancel", "--signal=TERM", job_id)
    wait_for_output(log, "requeueing job", 60, lambda: explain(cluster, tmp_path, cluster.job_record(job_id), log))
    cluster.release_requeued(job_id)
    result = cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    why = explain(cluster, tmp_path, result, log)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), why
    assert_ranks_on_both_hosts(tmp_path, attempt=0, exit_code=75, why=why)
    assert_ranks_on_both_hosts(tmp_path, attempt=1, exit_code=0, why=why)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_from"]["step"] > 0, summary
    assert summary["stopped_on"] == "seconds" and summary["world_size"] == 5, summary


def test_a_replica_lost_on_two_nodes_is_replaced(slurm_two_hosts, digits_h5, tmp_path):
    """faults.replica_loss = replace in a 2-node allocation (LAUNCH=mpiexec, Hydra's proxies
    started by srun): replica 2 exits, the lead and the shards spawn its replacement inside the
    allocation, and the job completes with exit code 0 (the script reads summary.json)."""
    cluster = slurm_two_hosts
    extra = f"--set run.epochs=40 --set data.path={digits_h5} --set faults.replica_loss=replace"
    extra += " --set faults.inject=leave --set faults.inject_replica=2 --set faults.inject_after_steps=60"
    job_id, log = submit(cluster, tmp_path, "mpiexec", extra, MPIEXEC_FLAGS="-disable-auto-cleanup")
    result = cluster.wait_job(job_id, timeout=JOB_TIMEOUT_S)
    why = explain(cluster, tmp_path, result, log)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), why
    assert "the run finished after losing a replica" in log.read_text(), why
    summary = json.loads((tmp_path / "runs" / job_id / "summary.json").read_text())
    assert summary["replicas_lost"] == [2] and summary["replicas_replaced"][0]["replica_id"] == 2, summary
    assert summary["steps"] <= min(summary["steps_pushed_per_shard"]), summary
