"""--init-from under real mpiexec: a new run starts from another run's params.h5.

The step-0 parameters are observed through the final ones: with an Adagrad accumulator of 1e30
(or an SGD rate of 1e-30) every update is below half a float32 ulp of the weights, so the
parameters never change and params.h5 must equal the source's bit for bit, whatever the new
layout (partitioned replicas hold them in another order)."""

import json
import subprocess
import sys

import h5py
import pytest

from tests.mpi.runner import REPO, assert_all_ranks, run_mpi

SGD_JOB = str(REPO / "jobs" / "digits_mlp.toml")
DOWNPOUR_JOB = str(REPO / "jobs" / "digits_downpour.toml")
FROZEN = {
    "downpour": ["optimizer.adagrad_initial_accumulator=1e30", "optimizer.warmstart_steps=0"],
    "sgd": ["optimizer.learning_rate=1e-30"],
}


def sets(*settings: str) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, digits_h5):
    """A finished 50-step SGD run: the weights to start from."""
    run_dir = tmp_path_factory.mktemp("init-from") / "source"
    command = [sys.executable, "-m", "distbelief_mpi", "train", SGD_JOB, "--run-dir", str(run_dir), "--no-progress"]
    command += sets(f"data.path={digits_h5}", "run.epochs=0", "run.steps=50")
    subprocess.run(command, check=True, capture_output=True, timeout=120, cwd=REPO)
    return run_dir


def params(path) -> bytes:
    return h5py.File(path, "r")["params"][...].tobytes()


@pytest.mark.parametrize(
    "ranks, job, frozen, topology",
    [
        (
            6,
            DOWNPOUR_JOB,
            "downpour",
            ["topology.shards=2", "topology.replicas=2", "topology.partitions_per_replica=2"],
        ),
        (4, DOWNPOUR_JOB, "downpour", ["topology.shards=3", "topology.replicas=1"]),
        (1, SGD_JOB, "sgd", []),
    ],
)
def test_a_new_run_starts_from_the_source_weights(tmp_path, digits_h5, source_run, ranks, job, frozen, topology):
    run_dir = tmp_path / "new"
    settings = sets(f"data.path={digits_h5}", "run.epochs=0", "run.steps=3", *FROZEN[frozen], *topology)
    command = ["distbelief", "train", job, "--init-from", str(source_run), "--run-dir", str(run_dir), *settings]
    assert_all_ranks(run_mpi(ranks, command, tmp_path, timeout=180), ranks)
    assert params(run_dir / "params.h5") == params(source_run / "params.h5")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["initialized_from"] == str((source_run / "params.h5").resolve())


def refused(tmp_path, *arguments: str) -> str:
    """A one-rank run with these arguments: exit 2 and nothing written; returns stderr."""
    command = [sys.executable, "-m", "distbelief_mpi", "train", DOWNPOUR_JOB, *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_bad_sources_are_refused_by_name(tmp_path, digits_h5, source_run):
    common = sets(f"data.path={digits_h5}", "topology.shards=0", "optimizer.algorithm=sgd", "topology.replicas=1")
    missing = refused(tmp_path, "--init-from", str(tmp_path / "nowhere"), *common)
    assert "nowhere" in missing and "not found" in missing
    other_model = refused(tmp_path, "--init-from", str(source_run), *common, "--set", "model.layers=[]")
    assert "model.layers differ" in other_model
    both = refused(tmp_path, "--init-from", str(source_run), "--resume", str(source_run), *common)
    assert "give one of them" in both
