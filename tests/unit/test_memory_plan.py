"""`distbelief plan --memory`: the predicted bytes per rank, checked against counts by hand."""

import pytest

from distbelief_mpi.commands import run_plan
from distbelief_mpi.config import parse_job
from distbelief_mpi.errors import UserInputError
from distbelief_mpi.layout import plan_layout
from distbelief_mpi.memory import DataSize, activation_bytes, format_bytes, format_memory, forward_bytes, predict_memory
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import partition_offsets, split_model
from distbelief_mpi.model.spec import LayerSpec

SPLITS = DataSize(10, 3)  # 10 training and 3 test examples


def plan(world_size, optimizer, topology, layers=(), input_shape=(4,), classes=2, data=SPLITS):
    raw = {
        "data": {"path": "absent.h5"},
        "run": {"steps": 1},
        "optimizer": optimizer,
        "topology": topology,
        "model": {"layers": [dict(layer) for layer in layers]},
    }
    spec = parse_job(raw)
    network = build_network(spec.model.layers, input_shape, classes)
    layout = plan_layout(world_size, spec, network.n_params, partition_offsets(network, spec))
    return {row.role: row for row in predict_memory(spec, network, layout, data)}


HIDDEN_3 = [{"type": "dense", "units": 3, "activation": "relu"}]  # 4 -> 3 -> 2: N = 15 + 8 = 23


def terms(row) -> dict:
    return {term.name: term.bytes for term in row.terms}


def test_downpour_by_hand():
    rows = plan(3, {"algorithm": "downpour", "batch_size": 5}, {"shards": 1, "replicas": 2}, HIDDEN_3)
    # shard: L = 23, K = min(4 landing slots, 2 replicas) = 2
    assert terms(rows["shard"]) == {
        "parameter window": (2 + 2) * 23 * 4,
        "control window": (2 + 6 * 2) * 8,  # VERSION, WRITING; per slot STATE, LANDED and 4 header words
        "Adagrad accumulator": 2 * 23 * 4,  # the current version's and the next's
    }
    assert rows["shard"].ranks == (0,) and rows["shard"].total == 368 + 112 + 184
    # replica: per example 4 x (4 inputs + 2 dlogits) + 4 (label) + 3 x 4 (hidden out)
    # + 2 x 4 (logits) + 3 x 4 (the output layer's input gradient) = 60 B; data: 5 of 10 rows
    # x (16 B example + 4 B label + 8 B order index)
    assert terms(rows["replica"]) == {
        "params, grad, accrued": 3 * 23 * 4,
        "activations": 5 * 60,
        "training data": 5 * 28,
    }
    assert rows["replica"].ranks == (1, 2)
    # replica 0 evaluates (the final evaluation into its own copy of the block, forward buffers
    # for the 3 test rows: 12 B hidden out + 8 B logits + 8 B dlogits) and holds the test split
    assert terms(rows["replica 0, in addition"]) == {
        "parameters to evaluate": 23 * 4,
        "evaluation buffers": 3 * (12 + 8 + 8),
        "test split": 3 * (16 + 4),
    }
    assert rows["replica 0, in addition"].ranks == (1,)
    # the lead streams params.h5 from the shards: one chunk, at most the longest shard
    assert terms(rows["the lead, writing params.h5"]) == {"params.h5 chunk": 23 * 4}
    assert rows["the lead, writing params.h5"].ranks == (1,)


def test_downpour_overlap_adds_two_vectors_and_chunks_bound_the_data():
    rows = plan(
        3,
        {"algorithm": "downpour", "batch_size": 5, "overlap_comm": True, "server_rule": "sgd", "landing_slots": 1},
        {"shards": 1, "replicas": 2},
        HIDDEN_3,
        data=DataSize(1000, 3),
    )
    assert terms(rows["shard"])["Adagrad accumulator"] == 23 * 4  # allocated for sgd too (checkpoints carry it)
    assert terms(rows["shard"])["parameter window"] == (2 + 1) * 23 * 4
    assert terms(rows["replica"])["transfer buffers"] == 2 * 23 * 4
    chunked = plan(
        3,
        {"algorithm": "downpour", "batch_size": 5},
        {"shards": 1, "replicas": 2},
        HIDDEN_3,
        data=DataSize(1000, 3),
    )
    assert terms(chunked["replica"])["training data"] == 500 * 28
    streaming = parse_job(
        {"data": {"path": "x.h5", "chunk_examples": 64}, "run": {"steps": 1}, "optimizer": {"algorithm": "sgd"}}
    )
    network = build_network((), (4,), 2)
    rows = {r.role: r for r in predict_memory(streaming, network, plan_layout(1, streaming, 10), DataSize(None, None))}
    assert terms(rows["replica"])["training data"] == 2 * 64 * 28  # two chunks, known without the dataset


