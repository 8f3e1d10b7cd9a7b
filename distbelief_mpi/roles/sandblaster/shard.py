"""A Sandblaster shard: runs the coordinator's vector commands on its slice, publishes the point
replicas evaluate, and sums the gradients they push.

It holds, for its slice [start, stop) only, the float64 work vectors and L-BFGS history
(optim/vector_ops.ShardVectors) and the two windows Downpour uses: replicas fetch the
published float32 point with the same seqlock and Put gradient sums into their landing slots.
Between commands it drains the slots into `total` (float64), so a replica's next push never
waits long. Commands (comm/messages.py, on SHARD_COMMAND; each answered with a ShardReply on
SHARD_REPLY, in order):

    VectorCommand(cmd)           a vector command; reply: its partial scalars
    PublishPoint(name)           name := float32(name); publish it for fetching; total := 0
    CollectGradient(name, pushes, n_examples, point, l2)
                                 wait until pushes[r] pushes of replica r (all their pieces) are summed;
                                 name := total / n + l2 * point; reply: the partial l2 / 2 * |point|^2
    GatherVector(name, start, stop)
                                 reply: elements [start, stop) of the slice of `name` as float32
                                 (params.h5, a chunk at a time)
    SaveShard(directory, history) write x, g and (if history) the (s, y) pairs to directory/shard-S.h5
                                 (roles/sandblaster/checkpoints.py); reply: {"file": (name, sha)}
    StopShard()                  reply: this shard's statistics; the serve loop ends
    KeepAlive()                  no reply: the coordinator is alive (roles/sandblaster/cluster.py)
"""

import numpy as np

from ...comm.control import Backoff
from ...comm.messages import (
    SHARD_COMMAND,
    SHARD_REPLY,
    CollectGradient,
    GatherVector,
    KeepAlive,
    Messenger,
    PublishPoint,
    SaveShard,
    ShardReply,
    StopShard,
    VectorCommand,
)
from ...comm.param_server import LandingSlots, ParamServerWindows
from ...comm.seqlock import SeqlockWriter
from ...kernels.server_rules import all_finite
from ...optim.vector_ops import ShardVectors
from ...runtime import watchdog
from ..liveness import Silence
from .checkpoints import shard_save_reply


class GradientSink:
    """Landing slots whose pushes are summed (not applied): the batch gradient in the making,
    and the point replicas evaluate, published with the same seqlock Downpour uses. A push
    covers the whole slice, or one partition's block in it (a shard holding several blocks)."""

    def __init__(self, windows: ParamServerWindows, shard_id: int, initial: np.ndarray):
        self.shard_id, n_replicas, self.length = shard_id, windows.n_replicas, len(initial)
        self.published = SeqlockWriter(windows, shard_id, initial)
        self.slots = LandingSlots(windows, shard_id, len(initial))
        self.total = np.zeros(len(initial), np.float64)  # (L,) sum of pushed gradient sums
        # Elements summed since the last publish, per replica: one whole push is L of them,
        # however many partitions' pieces it came in (CollectGradient below).
        self.summed = np.zeros(n_replicas, np.int64)
        self.pushes_summed, self.non_finite = 0, 0

    def warm_up(self) -> None:
        all_finite(np.zeros(1, np.float32))  # load (or compile) the kernel before pushes arrive

    def apply_pending(self) -> int:
        """Sum every push posted since the last call; return how many."""
        pushes = self.slots.posted()
        for push in pushes:
            grad = self.slots.gradient(push)
            if not all_finite(grad):  # summed all the same: the coordinator sees a non-finite loss and backtracks
                self.non_finite += 1
            self.total[push.part] += grad
            self.summed[push.replica_id] += push.length
            self.pushes_summed += 1
            self.slots.release(push)
        return len(pushes)

    def publish(self, values: np.ndarray) -> int:
        """Make values (L,) the parameters replicas fetch; a new evaluation starts from zero."""
        version = self.published.publish(values)
        self.total[:] = 0
        self.summed[:] = 0
        return version


def serve_commands(
    messenger: Messenger,
    coordinator: int,
    sink: GradientSink,
    vectors: ShardVectors,
    shard_range: tuple[int, int],
    silence: Silence,
) -> dict:
    """Run commands until StopShard; returns the statistics sent with the last reply.
    shard_range: the [start, stop) of the parameters this shard holds (named in its checkpoint);
    silence: watches the coordinator (RankHung / RankLost when it stays silent or exits)."""
    while True:
        command = _next_command(messenger, coordinator, sink, silence)
        if isinstance(command, KeepAlive):
            continue
        if isinstance(command, StopShard):
            stats = {
                "role": "shard",
                "shard_id": sink.shard_id,
                "pushes_summed": sink.pushes_summed,
                "non_finite_pushes": sink.non_finite,
            }
            messenger.send(SHARD_REPLY, ShardReply(stats), coordinator)
            return stats
        messenger.send(SHARD_REPLY, ShardReply(_run(command, sink, vectors, shard_range)), coordinator)


def _run(command, sink: GradientSink, vectors: ShardVectors, shard_range: tuple[int, int]):
    match command:
        case VectorCommand(cmd):
            return vectors.execute(cmd)
        case PublishPoint(name):
            vectors.execute(("round32", name))
            return sink.publish(vectors[name])
        case CollectGradient(name, pushes, n_examples, point, l2):
            _wait_for_pushes(sink, np.asarray(pushes, np.int64) * sink.length)
            vectors.load(name, sink.total / n_examples)
            if not l2:
                return 0.0
            vectors.execute(("axpy", name, point, l2))
            return 0.5 * l2 * vectors.execute(("dot", point, point))
        case GatherVector(name, start, stop):
            return vectors[name][start:stop].astype(np.float32)
        case SaveShard(directory, history):
            return shard_save_reply(directory, history, sink.shard_id, *shard_range, vectors)
    raise ValueError(f"unknown shard command {command!r}")


def _next_command(messenger: Messenger, coordinator: int, sink: GradientSink, silence: Silence):
    """Sleep until the coordinator's next command, summing pushes meanwhile."""
    backoff = Backoff(limit=1e-3)
    while not messenger.waiting(SHARD_COMMAND, coordinator):
        watchdog.beat()
        silence.check()
        if sink.apply_pending():
            backoff.reset()
        else:
            backoff.sleep()
    silence.heard_now()
    return messenger.receive(SHARD_COMMAND, coordinator)


def _wait_for_pushes(sink: GradientSink, expected: np.ndarray) -> None:
    """Every replica has posted its pushes before the coordinator asks; some may not be summed
    yet. expected[r]: the elements of replica r's pushes, pushes[r] x L. Counting elements, not
    pushes, is exact for any layout: pushes[r] counts the pushes of r's partition 0, every
    partition of r pushes on the same relayed records (as often), and the pieces the partitions
    holding blocks here push tile this shard's slice once per push (one piece, the whole slice,
    when S >= P; one per block when the shard holds several). Counting pushes instead would need
    the number of partitions whose blocks this shard holds, which the shard is not told."""
    backoff = Backoff(limit=1e-3)
    while np.any(sink.summed < expected):
        if sink.apply_pending():
            backoff.reset()
        else:
            backoff.sleep()
