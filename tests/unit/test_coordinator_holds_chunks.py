"""The Sandblaster coordinator holds no parameter vector (roles/sandblaster/cluster.py): a test
evaluation is asked of replica 0 at the published x, and params.h5 is read from the shards a
chunk at a time. Pure, with stand-in shards and replica 0 answering through the messenger."""

from collections import defaultdict, deque

import numpy as np

from distbelief_mpi.comm.messages import (
    SHARD_COMMAND,
    SHARD_REPLY,
    TEST_RESULT,
    WORK,
    EvaluateTest,
    GatherVector,
    PublishPoint,
    ShardReply,
    TestFigures,
)
from distbelief_mpi.config import Optimizer
from distbelief_mpi.optim.vector_ops import ShardVectors
from distbelief_mpi.roles.sandblaster.cluster import ShardsAndReplicas
from distbelief_mpi.roles.sandblaster.shard import _run as run_command

SHARD_RANGES = [(0, 7), (7, 12)]  # shard s holds x[start:stop] of the shard-order vector
X = np.arange(12, dtype=np.float64) / 4


class StandIns:
    """A messenger whose shards (ranks 1, 2) and replica 0 (rank 3) answer at once."""

    def __init__(self):
        self.sent: list[tuple[object, int]] = []
        self.replies: dict[tuple[str, int], deque] = defaultdict(deque)

    def send(self, channel, record, dest):
        self.sent.append((record, dest))
        if channel is SHARD_COMMAND:
            self.replies[SHARD_REPLY.name, dest].append(ShardReply(self._shard_answer(record, dest)))
        elif channel is WORK and isinstance(record, EvaluateTest):
            self.replies[TEST_RESULT.name, dest].append(TestFigures(0.5, 0.75, record.n_examples or 100))

    def wait(self, channel, source, on_wait=None, limit=5e-3):
        return self.replies[channel.name, source].popleft()

    @staticmethod
    def _shard_answer(command, rank):
        start, stop = SHARD_RANGES[rank - 1]
        if isinstance(command, GatherVector):
            return X[start:stop][command.start : command.stop].astype(np.float32)
        return 1  # PublishPoint: the published version


def cluster() -> ShardsAndReplicas:
    return ShardsAndReplicas(StandIns(), shard_ranks=[1, 2], replica_ranks=[3, 4], optimizer=Optimizer())


def test_a_test_evaluation_publishes_x_then_asks_replica_0():
    c = cluster()
    figures = c.test_figures(40)
    assert figures == TestFigures(0.5, 0.75, 40)
    assert c.messenger.sent == [(PublishPoint("x"), 1), (PublishPoint("x"), 2), (EvaluateTest(40), 3)]


def test_the_vector_comes_a_chunk_at_a_time_from_one_shard_at_a_time():
    c = cluster()
    pieces = list(c.vector_chunks("x", SHARD_RANGES, chunk=3))
    assert [(lo, len(piece)) for lo, piece in pieces] == [(0, 3), (3, 3), (6, 1), (7, 3), (10, 2)]
    asked = [(record, rank) for record, rank in c.messenger.sent]
    assert asked[:3] == [(GatherVector("x", 0, 3), 1), (GatherVector("x", 3, 6), 1), (GatherVector("x", 6, 7), 1)]
    assert asked[3:] == [(GatherVector("x", 0, 3), 2), (GatherVector("x", 3, 5), 2)]
    whole = np.empty(12, np.float32)
    for lo, piece in pieces:
        whole[lo : lo + len(piece)] = piece
    assert np.array_equal(whole, X.astype(np.float32))


def test_a_shard_answers_a_range_of_its_slice_as_float32():
    vectors = ShardVectors(5, memory=2)
    vectors.load("x", np.arange(5, dtype=np.float64) + 0.5)
    piece = run_command(GatherVector("x", 1, 4), None, vectors, (10, 15))
    assert piece.dtype == np.float32 and piece.tolist() == [1.5, 2.5, 3.5]
    assert run_command(GatherVector("x"), None, vectors, (10, 15)).tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
