"""A Sandblaster shard's checkpoint file: round trip, and clear errors naming the file."""

import numpy as np
import pytest

from distbelief_mpi.checkpoint.sandblaster_shard import load_vectors, save_vectors
from distbelief_mpi.errors import CheckpointError
from distbelief_mpi.optim.vector_ops import ShardVectors
from distbelief_mpi.roles.sandblaster.checkpoints import shard_save_reply


def shard_with_history(length=6, pairs=2) -> ShardVectors:
    vectors, rng = ShardVectors(length, 3), np.random.default_rng(0)
    for pid in range(pairs):
        for name in ("x", "g", "x_trial", "g_trial"):
            vectors.load(name, rng.normal(size=length))
        vectors.execute(("push", pid + 4))
    return vectors


def test_a_shard_file_restores_x_g_and_the_history_exactly(tmp_path):
    vectors = shard_with_history()
    name, digest = save_vectors(tmp_path, 1, 10, 16, vectors.state())
    assert name == "shard-1.h5" and len(digest) == 64
    restored = ShardVectors(6, 3)
    restored.restore(load_vectors(tmp_path / name, 1, 10, 16))
    assert list(restored.history) == [4, 5]
    for key in ("x", "g", "s:4", "y:4", "s:5", "y:5"):
        assert np.array_equal(restored[key], vectors[key]), key


def test_between_batches_the_history_is_left_out(tmp_path):
    name, _ = save_vectors(tmp_path, 0, 0, 6, shard_with_history().state(with_history=False))
    state = load_vectors(tmp_path / name, 0, 0, 6)
    assert state["pids"] == [] and state["s"].shape == state["y"].shape == (0, 6)


def test_an_empty_history_and_an_empty_slice_round_trip(tmp_path):
    for length in (0, 5):
        name, _ = save_vectors(tmp_path / str(length), 0, 0, length, ShardVectors(length, 2).state())
        state = load_vectors(tmp_path / str(length) / name, 0, 0, length)
        assert state["pids"] == [] and state["s"].shape == (0, length)


def test_a_wrong_slice_or_a_garbage_file_is_a_clear_error(tmp_path):
    name, _ = save_vectors(tmp_path, 0, 0, 6, shard_with_history().state())
    with pytest.raises(CheckpointError, match=r"shard-0\.h5: holds slice \(0, 6\)"):
        load_vectors(tmp_path / name, 0, 6, 12)
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match="garbage.h5: cannot read shard 2"):
        load_vectors(tmp_path / "garbage.h5", 2, 0, 6)


def test_a_write_error_becomes_a_reply_not_a_crash(tmp_path):
    (tmp_path / "a_file").write_text("")
    reply = shard_save_reply(str(tmp_path / "a_file" / "step-000000003"), True, 0, 0, 6, shard_with_history())
    assert set(reply) == {"error"} and "cannot write the checkpoint" in reply["error"]
