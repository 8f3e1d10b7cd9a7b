"""A rank that stops making progress (injected) ends the job within faults.watchdog_seconds,
naming the rank and its role; no process of the job is left behind.

Digits Downpour, 2 shards (ranks 0-1) and 3 replicas (ranks 2-4): replica 1 is rank 3.
`hang`: its main thread sleeps forever (its own watchdog and the shards both notice);
`freeze`: it stops itself with SIGSTOP (only the shards can notice: they watch its pushes).
A Sandblaster coordinator stopped with SIGSTOP from outside is noticed by the shards and
replicas it no longer talks to (it pings them while it has nothing to say)."""

import os
import signal
import socket
import time

import pytest

from distbelief_mpi.roles.sandblaster.cluster import COORDINATOR_SILENCE
from distbelief_mpi.runtime.watchdog import EXIT_HUNG
from tests.fault.launch import leftover_processes, train
from tests.mpi.runner import REPO, finish_mpi, start_mpi
from tests.mpi.test_preempt_mpi import wait_for_training

WATCHDOG_S = 5


@pytest.mark.parametrize("kind", ["hang", "freeze"])
def test_a_hung_replica_ends_the_job_naming_it(tmp_path, digits_h5, kind):
    run_dir = tmp_path / "run"
    ended = train(
        5,
        "digits_downpour.toml",
        run_dir,
        [
            f"data.path={digits_h5}",
            "run.epochs=100000",
            "optimizer.warmstart_steps=0",
            f"faults.watchdog_seconds={WATCHDOG_S}",
            "checkpoint.grace_seconds=2",
            f'faults.inject="{kind}"',
            "faults.inject_replica=1",
            "faults.inject_after_steps=30",
        ],
    )
    # MPI_Abort(3); Hydra reports 9 instead when it had to SIGKILL a stopped (frozen) rank.
    assert ended.returncode in (EXIT_HUNG, 9), ended.explain()
    assert "replica 1" in ended.stderr and "rank 3" in ended.stderr, ended.explain()
    assert "hung" in ended.stderr or "watchdog: no progress" in ended.stderr, ended.explain()
    injected_at = _injection_time(run_dir)
    assert time.time() - injected_at < WATCHDOG_S + 25, ended.explain()  # detection + abort + launcher
    assert not (run_dir / "summary.json").exists()
    assert leftover_processes(run_dir) == [], leftover_processes(run_dir)


def test_a_hung_single_replica_run_ends_on_its_watchdog(tmp_path, digits_h5):
    run_dir = tmp_path / "run"
    ended = train(
        1,
        "digits_mlp.toml",
        run_dir,
        [
            f"data.path={digits_h5}",
            "run.epochs=100000",
            f"faults.watchdog_seconds={WATCHDOG_S}",
            "checkpoint.grace_seconds=2",
            'faults.inject="hang"',
            "faults.inject_replica=0",
            "faults.inject_after_steps=30",
        ],
    )
    assert ended.returncode == EXIT_HUNG, ended.explain()
    assert f"rank 0 on {socket.gethostname()} (replica 0/partition 0): watchdog: no progress" in ended.stderr, (
        ended.explain()
    )
    assert "Stacks of this rank" in ended.stderr and "fault_injection.py" in ended.stderr, ended.explain()
    assert leftover_processes(run_dir) == []


def test_a_frozen_sandblaster_coordinator_ends_the_job_naming_it(tmp_path, digits_h5):
    run_dir = tmp_path / "run"
    started = start_mpi(
        6,
        [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_sandblaster.toml"),
            "--run-dir",
            str(run_dir),
            "--no-progress",
            "--set",
            f"data.path={digits_h5}",
            "--set",
            "run.steps=100000000",
            "--set",
            "run.eval_every=0",
            "--set",
            f"faults.watchdog_seconds={WATCHDOG_S}",
            "--set",
            "checkpoint.grace_seconds=2",
        ],
        tmp_path,
        timeout=120,
    )
    coordinator = None
    try:
        wait_for_training(run_dir, started)
        coordinator = int((started.result_dir / "rank-0.pid").read_text())
        os.kill(coordinator, signal.SIGSTOP)  # frozen whole: its own watchdog thread stops too
        frozen_at = time.monotonic()
        ended = finish_mpi(started, timeout=120)
    finally:
        if coordinator is not None and started.process.poll() is None:
            os.kill(coordinator, signal.SIGKILL)
    assert ended.returncode in (EXIT_HUNG, 9), ended.explain()
    assert "the coordinator (rank 0) has not answered" in ended.stderr and "it is hung" in ended.stderr, ended.explain()
    assert time.monotonic() - frozen_at < COORDINATOR_SILENCE * WATCHDOG_S + 25, ended.explain()
    assert leftover_processes(run_dir) == [], leftover_processes(run_dir)


def _injection_time(run_dir) -> float:
    """When the injected fault struck: the modification time of replica 1's log, whose last line it wrote."""
    logs = sorted((run_dir / "logs").glob("rank-3*"))
    assert logs, list((run_dir / "logs").iterdir())
    text = logs[0].read_text()
    assert "injected fault" in text, text[-2000:]
    return logs[0].stat().st_mtime
