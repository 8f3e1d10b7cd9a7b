"""Checkpoints and resume under real mpiexec."""

import json

import h5py
import numpy as np

from distbelief_mpi.checkpoint.params_file import load_params
from distbelief_mpi.checkpoint.store import complete_checkpoints, read_manifest
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

SGD_JOB = str(REPO / "jobs" / "digits_mlp.toml")
DOWNPOUR_JOB = str(REPO / "jobs" / "digits_downpour.toml")


def train(n, tmp_path, job, data, *extra):
    run = run_mpi(n, ["distbelief", "train", job, "--set", f"data.path={data}", *extra], tmp_path, timeout=300)
    assert_all_ranks(run, n)
    return run


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_sgd_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, digits_h5):
    train(
        1,
        tmp_path,
        SGD_JOB,
        digits_h5,
        "--run-dir",
        str(tmp_path / "whole"),
        "--set",
        "run.steps=100",
        "--set",
        "run.epochs=0",
    )
    train(
        1,
        tmp_path,
        SGD_JOB,
        digits_h5,
        "--run-dir",
        str(tmp_path / "cut"),
        "--set",
        "run.steps=50",
        "--set",
        "run.epochs=0",
        "--set",
        "checkpoint.every_steps=50",
    )
    train(
        1,
        tmp_path,
        SGD_JOB,
        digits_h5,
        "--resume",
        str(tmp_path / "cut"),
        "--set",
        "run.steps=100",
        "--set",
        "run.epochs=0",
        "--set",
        "checkpoint.every_steps=50",
    )
    whole, _ = load_params(tmp_path / "whole" / "params.h5")
    resumed, _ = load_params(tmp_path / "cut" / "params.h5")
    assert np.array_equal(whole, resumed)
    assert summary(tmp_path / "cut")["resumed_from"]["step"] == 50
    assert summary(tmp_path / "cut")["steps"] == 100


def test_downpour_resume_restores_every_shard_and_continues(tmp_path, digits_h5):
    # fetch_every = 3: the checkpoint's step 40 is not a fetch step, yet a resumed replica must
    # fetch before its first step.
    common = [
        "--set",
        "topology.replicas=2",
        "--set",
        "run.epochs=0",
        "--set",
        "checkpoint.every_steps=20",
        "--set",
        "optimizer.warmstart_steps=0",
        "--set",
        "optimizer.fetch_every=3",
    ]
    run_dir = tmp_path / "dp"
    train(4, tmp_path, DOWNPOUR_JOB, digits_h5, "--run-dir", str(run_dir), "--set", "run.steps=40", *common)
    newest = complete_checkpoints(run_dir / "checkpoints")[0]
    manifest = read_manifest(newest)
    assert manifest["step"] == 40 and sorted(manifest["files"]) == ["shard-0.h5", "shard-1.h5"]
    saved = np.concatenate([h5py.File(newest / f"shard-{s}.h5", "r")["params"][...] for s in (0, 1)])

    # Resuming at the checkpoint's own step runs no step: the shards' parameters are the saved ones.
    train(4, tmp_path, DOWNPOUR_JOB, digits_h5, "--resume", str(run_dir), "--set", "run.steps=40", *common)
    restored, _ = load_params(run_dir / "params.h5")
    assert np.array_equal(restored, saved)
    assert summary(run_dir)["resumed_from"]["shard_versions"] == manifest["shard_versions"]

    # Resuming further continues from step 40 on every replica, on top of the saved versions
    # (with background transfers: the first fetch of a resumed run is inline all the same).
    train(
        4,
        tmp_path,
        DOWNPOUR_JOB,
        digits_h5,
        "--resume",
        str(run_dir),
        "--set",
        "run.steps=70",
        "--set",
        "optimizer.overlap_comm=true",
        *common,
    )
    after = summary(run_dir)
    assert after["replica_steps"] == [70, 70] and after["resumed_from"]["step"] == 40
    # rates count this invocation's examples only: 30 steps x 32 examples x 2 replicas
    assert round(after["examples_per_s"] * after["wall_s"]) == 30 * 32 * 2
    assert after["examples_seen"] == 70 * 32 * 2
    assert all(v > s for v, s in zip(after["shard_versions"], manifest["shard_versions"]))


def test_resume_with_another_optimizer_names_the_mismatch(tmp_path, digits_h5):
    """Shards, replicas and partitions may change on resume (test_reshard_mpi.py); the model and
    the optimizer's rule may not."""
    run_dir = tmp_path / "dp"
    common = ["--set", "run.epochs=0", "--set", "run.steps=20", "--set", "checkpoint.every_steps=10"]
    train(5, tmp_path, DOWNPOUR_JOB, digits_h5, "--run-dir", str(run_dir), *common)
    run = run_mpi(
        5,
        [
            "distbelief",
            "train",
            DOWNPOUR_JOB,
            "--set",
            f"data.path={digits_h5}",
            "--resume",
            str(run_dir),
            "--set",
            "optimizer.server_rule=sgd",
            *common,
        ],
        tmp_path,
    )
    assert_all_ranks(run, 5, exit_code=2)
    assert "does not fit this job" in run.stderr and "server_rule: the checkpoint has 'adagrad'" in run.stderr


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, digits_h5):
    run_dir = tmp_path / "plain"
    train(1, tmp_path, SGD_JOB, digits_h5, "--run-dir", str(run_dir), "--set", "run.steps=5")
    run = run_mpi(
        1, ["distbelief", "train", SGD_JOB, "--set", f"data.path={digits_h5}", "--resume", str(run_dir)], tmp_path
    )
    assert_all_ranks(run, 1, exit_code=2)
    assert "no complete checkpoint to resume from" in run.stderr
