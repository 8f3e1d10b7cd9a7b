"""Model parallelism under real mpiexec: partitions exchanging over MPI compute exactly the
whole network's step, a Downpour job of partitioned replicas trains, and Sandblaster runs on them
(resuming bit-identically)."""

import json

import numpy as np
import pytest

from distbelief_mpi.checkpoint.params_file import load_params
from distbelief_mpi.config import load_job
from distbelief_mpi.data.hdf5 import read_info, read_split
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import plan_partitions
from tests.mpi.programs.partitioned_step import MODELS
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi


@pytest.mark.parametrize("model", ["mlp", "local"])
@pytest.mark.parametrize("parts", [2, 3])
def test_partitions_over_mpi_equal_the_whole_network(tmp_path, model, parts):
    run = run_mpi(parts, ["program", "partitioned_step", model], tmp_path, timeout=120)
    assert_all_ranks(run, parts)
    shape, layers = MODELS[model]
    n_params = build_network(layers, shape, n_classes=6).n_params
    assert sum(run.ranks[p]["data"]["n_params"] for p in range(parts)) == n_params  # each parameter once
    for p in range(parts):
        data = run.ranks[p]["data"]
        assert data["loss_error"] < 1e-12 and data["correct_equal"] and data["grad_error"] < 1e-12, (p, data)
        assert data["bytes_sent"] > 0


def test_mpi_bytes_match_the_geometry(tmp_path):
    """MLP 30 -> 11 -> 7 -> 6 classes, P = 2, batch 9, float64: each dense layer's input is
    gathered (own units to the other partition) and its gradient returned (the other's units)."""
    run = run_mpi(2, ["program", "partitioned_step", "mlp"], tmp_path, timeout=120)
    assert_all_ranks(run, 2)
    shape, layers = MODELS["mlp"]
    plans = plan_partitions(build_network(layers, shape, n_classes=6), 2)
    for p in range(2):
        values = 0
        for plan in plans[1:]:  # the first layer reads the input batch itself
            bounds = plan.in_split[1]
            own, other = bounds[p], bounds[1 - p]
            values += (own[1] - own[0]) + (other[1] - other[0])
        logits = plans[-1].out_split[1][p]
        values += logits[1] - logits[0]
        assert run.ranks[p]["data"]["bytes_sent"] == 9 * 8 * values


def test_downpour_with_two_partitions_per_replica_trains(tmp_path, digits_h5):
    """2 shards + 2 replicas x 2 partitions (6 ranks), a locally connected net on digits."""
    run_dir = tmp_path / "run"
    target = [
        "distbelief",
        "train",
        str(REPO / "jobs" / "digits_lc_partitioned.toml"),
        "--set",
        f"data.path={digits_h5}",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--set",
        "run.epochs=25",
        "--set",
        "checkpoint.every_steps=100",
    ]
    run = run_mpi(6, target, tmp_path, timeout=300)
    assert_all_ranks(run, 6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["partitions_per_replica"] == 2 and summary["n_replicas"] == 2
    assert summary["replica_steps"][0] == summary["replica_steps"][1] > 0
    assert summary["test_accuracy"] >= 0.9, summary
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())  # shards checkpointed the blocks


def test_sandblaster_with_partitioned_replicas_follows_the_unpartitioned_run(tmp_path, digits_h5):
    """Coordinator + 2 shards + 2 replicas, unpartitioned (5 ranks) and split in 2 (7 ranks):
    the same L-BFGS iterates, so the same batch losses, up to float32 summation order."""
    losses = {}
    for parts in (1, 2):
        run_dir = tmp_path / f"p{parts}"
        sets = [
            f"data.path={digits_h5}",
            "topology.replicas=2",
            f"topology.partitions_per_replica={parts}",
            'model.layers=[{type="local", filters=4, patch=3, activation="relu"}, '
            '{type="dense", units=32, activation="relu"}]',
            "run.steps=10",
            "run.eval_every=0",
        ]
        target = [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_sandblaster.toml"),
            "--run-dir",
            str(run_dir),
            "--no-progress",
            *[item for kv in sets for item in ("--set", kv)],
        ]
        run = run_mpi(3 + 2 * parts, target, tmp_path / f"p{parts}-results", timeout=300)
        assert_all_ranks(run, 3 + 2 * parts)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[parts] = [line["train_loss"] for line in lines if line["kind"] == "train"]
    assert len(losses[2]) == 10
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)


def test_partitioned_sandblaster_resumes_bit_identically(tmp_path, digits_h5):
    """Coordinator + 2 shards + one replica split in 2 (5 ranks; shards hold the parameters
    partition-major): stopped after 5 iterations with a checkpoint, resumed to 10, the final
    parameters equal a run of 10 never stopped."""
    sets = [
        f"data.path={digits_h5}",
        "topology.replicas=1",
        "topology.partitions_per_replica=2",
        'model.layers=[{type="local", filters=4, patch=3, activation="relu"}, '
        '{type="dense", units=32, activation="relu"}]',
        "run.eval_every=0",
        "checkpoint.every_steps=5",
    ]

    def train(name, steps, *resume):
        target = [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_sandblaster.toml"),
            "--run-dir",
            str(tmp_path / name),
            "--no-progress",
            *resume,
            *[item for kv in [*sets, f"run.steps={steps}"] for item in ("--set", kv)],
        ]
        assert_all_ranks(run_mpi(5, target, tmp_path / f"{name}-{steps}-results", timeout=300), 5)
        return load_params(tmp_path / name / "params.h5")[0]

    whole = train("whole", 10)
    assert_canonical(tmp_path / "whole", whole, digits_h5)
    train("stopped", 5)
    resumed = train("stopped", 10, "--resume", "auto")
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["resumed_from"]["step"] == 5
    assert np.array_equal(resumed, whole)


def assert_canonical(run_dir, params, dataset):
    """params.h5 of a partitioned run holds the canonical order: the whole network evaluates it
    to the figures the run's replica 0 computed model-parallel (summary.json)."""
    spec = load_job(run_dir / "job.toml")
    info, (x_test, y_test) = read_info(dataset), read_split(dataset, "test")
    network = build_network(spec.model.layers, info.input_shape, info.n_classes, source=spec.source)
    loss, accuracy = network.evaluate(params, x_test, y_test)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert loss == pytest.approx(summary["test_loss"], rel=1e-4)
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1.5 / len(y_test))
