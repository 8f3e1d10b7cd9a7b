"""Graceful preemption: SIGTERM to mpiexec mid-run commits a checkpoint, exits 75, and
`--resume auto` continues from it."""

import json
import os
import signal
import time

import pytest

from distbelief_mpi.checkpoint.store import complete_checkpoints, read_manifest
from distbelief_mpi.runtime.preempt import EXIT_PREEMPTED
from tests.mpi.runner import REPO, assert_all_ranks, finish_mpi, run_mpi, start_mpi

JOBS = {
    "sgd": ("digits_mlp.toml", 1),
    "downpour": ("digits_downpour.toml", 5),
    "partitioned": ("digits_lc_partitioned.toml", 6),  # 2 replicas x 2 partitions + 2 shards
    "sandblaster": ("digits_sandblaster.toml", 6),
}  # coordinator, 2 shards, 3 replicas


def wait_for_training(run_dir, started, seconds=60):
    """Until the lead has written a training-window line (the run is past its start-up)."""
    deadline = time.monotonic() + seconds
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and started.process.poll() is None:
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"the run did not start training within {seconds} s")


@pytest.mark.parametrize("algorithm", list(JOBS))
def test_sigterm_commits_a_checkpoint_and_resume_auto_finishes(tmp_path, digits_h5, algorithm):
    """The partitioned job also checkpoints every 5 steps, so the signal usually finds a checkpoint
    in flight: every partition's shards must still be serving when the final one is requested."""
    job, ranks = JOBS[algorithm]
    run_dir = tmp_path / "run"
    common = [
        "distbelief",
        "train",
        str(REPO / "jobs" / job),
        "--set",
        f"data.path={digits_h5}",
        "--run-dir",
        str(run_dir),
        "--resume",
        "auto",
        "--set",
        "run.epochs=0",
    ]
    if algorithm == "partitioned":
        common += ["--set", "checkpoint.every_steps=5"]
    started = start_mpi(ranks, [*common, "--set", "run.steps=100000000"], tmp_path, timeout=120)
    wait_for_training(run_dir, started)
    started.process.send_signal(signal.SIGTERM)  # `timeout` passes it on to mpiexec, mpiexec to every rank
    run = finish_mpi(started, timeout=120)
    assert run.returncode == EXIT_PREEMPTED, run.explain()
    assert_all_ranks(run, ranks, exit_code=EXIT_PREEMPTED)
    assert json.loads((run_dir / "summary.json").read_text())["stopped_on"] == "preempted"
    (newest,) = complete_checkpoints(run_dir / "checkpoints")[:1]
    step = read_manifest(newest)["step"]
    assert step > 0

    resumed = run_mpi(ranks, [*common, "--set", f"run.steps={step + 50}"], tmp_path, timeout=120)
    assert_all_ranks(resumed, ranks)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"]["step"] == step and summary["stopped_on"] == "steps"
    assert summary["test_accuracy"] > 0.5


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path, digits_h5):
    run_dir = tmp_path / "fresh"
    run = run_mpi(
        1,
        [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_mlp.toml"),
            "--set",
            f"data.path={digits_h5}",
            "--run-dir",
            str(run_dir),
            "--resume",
            "auto",
            "--set",
            "run.steps=20",
        ],
        tmp_path,
    )
    assert_all_ranks(run, 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["steps"] == 20


def test_resume_auto_needs_a_run_dir(tmp_path, digits_h5):
    run = run_mpi(
        1,
        [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_mlp.toml"),
            "--set",
            f"data.path={digits_h5}",
            "--resume",
            "auto",
        ],
        tmp_path,
    )
    assert_all_ranks(run, 1, exit_code=2)
    assert "--resume auto needs --run-dir" in run.stderr


def start_long_downpour(tmp_path, digits_h5, *extra):
    run_dir = tmp_path / "run"
    target = [
        "distbelief",
        "train",
        str(REPO / "jobs" / "digits_downpour.toml"),
        "--set",
        f"data.path={digits_h5}",
        "--run-dir",
        str(run_dir),
        "--set",
        "run.epochs=0",
        "--set",
        "run.steps=100000000",
        *extra,
    ]
    started = start_mpi(5, target, tmp_path, timeout=120)
    wait_for_training(run_dir, started)
    return started, run_dir


def test_a_signal_to_one_replica_stops_every_replica(tmp_path, digits_h5):
    """Ranks 0-1 are shards, 2 the lead replica: signal only rank 3."""
    started, run_dir = start_long_downpour(tmp_path, digits_h5)
    pid = int((started.result_dir / "rank-3.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    run = finish_mpi(started, timeout=120)
    assert_all_ranks(run, 5, exit_code=EXIT_PREEMPTED)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_on"] == "preempted" and summary["final_checkpoint"] is not None
    assert read_manifest(complete_checkpoints(run_dir / "checkpoints")[0])["step"] == summary["final_checkpoint"]


def test_a_final_checkpoint_that_misses_the_grace_time_exits_1(tmp_path, digits_h5):
    started, run_dir = start_long_downpour(tmp_path, digits_h5, "--set", "checkpoint.grace_seconds=0.000001")
    started.process.send_signal(signal.SIGTERM)
    run = finish_mpi(started, timeout=120)
    assert_all_ranks(run, 5, exit_code=1)
    assert "not committed within checkpoint.grace_seconds" in run.stderr
    assert json.loads((run_dir / "summary.json").read_text())["final_checkpoint"] is None
