"""2-D partitions (topology.partition_grid) under real mpiexec: a 2 x 2 grid of ranks computes
the whole network's step with halos (corners included) over MPI and sends the geometry's bytes,
and a Downpour job with each replica in 2 x 2 blocks trains to the partitioned job's accuracy."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from distbelief_mpi.checkpoint.params_file import load_params
from distbelief_mpi.model.network import build_network
from tests.mpi.programs.partitioned_step import MODELS
from tests.mpi.runner import REPO, assert_all_ranks, run_mpi
from tests.mpi.test_model_parallel_mpi import assert_canonical

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
import cost_model as cm  # noqa: E402


def test_a_2x2_grid_over_mpi_equals_the_whole_network(tmp_path):
    """The local model (2x16x12 -> local -> maxpool -> LCN -> local -> dense) in 2 x 2 blocks on
    4 ranks, float64, batch 9: each partition's loss and gradient block equal the whole network's,
    and the bytes each sent equal the cost model's count from the planner's blocks."""
    run = run_mpi(4, ["program", "partitioned_step", "local", "2x2"], tmp_path, timeout=180)
    assert_all_ranks(run, 4)
    shape, layers = MODELS["local"]
    network = build_network(layers, shape, n_classes=6, dtype=np.float64)
    assert sum(run.ranks[p]["data"]["n_params"] for p in range(4)) == network.n_params
    expected = cm.bytes_per_partition(network, 4, 9, (2, 2)).tolist()
    for p in range(4):
        data = run.ranks[p]["data"]
        assert data["loss_error"] < 1e-12 and data["correct_equal"] and data["grad_error"] < 1e-12, (p, data)
        assert data["bytes_sent"] == expected[p], (p, data["bytes_sent"], expected)


def test_downpour_with_replicas_in_2x2_blocks_trains(tmp_path, digits_h5):
    """2 shards + 1 replica in 2 x 2 blocks (6 ranks), jobs/digits_lc_partitioned.toml's network:
    its local layer's 6 x 6 output in 3 x 3 blocks. Reaches the partitioned job's accuracy band
    (>= 0.9, as tests/mpi/test_model_parallel_mpi.py asks of 2 replicas x 2 row partitions), and
    params.h5 holds the canonical order (the whole network evaluates it to the run's figures)."""
    run_dir = tmp_path / "run"
    sets = [
        f"data.path={digits_h5}",
        "topology.replicas=1",
        "topology.partitions_per_replica=4",
        'topology.partition_grid="2x2"',
        "run.epochs=25",
        "checkpoint.every_steps=100",
    ]
    target = [
        "distbelief",
        "train",
        str(REPO / "jobs" / "digits_lc_partitioned.toml"),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *[item for kv in sets for item in ("--set", kv)],
    ]
    run = run_mpi(6, target, tmp_path, timeout=300)
    assert_all_ranks(run, 6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["partitions_per_replica"] == 4 and summary["replica_steps"][0] > 0
    assert summary["test_accuracy"] >= 0.9, summary
    assert 'partition_grid = "2x2"' in (run_dir / "job.toml").read_text()
    assert_canonical(run_dir, load_params(run_dir / "params.h5")[0], digits_h5)


def test_sandblaster_with_a_replica_in_2x2_blocks_follows_the_unpartitioned_run(tmp_path, digits_h5):
    """Coordinator + 2 shards + 1 replica, whole (4 ranks) and in 2 x 2 blocks (7 ranks): the
    shards hold the blocks' partition-major order, the coordinator gathers x in the canonical one;
    the same L-BFGS iterates, so the same batch losses up to float32 summation order."""
    losses = {}
    for parts, grid in ((1, "rows"), (4, "2x2")):
        run_dir = tmp_path / grid
        sets = [
            f"data.path={digits_h5}",
            "topology.replicas=1",
            f"topology.partitions_per_replica={parts}",
            f'topology.partition_grid="{grid}"',
            'model.layers=[{type="local", filters=4, patch=3, activation="relu"}, '
            '{type="dense", units=32, activation="relu"}]',
            "run.steps=8",
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
        run = run_mpi(3 + parts, target, tmp_path / f"{grid}-results", timeout=300)
        assert_all_ranks(run, 3 + parts)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[grid] = [line["train_loss"] for line in lines if line["kind"] == "train"]
    assert len(losses["2x2"]) == 8
    assert losses["2x2"] == pytest.approx(losses["rows"], rel=1e-4)


def test_sandblaster_in_2x2_blocks_resumes_bit_identically_and_onto_bands(tmp_path, digits_h5):
    """Coordinator + 2 shards + 1 replica in 2 x 2 blocks (7 ranks; the shards hold the blocks'
    order): stopped after 4 iterations with a checkpoint and resumed to 8, the final parameters
    equal a run of 8 never stopped. The same checkpoint resumed in bands of rows (another order
    of the same 4 partitions' parameters) is re-sliced: with no further iteration its parameters
    are the checkpoint's exactly."""
    sets = [
        f"data.path={digits_h5}",
        "topology.replicas=1",
        "topology.partitions_per_replica=4",
        'model.layers=[{type="local", filters=4, patch=3, activation="relu"}, '
        '{type="dense", units=32, activation="relu"}]',
        "run.eval_every=0",
        "checkpoint.every_steps=4",
    ]

    def train(name, steps, grid, *resume, exit_code=0):
        target = [
            "distbelief",
            "train",
            str(REPO / "jobs" / "digits_sandblaster.toml"),
            "--run-dir",
            str(tmp_path / name),
            "--no-progress",
            *resume,
            *[
                item
                for kv in [*sets, f"run.steps={steps}", f'topology.partition_grid="{grid}"']
                for item in ("--set", kv)
            ],
        ]
        run = run_mpi(7, target, tmp_path / f"{name}-{steps}-{grid}-results", timeout=300)
        assert_all_ranks(run, 7, exit_code=exit_code)
        return run

    train("whole", 8, "2x2")
    train("stopped", 4, "2x2")
    shutil.copytree(tmp_path / "stopped", tmp_path / "bands")
    train("bands", 4, "rows", "--resume", "auto")
    bands = json.loads((tmp_path / "bands" / "summary.json").read_text())["resumed_from"]
    assert bands["from_topology"]["partition_grid"] == "2x2", bands
    at_4 = [load_params(tmp_path / name / "params.h5")[0] for name in ("stopped", "bands")]
    assert np.array_equal(*at_4)
    train("stopped", 8, "2x2", "--resume", "auto")
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["resumed_from"]["step"] == 4
    whole, resumed = (load_params(tmp_path / name / "params.h5")[0] for name in ("whole", "stopped"))
    assert np.array_equal(resumed, whole)
