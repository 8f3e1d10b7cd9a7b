"""Memory that shrinks with partitions and shards (issue 12): every rank's measured peak RSS
stays within `distbelief plan --memory`'s prediction plus a runtime allowance, for a model
large enough to dominate that allowance, and shrinks as partitions and shards are added.

All ranks share one node here, so a replica's RSS also counts the pages of the shards' windows
it reads and writes (memory.shared_window_bytes): the prediction adds them."""

import json
import re
from pathlib import Path

import pytest

from distbelief_mpi.config import load_job
from distbelief_mpi.data.hdf5 import read_info
from distbelief_mpi.layout import plan_layout
from distbelief_mpi.memory import DataSize, predicted_by_rank
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import partition_offsets
from tests.mpi.runner import assert_all_ranks, run_mpi

# Python, NumPy, MPI and the loaded Numba kernels: about 0.2 GB per rank here (a 1-unit model's
# peak); the allowance also covers allocator slack and short-lived temporaries.
RUNTIME_ALLOWANCE = 350e6
HIDDEN = 5000  # digits (64 inputs) -> dense 5000 -> dense 5000 -> 10: 25.4M parameters, 102 MB


def job_file(tmp_path: Path, digits_h5: Path, shards: int, parts: int) -> Path:
    layers = f'{{ type = "dense", units = {HIDDEN}, activation = "relu" }}'
    job = tmp_path / f"memory-{shards}x{parts}.toml"
    job.write_text(
        f"[topology]\nshards = {shards}\nreplicas = 1\npartitions_per_replica = {parts}\n\n"
        f"[model]\nlayers = [{layers}, {layers}]\n\n"
        '[optimizer]\nalgorithm = "downpour"\nlearning_rate = 0.01\nbatch_size = 16\n'
        'server_rule = "adagrad"\nserver_learning_rate = 0.01\nlanding_slots = 1\n\n'
        f'[data]\npath = "{digits_h5}"\n\n[run]\nsteps = 6\nseed = 0\nprogress_seconds = 0\n'
    )
    return job


def predicted_per_rank(job: Path, ranks: int) -> dict[int, int]:
    spec = load_job(str(job))
    info = read_info(spec.data.path)
    network = build_network(spec.model.layers, info.input_shape, info.n_classes)
    layout = plan_layout(ranks, spec, network.n_params, partition_offsets(network, spec))
    return predicted_by_rank(spec, network, layout, DataSize(info.n_train, info.n_test), one_node=True)


def measured_per_rank(run_dir: Path) -> dict[int, int]:
    peaks = {}
    for log in (run_dir / "logs").glob("rank-*.log"):
        for line in log.read_text().splitlines():
            if match := re.search(r"\[rank (\d+) .*peak RSS (\d+) bytes", line):
                peaks[int(match.group(1))] = int(match.group(2))
    return peaks


@pytest.mark.timeout(600)
@pytest.mark.parametrize("shards, parts", [(1, 1), (2, 2)])
def test_every_rank_stays_within_its_predicted_memory(tmp_path, digits_h5, shards, parts):
    job, ranks = job_file(tmp_path, digits_h5, shards, parts), shards + parts
    run = run_mpi(ranks, ["distbelief", "train", str(job), "--run-dir", str(tmp_path / "run")], tmp_path, timeout=300)
    assert_all_ranks(run, ranks)
    measured, predicted = measured_per_rank(tmp_path / "run"), predicted_per_rank(job, ranks)
    assert set(measured) == set(range(ranks)), measured
    over = {r: (measured[r], predicted[r]) for r in measured if measured[r] > predicted[r] + RUNTIME_ALLOWANCE}
    assert not over, f"rank: (measured, predicted) bytes over prediction + allowance: {over}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["peak_rss_bytes"]["shard"] == max(measured[r] for r in range(shards))


def test_a_rank_holds_less_when_the_model_is_split(tmp_path, digits_h5):
    """The model dominates here (102 MB x a few copies per rank): 2 shards and 2 partitions must
    give every rank a smaller peak than 1 shard and 1 replica give theirs."""
    peaks = {}
    for shards, parts in ((1, 1), (2, 2)):
        run_dir = tmp_path / f"run-{shards}x{parts}"
        job = job_file(tmp_path, digits_h5, shards, parts)
        run = run_mpi(shards + parts, ["distbelief", "train", str(job), "--run-dir", str(run_dir)], tmp_path)
        assert_all_ranks(run, shards + parts)
        peaks[(shards, parts)] = measured_per_rank(run_dir)
    whole, split = peaks[(1, 1)], peaks[(2, 2)]
    assert max(split[0], split[1]) < whole[0], (whole, split)  # shards
    assert max(split[2], split[3]) < whole[1], (whole, split)  # replica partitions


@pytest.mark.timeout(600)
def test_resuming_onto_more_ranks_stays_within_the_new_prediction(tmp_path, digits_h5):
    """A (1, 1) checkpoint resumed on (2, 2): each new shard re-slices its part out of the one old
    file (checkpoint/reshard.py) and must stay within the (2, 2) prediction, as it would have had
    it drawn its slice; the resumed run trains 2 steps more."""
    run_dir = tmp_path / "run"
    first = ["distbelief", "train", str(job_file(tmp_path, digits_h5, 1, 1)), "--run-dir", str(run_dir)]
    assert_all_ranks(run_mpi(2, [*first, "--set", "checkpoint.every_steps=6"], tmp_path, timeout=300), 2)
    job = job_file(tmp_path, digits_h5, 2, 2)
    resumed = ["distbelief", "train", str(job), "--resume", str(run_dir), "--set", "run.steps=8"]
    assert_all_ranks(run_mpi(4, resumed, tmp_path, timeout=300), 4)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"]["from_topology"]["shards"] == 1, summary["resumed_from"]
    measured, predicted = measured_per_rank(run_dir), predicted_per_rank(job, 4)
    over = {r: (measured[r], predicted[r]) for r in measured if measured[r] > predicted[r] + RUNTIME_ALLOWANCE}
    assert not over, f"rank: (measured, predicted) bytes over prediction + allowance: {over}"