def test_sandblaster_by_hand():
    optimizer = {"algorithm": "sandblaster", "lbfgs_memory": 3}
    rows = plan(4, optimizer, {"coordinator": True, "shards": 1, "replicas": 2}, HIDDEN_3)
    # shard: the window, 6 float64 work vectors (x, g, d, x_trial, g_trial, scratch), the
    # float64 gradient sum and up to m + 1 = 4 history pairs
    assert terms(rows["shard"]) == {
        "parameter window": 4 * 23 * 4,
        "control window": (2 + 6 * 2) * 8,
        "L-BFGS vectors": 6 * 23 * 8,
        "gradient sum": 23 * 8,
        "L-BFGS history": 2 * 4 * 23 * 8,
    }
    # coordinator: cached dots and the portions of a 10-example batch (1 example each:
    # 10 // (2 replicas x 8) rounds to 1)
    assert terms(rows["coordinator"]) == {"L-BFGS dot products": 2 * 16 * 100, "portions of a batch": 10 * 128}
    # replica: params, grad, result, accrued; one example per portion; the whole split
    assert terms(rows["replica"]) == {
        "params, grad, result, accrued": 4 * 23 * 4,
        "activations": 60,
        "training data": 10 * 28,
    }
    assert terms(rows["replica 0, in addition"]) == {"evaluation buffers": 3 * 28, "test split": 3 * 20}
    assert rows["replica 0, in addition"].ranks == (2,) and rows["the lead, writing params.h5"].ranks == (0,)


def test_partition_activations_by_hand():
    """input 1x6x4 -> local 2 filters 3x3 (2x4x2) -> maxpool 2 (2x2x1) -> 2 classes, 2 partitions.
    Partition 0: the local layer computes output rows [0, 2) from input rows [0, 4); the pool
    its row [0, 1) from the local's rows [0, 2); the output layer class 0 from all 4 inputs."""
    layers = [LayerSpec("local", filters=2, patch=3, stride=1, activation="relu"), LayerSpec("maxpool", size=2)]
    network = build_network(layers, (1, 6, 4), 2)
    plans, _ = split_model(network, 2)
    subs = [p.sublayers[0] for p in plans]
    assert [(s.in_shape, s.out_shape) for s in subs] == [
        ((1, 4, 4), (2, 2, 2)),
        ((2, 2, 2), (2, 1, 1)),
        ((2, 2, 1), (1,)),
    ]
    minibatch = 4 * 24 + 4 + 4 * 2  # input, label, dlogits
    local = 4 * 8 + 4 * 16  # output; assembled input (halo rows)
    pool = 4 * 2 + 4 * 8 + 4 * 8 + 8 * 2  # output; input gradient; assembled input; argmax (int64)
    output = 4 * 1 + 4 * 4 + 4 * 4  # output; input gradient; gathered input
    logits = 4 * 2  # gathered on every partition
    assert activation_bytes(subs, (1, 6, 4), 2, partitioned=True) == minibatch + local + pool + output + logits
    # evaluating, forward only: outputs, assembled inputs, argmax; the gathered logits and dlogits
    assert forward_bytes(subs, 2, partitioned=True) == (4 * 8 + 4 * 16) + (4 * 2 + 4 * 8 + 8 * 2) + (4 + 4 * 4) + 16
    unpartitioned = activation_bytes(network.layers, (1, 6, 4), 2, partitioned=False)
    assert unpartitioned == minibatch + 4 * 16 + (4 * 4 + 4 * 16 + 8 * 4) + (4 * 2 + 4 * 4)


def test_more_shards_or_partitions_mean_less_per_rank():
    wide = [{"type": "dense", "units": 40}]
    downpour = {"algorithm": "downpour"}
    one_shard = plan(3, downpour, {"shards": 1, "replicas": 2}, wide)
    two_shards = plan(4, downpour, {"shards": 2, "replicas": 2}, wide)
    assert two_shards["shard"].total < one_shard["shard"].total
    image, downpour = [{"type": "local", "filters": 4, "patch": 3}], {"algorithm": "downpour", "batch_size": 2}
    whole = plan(3, downpour, {"shards": 2, "replicas": 1}, image, input_shape=(1, 12, 12))
    halves = plan(
        4, downpour, {"shards": 2, "replicas": 1, "partitions_per_replica": 2}, image, input_shape=(1, 12, 12)
    )
    assert halves["replica partition 0"].total < whole["replica"].total


def test_format_and_unknown_sizes():
    assert [format_bytes(n) for n in (512, 1210, 1_210_000_000, 3e12)] == ["512 B", "1.21 kB", "1.21 GB", "3 TB"]
    rows = plan(3, {"algorithm": "downpour"}, {"shards": 1, "replicas": 2}, HIDDEN_3, data=DataSize(None, None))
    assert terms(rows["replica"])["training data"] is None and not rows["replica"].complete
    text = format_memory(list(rows.values()))
    assert "replica" in text and "?" in text and "lower bound" in text


def test_plan_takes_the_input_from_the_command_line_when_the_data_is_absent(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(
        '[topology]\nshards = 1\nreplicas = 2\n[optimizer]\nalgorithm = "downpour"\n'
        f'[data]\npath = "{tmp_path / "absent.h5"}"\n[run]\nsteps = 1\n'
    )
    assert run_plan(str(job), [], 3, memory=True, input_shape="1,8,8", n_classes=10) == 0
    out = capsys.readouterr().out
    assert "model (650 parameters, input (1, 8, 8), 10 classes)" in out and "memory per rank" in out
    with pytest.raises(UserInputError, match="go together"):
        run_plan(str(job), [], 3, memory=True, input_shape="1,8,8")
    with pytest.raises(UserInputError, match="--input-shape 1,8"):
        run_plan(str(job), [], 3, memory=True, input_shape="1,8", n_classes=10)
    with pytest.raises(UserInputError, match="--memory needs the model"):
        run_plan(str(job), [], 3, memory=True)
