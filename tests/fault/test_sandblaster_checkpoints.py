"""Sandblaster checkpoints under faults (6 ranks: a coordinator, 2 shards, 3 replicas): a damaged
shard file in the newest checkpoint makes resume fall back to the one before; a disk that fills
up while a shard writes its file stops the run with one clear error (MPI_Abort(1)) and leaves the
previous checkpoint complete and no temporary file behind."""

import json
import shutil
import socket

import pytest

from distbelief_mpi.checkpoint.store import complete_checkpoints, read_manifest
from tests.fault.conftest import fill_disk, small_tmpfs
from tests.fault.test_damaged_checkpoints import flip_a_byte
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

JOB = str(REPO / "jobs" / "digits_sandblaster.toml")
FREE_BYTES = 200_000  # room for logs and metrics, not for a shard's file (x, g and 4 (s, y) pairs: ~390 KB)


def train(tmp_path, digits_h5, name, *extra):
    return run_mpi(
        6,
        [
            "distbelief",
            "train",
            JOB,
            "--set",
            f"data.path={digits_h5}",
            "--no-progress",
            "--set",
            "run.eval_every=0",
            *extra,
        ],
        tmp_path / name,
        timeout=120,
    )


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, digits_h5):
    """A finished Sandblaster run with complete checkpoints at iterations 4 and 8."""
    base = tmp_path_factory.mktemp("sb-ckpt")
    run = train(
        base,
        digits_h5,
        "first",
        "--run-dir",
        str(base / "run"),
        "--set",
        "run.steps=8",
        "--set",
        "checkpoint.every_steps=4",
    )
    assert_all_ranks(run, 6)
    return base / "run"


def test_a_damaged_shard_file_falls_back_to_the_previous_checkpoint(tmp_path, digits_h5, checkpointed_run):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    flip_a_byte(run_dir / "checkpoints" / "step-000000008" / "shard-1.h5")
    run = train(tmp_path, digits_h5, "resumed", "--resume", str(run_dir), "--set", "run.steps=12")
    assert_all_ranks(run, 6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"]["step"] == 4 and summary["steps"] == 12


def test_a_full_disk_while_a_shard_writes_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path, digits_h5):
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        run_dir = disk / "run"
        first = train(
            tmp_path,
            digits_h5,
            "first",
            "--run-dir",
            str(run_dir),
            "--set",
            "run.steps=2",
            "--set",
            "checkpoint.every_steps=2",
        )
        assert_all_ranks(first, 6)
        fill_disk(disk, FREE_BYTES)
        run = train(
            tmp_path,
            digits_h5,
            "full",
            "--resume",
            str(run_dir),
            "--set",
            "run.steps=30",
            "--set",
            "checkpoint.every_steps=2",
        )
        # MPI_Abort(1); Hydra may report 9 instead, having SIGKILLed the other ranks first.
        assert run.returncode in (1, 9), run.explain()
        assert "cannot write the checkpoint (No space left on device)" in run.stderr, run.explain()
        assert "the newest complete checkpoint, step-000000002, is intact" in run.stderr, run.explain()
        assert (
            f"error on rank 0 on {socket.gethostname()} (coordinator)" in run.stderr and "Traceback" not in run.stderr
        )
        assert [d.name for d in complete_checkpoints(run_dir / "checkpoints")] == ["step-000000002"]
        assert not [p for p in (run_dir / "checkpoints").rglob("*") if ".tmp" in p.name], "a temporary file was left"


def test_resume_at_the_run_limit_takes_no_further_iteration(tmp_path, digits_h5, checkpointed_run):
    """Killed after its last checkpoint but before the summary: the resumed run only finishes."""
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    run = train(tmp_path, digits_h5, "again", "--resume", str(run_dir), "--set", "run.steps=8")
    assert_all_ranks(run, 6)
    summary = json.loads((run_dir / "summary.json").read_text())
    saved = read_manifest(run_dir / "checkpoints" / "step-000000008")["sandblaster"]
    assert summary["resumed_from"]["step"] == 8 and summary["steps"] == 8
    assert summary["evaluations"] == saved["eval_id"]  # not one batch pass more
    assert summary["examples_per_s"] == 0.0  # rates count this invocation's examples


def test_resume_with_another_objective_or_history_length_names_each_key(tmp_path, digits_h5, checkpointed_run):
    run = train(
        tmp_path,
        digits_h5,
        "changed",
        "--resume",
        str(checkpointed_run),
        "--set",
        "run.steps=12",
        "--set",
        "optimizer.lbfgs_memory=5",
        "--set",
        "optimizer.l2_penalty=0.01",
    )
    assert_all_ranks(run, 6, exit_code=2)
    assert "lbfgs_memory: the checkpoint has 10, this job has 5" in run.stderr, run.explain()
    assert "l2_penalty: the checkpoint has 0.0001, this job has 0.01" in run.stderr
