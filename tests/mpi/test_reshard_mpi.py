"""Resume onto another topology under real mpiexec: a checkpoint written with (shards, replicas,
partitions) = (2, 3, 1) resumes with (1, 2, 1), (3, 2, 1) and (2, 1, 2), Sandblaster's (2, 2) with
(1, 3). A resumed run whose step limit is the checkpoint's step trains no further, so its
params.h5 must equal the checkpoint's parameters exactly; one resumed run trains on to the
accuracy band."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

DOWNPOUR_JOB = str(REPO / "jobs" / "digits_downpour.toml")
SANDBLASTER_JOB = str(REPO / "jobs" / "digits_sandblaster.toml")


def train(tmp_path, job, data, shape, *extra):
    """mpiexec a job with topology (shards, replicas, partitions) = shape; returns summary.json."""
    shards, replicas, parts = shape
    ranks = int(job == SANDBLASTER_JOB) + shards + replicas * parts
    topology = [
        f"topology.shards={shards}",
        f"topology.replicas={replicas}",
        f"topology.partitions_per_replica={parts}",
    ]
    sets = [arg for setting in ["run.epochs=0", "optimizer.warmstart_steps=0", *topology] for arg in ("--set", setting)]
    command = ["distbelief", "train", job, "--set", f"data.path={data}", "--no-progress", *sets, *extra]
    run = run_mpi(ranks, command, tmp_path, timeout=300)
    assert_all_ranks(run, ranks)
    run_dir = extra[extra.index("--resume") + 1] if "--resume" in extra else extra[extra.index("--run-dir") + 1]
    return json.loads((Path(run_dir) / "summary.json").read_text())


def saved_vector(run_dir: Path, key: str, step: int = 20) -> np.ndarray:
    """The checkpoint's vector, its shard files in order (unpartitioned: the canonical order)."""
    directory = run_dir / "checkpoints" / f"step-{step:09d}"
    files = sorted(directory.glob("shard-*.h5"), key=lambda p: int(p.stem.split("-")[1]))
    return np.concatenate([h5py.File(path, "r")[key][...] for path in files])


@pytest.fixture(scope="module")
def downpour_checkpoint(tmp_path_factory, digits_h5):
    """A (2, 3, 1) Downpour run checkpointed at step 20."""
    base = tmp_path_factory.mktemp("reshard")
    train(base, DOWNPOUR_JOB, digits_h5, (2, 3, 1), "--set", "run.steps=20", "--set", "checkpoint.every_steps=10",
          "--run-dir", str(base / "base"))  # fmt: skip
    return base / "base"


@pytest.mark.parametrize("shape", [(1, 2, 1), (3, 2, 1), (2, 1, 2)])
def test_downpour_resumes_onto_another_topology_exactly(tmp_path, digits_h5, downpour_checkpoint, shape):
    shutil.copytree(downpour_checkpoint, tmp_path / "run")
    summary = train(
        tmp_path, DOWNPOUR_JOB, digits_h5, shape, "--set", "run.steps=20", "--resume", str(tmp_path / "run")
    )
    assert (
        h5py.File(tmp_path / "run" / "params.h5", "r")["params"][...].tobytes()
        == saved_vector(downpour_checkpoint, "params").tobytes()
    )
    assert summary["resumed_from"]["from_topology"] == {
        "shards": 2,
        "replicas": 3,
        "partitions_per_replica": 1,
        "partition_grid": "rows",
    }
    assert (summary["n_shards"], summary["n_replicas"], summary["partitions_per_replica"]) == shape


def test_downpour_resumed_onto_fewer_ranks_trains_on(tmp_path, digits_h5, downpour_checkpoint):
    shutil.copytree(downpour_checkpoint, tmp_path / "run")
    summary = train(
        tmp_path, DOWNPOUR_JOB, digits_h5, (1, 2, 1), "--set", "run.steps=400", "--resume", str(tmp_path / "run")
    )
    assert summary["steps"] == 2 * 400 and summary["test_accuracy"] >= 0.92, summary


def test_sandblaster_resumes_onto_another_topology_exactly(tmp_path, digits_h5):
    every = ("--set", "checkpoint.every_steps=10")
    train(
        tmp_path,
        SANDBLASTER_JOB,
        digits_h5,
        (2, 2, 1),
        *every,
        "--set",
        "run.steps=12",
        "--run-dir",
        str(tmp_path / "base"),
    )
    shutil.copytree(tmp_path / "base", tmp_path / "run")
    summary = train(
        tmp_path,
        SANDBLASTER_JOB,
        digits_h5,
        (1, 3, 1),
        *every,
        "--set",
        "run.steps=10",
        "--resume",
        str(tmp_path / "run"),
    )
    x = saved_vector(tmp_path / "base", "x", step=10)
    assert h5py.File(tmp_path / "run" / "params.h5", "r")["params"][...].tobytes() == x.astype(np.float32).tobytes()
    assert summary["resumed_from"]["from_topology"]["shards"] == 2


def test_sandblaster_history_carries_over_to_other_shards(tmp_path, digits_h5):
    """One replica is deterministic: 10 iterations on 2 shards, resumed on 1 shard for 6 more,
    end where 16 uninterrupted iterations do, which needs the L-BFGS history re-sliced too."""
    one = ("--set", "optimizer.backup_tasks=false", "--set", "checkpoint.every_steps=10")
    train(
        tmp_path,
        SANDBLASTER_JOB,
        digits_h5,
        (2, 1, 1),
        *one,
        "--set",
        "run.steps=16",
        "--run-dir",
        str(tmp_path / "whole"),
    )
    train(
        tmp_path,
        SANDBLASTER_JOB,
        digits_h5,
        (2, 1, 1),
        *one,
        "--set",
        "run.steps=10",
        "--run-dir",
        str(tmp_path / "cut"),
    )
    assert len(h5py.File(tmp_path / "cut/checkpoints/step-000000010/shard-0.h5", "r")["s"]) > 0
    train(
        tmp_path,
        SANDBLASTER_JOB,
        digits_h5,
        (1, 1, 1),
        *one,
        "--set",
        "run.steps=16",
        "--resume",
        str(tmp_path / "cut"),
    )
    whole = h5py.File(tmp_path / "whole" / "params.h5", "r")["params"][...]
    resumed = h5py.File(tmp_path / "cut" / "params.h5", "r")["params"][...]
    np.testing.assert_allclose(resumed, whole, rtol=0, atol=1e-5)
