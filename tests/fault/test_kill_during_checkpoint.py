"""SIGKILL to mpiexec at random moments while checkpoints are being written (one every step):
every restart must find a complete checkpoint (the newest or the one before), never a partial one,
and continue from it; the final parameters are bit-identical to a run never killed. Both
deterministic configurations: one SGD replica, and Sandblaster with one replica (a coordinator,
2 shards writing their own files, one replica; several L-BFGS batches). DISTBELIEF_FAULT_TRIALS sets the number of kills
(CI: 6; long mode: 20)."""

import json
import random
import signal
import time

import numpy as np
import pytest

from distbelief_mpi.checkpoint.params_file import load_params
from distbelief_mpi.checkpoint.store import complete_checkpoints, newest_complete, read_manifest
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi, start_mpi

CASES = {
    "sgd": ("digits_mlp.toml", 1, []),
    # batches of 500 examples, 7 iterations each: kills land inside batches and at their ends
    "sandblaster": (
        "digits_sandblaster.toml",
        4,
        [
            "--set",
            "topology.replicas=1",
            "--set",
            "optimizer.sandblaster_batch=500",
            "--set",
            "optimizer.lbfgs_iterations_per_batch=7",
        ],
    ),
}


@pytest.mark.parametrize("algorithm", list(CASES))
def test_kills_during_checkpoint_writes_never_leave_a_partial_checkpoint(tmp_path, digits_h5, trials, algorithm):
    job, ranks, extra = CASES[algorithm]
    run_dir, job = tmp_path / "run", str(REPO / "jobs" / job)
    base = [
        "distbelief",
        "train",
        job,
        "--set",
        f"data.path={digits_h5}",
        "--set",
        "run.epochs=0",
        "--no-progress",
        *extra,
    ]
    common = [
        *base,
        "--run-dir",
        str(run_dir),
        "--resume",
        "auto",
        "--set",
        "checkpoint.every_steps=1",
        "--set",
        "checkpoint.keep=2",
    ]
    rng, steps_seen = random.Random(7), []
    for trial in range(trials):
        started = start_mpi(ranks, [*common, "--set", "run.steps=100000000"], tmp_path / f"t{trial}", timeout=120)
        deadline, previous = time.monotonic() + 60, steps_seen[-1] if steps_seen else -1
        while newest_step(run_dir) <= previous:  # this attempt has committed a checkpoint of its own
            assert time.monotonic() < deadline and started.process.poll() is None, "no new checkpoint"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the stream of checkpoint writes
        started.process.send_signal(signal.SIGKILL)  # `timeout -k`: mpiexec's parent; kill the tree
        _kill_tree(started)
        found = complete_checkpoints(run_dir / "checkpoints")
        assert found, f"trial {trial}: no complete checkpoint after the kill"
        if algorithm == "sgd":
            params, _ = load_params(found[0] / "params.h5")  # the newest complete one really loads
            assert np.all(np.isfinite(params))
        steps_seen.append(read_manifest(found[0])["step"])
    total = steps_seen[-1] + 20
    final = run_mpi(ranks, [*common, "--set", f"run.steps={total}"], tmp_path / "final", timeout=120)
    assert_all_ranks(final, ranks)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"]["step"] >= steps_seen[-1] and summary["steps"] == total
    # Deterministic: after all those kills the result is bit-identical to a run never killed.
    whole = run_mpi(
        ranks,
        [*base, "--run-dir", str(tmp_path / "whole"), "--set", f"run.steps={total}"],
        tmp_path / "whole-results",
        timeout=120,
    )
    assert_all_ranks(whole, ranks)
    assert np.array_equal(load_params(run_dir / "params.h5")[0], load_params(tmp_path / "whole" / "params.h5")[0])
    print(
        f"{algorithm}: {trials} kills during checkpoint writing: every restart found a complete checkpoint "
        f"(steps {steps_seen}); final parameters bit-identical to an uninterrupted run"
    )


def newest_step(run_dir) -> int:
    """Polled while the job runs and prunes (keep=2, a checkpoint every step): one read per manifest."""
    found = newest_complete(run_dir / "checkpoints")
    return found[1]["step"] if found else -1


def _kill_tree(started) -> None:
    """SIGKILL reaches `timeout`, not mpiexec and the rank: kill the whole process group's children."""
    import os
    import subprocess

    subprocess.run(["pkill", "-KILL", "-P", str(started.process.pid)], check=False)
    subprocess.run(["pkill", "-KILL", "-f", str(started.result_dir)], check=False)
    started.process.wait(timeout=30)
    os.sync()
