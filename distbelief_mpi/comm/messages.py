"""Control messages: small typed records on named channels, sent and received in one place.

Gradients and parameters travel one-sided through the parameter-server windows
(param_server.py), never here, except a replacement replica's (MessagePush, FetchReply: it
cannot share the windows, roles/downpour/replacement.py). What does travel is small: who is
done, checkpoint requests and replies, Sandblaster's commands and portions. Each record is a
frozen dataclass; a channel is an MPI tag plus the record types it may carry, so a receiver
never unpacks a tuple by position and a wrong record is caught where it is sent. `Messenger` is the one place that
encodes (pickles) a record, sends it, and decodes and checks what arrives; every wait sleeps
with backoff (control.Backoff), never spins.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpi4py import MPI

from .control import Backoff

# -- Downpour and checkpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaDone:
    """Replica -> each shard it pushes to: every push is posted; there will be no more."""

    replica_id: int


@dataclass(frozen=True)
class WarmstartOver:
    """Replica 0 -> the other replicas: the warmstart is over; start training."""


@dataclass(frozen=True)
class CheckpointRequest:
    """Lead replica -> every shard: write your part of the checkpoint in `directory`."""

    step: int
    directory: str


@dataclass(frozen=True)
class CheckpointWritten:
    """Shard -> lead replica: my part of checkpoint `step` is written (file name and SHA-256)."""

    shard_id: int
    step: int
    file: str
    sha256: str
    version: int  # the shard's parameter version in the file


@dataclass(frozen=True)
class PreemptNotice:
    """Replica -> the other replicas: I got a preemption signal; stop after your step."""


@dataclass(frozen=True)
class FinalReport:
    """Every rank -> the lead, at the end: its statistics (summary.json is built from them)."""

    stats: dict


@dataclass(frozen=True)
class Teardown:
    """Lead -> every rank still there: all is done; these world ranks left mid-run."""

    lost_ranks: tuple[int, ...]


# -- Downpour: replacing a replica that left (faults.replica_loss = replace) ------------------


@dataclass(frozen=True)
class ReplicaLost:
    """Shard -> lead: replica `replica_id`'s process is gone."""

    replica_id: int


@dataclass(frozen=True)
class ReplaceReplica:
    """Lead -> every shard: join me in spawning a replacement for replica `replica_id`."""

    replica_id: int


@dataclass(frozen=True)
class MessagePush:
    """A replacement replica -> a shard: grad (length,) for the shard's elements [offset,
    offset + length), computed on base_version over `steps` minibatch steps. The one record
    that carries a gradient: a replacement cannot share the shards' windows (roles/downpour/
    replacement.py says why)."""

    replica_id: int
    grad: Any  # np.ndarray (length,) float32
    base_version: int
    steps: int
    offset: int


@dataclass(frozen=True)
class PushTaken:
    """Shard -> the replacement: its last push is applied or refused; it may send the next."""


@dataclass(frozen=True)
class FetchRequest:
    """A replacement replica -> a shard: send me your parameters [offset, offset + length)."""

    offset: int
    length: int


@dataclass(frozen=True)
class FetchReply:
    """Shard -> the replacement: its published parameters (length,) float32 and their version."""

    version: int
    params: Any  # np.ndarray


# -- Sandblaster: coordinator <-> shards (commands answered in order) ------------------------


@dataclass(frozen=True)
class KeepAlive:
    """Coordinator -> shard or replica: I am alive (no reply); sent when it has nothing to say."""


@dataclass(frozen=True)
class VectorCommand:
    """Run an optim/vector_ops command on the shard's slice; reply: its partial scalars."""

    command: tuple


@dataclass(frozen=True)
class PublishPoint:
    """name := float32(name); publish it for fetching; the gradient sum restarts at zero."""

    name: str


@dataclass(frozen=True)
class CollectGradient:
    """Wait until replica r's pushes[r] pushes are summed; name := sum / n_examples + l2 * point.
    Reply: the shard's partial l2 / 2 * |point|^2."""

    name: str
    pushes: tuple[int, ...]
    n_examples: int
    point: str
    l2: float


@dataclass(frozen=True)
class GatherVector:
    """Reply: elements [start, stop) of the shard's slice of vector `name` (offsets within the
    slice; stop None: to its end) as float32: the coordinator streams params.h5 a chunk at a time."""

    name: str
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class SaveShard:
    """Write x, g and (if history) the (s, y) pairs to directory/shard-S.h5; reply: {"file": (name, sha)}."""

    directory: str
    history: bool


@dataclass(frozen=True)
class StopShard:
    """Reply: the shard's statistics; its serve loop ends."""


@dataclass(frozen=True)
class ShardReply:
    """Shard -> coordinator: the value a command returned."""

    value: Any


# -- Sandblaster: coordinator <-> replicas ---------------------------------------------------


@dataclass(frozen=True)
class Work:
    """Coordinator -> replica: the verdict on its last result and its next portion (or none)."""

    eval_id: int
    portion: int | None  # index into the batch's portions; None: nothing for you now
    counted: bool | None  # did your last result count? None: you had no result outstanding
    flush: bool  # push counted gradients now (the batch is nearly done)
    rows: tuple[int, int] | None  # [start, stop) training rows of the portion


@dataclass(frozen=True)
class StopWork:
    """Coordinator -> replica: the run is over; say goodbye with your statistics."""


@dataclass(frozen=True)
class EvaluateTest:
    """Coordinator -> replica 0: evaluate the point the shards have just published on the first
    n_examples of the test split (0: all of it); answer with TestFigures."""

    n_examples: int


@dataclass(frozen=True)
class PortionResult:
    """Replica -> coordinator: a computed portion's loss (summed over its rows)."""

    eval_id: int
    portion: int
    loss: float
    correct: int
    echo: bool = False  # an injected duplicate (faults.inject = duplicate); gets no answer


@dataclass(frozen=True)
class PushesNote:
    """Replica -> coordinator: in evaluation eval_id I have posted `pushes` pushes holding
    `portions` counted portions."""

    eval_id: int
    pushes: int
    portions: int


@dataclass(frozen=True)
class Farewell:
    """Replica -> coordinator, at the end: its statistics."""

    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TestFigures:
    """Replica 0 -> coordinator: the answer to EvaluateTest (mean loss and accuracy over n_examples)."""

    __test__ = False  # not a pytest test class, whatever its name

    loss: float
    accuracy: float
    n_examples: int


# -- channels --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """An MPI tag and the record types it carries (in order, between one pair of ranks)."""

    name: str
    tag: int
    carries: tuple[type, ...]


DONE = Channel("done", 101, (ReplicaDone,))
WARMSTART = Channel("warmstart", 102, (WarmstartOver,))
CHECKPOINT = Channel("checkpoint", 103, (CheckpointRequest,))
CHECKPOINT_WRITTEN = Channel("checkpoint written", 104, (CheckpointWritten,))
PREEMPT = Channel("preempt", 105, (PreemptNotice,))
REPORT = Channel("report", 106, (FinalReport,))
TEARDOWN = Channel("teardown", 107, (Teardown,))
SHARD_COMMAND = Channel(
    "shard command",
    110,
    (KeepAlive, VectorCommand, PublishPoint, CollectGradient, GatherVector, SaveShard, StopShard),
)
SHARD_REPLY = Channel("shard reply", 111, (ShardReply,))
WORK = Channel("work", 112, (Work, StopWork, KeepAlive, EvaluateTest))
RESULT = Channel("result", 113, (PortionResult,))
PUSHES = Channel("pushes", 114, (PushesNote,))
FAREWELL = Channel("farewell", 115, (Farewell,))
TEST_RESULT = Channel("test result", 116, (TestFigures,))
LOST = Channel("lost", 130, (ReplicaLost,))
REPLACE = Channel("replace", 131, (ReplaceReplica,))
MESSAGE_PUSH = Channel("message push", 132, (MessagePush,))
PUSH_TAKEN = Channel("push taken", 133, (PushTaken,))
FETCH = Channel("fetch", 134, (FetchRequest,))
FETCHED = Channel("fetched", 135, (FetchReply,))


PROBES = 2  # MPI_Iprobe calls before a probe reports nothing (Messenger._probe)


class Messenger:
    """Typed records over one communicator (the job's duplicated world, or a replica's own)."""

    def __init__(self, comm):
        self.comm = comm
        self._status = MPI.Status()

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    def send(self, channel: Channel, record, dest: int) -> None:
        _check(channel, record, "send")
        self.comm.send(record, dest=dest, tag=channel.tag)

    def post(self, channel: Channel, record, dest: int):
        """Send without waiting for the receiver (a large record goes by rendezvous, and two
        ranks each sending one to the other would wait forever): returns the MPI request, to
        be completed (test or wait) before it is dropped."""
        _check(channel, record, "send")
        return self.comm.isend(record, dest=dest, tag=channel.tag)

    def send_to_all(self, channel: Channel, record, dests) -> None:
        for dest in dests:
            self.send(channel, record, dest)

    def waiting(self, channel: Channel, source: int = -1) -> bool:
        """Has a record arrived on `channel` (from `source`; -1: anyone)?"""
        return self._probe(_source(source), channel.tag)

    def receive(self, channel: Channel, source: int):
        """The next record from `source` on `channel`; call when waiting() is True (else it blocks)."""
        return _check(channel, self.comm.recv(source=source, tag=channel.tag), "receive")

    def receive_all(self, channel: Channel) -> list[tuple[Any, int]]:
        """Every record already arrived on `channel`, from anyone: [(record, source rank)]."""
        received = []
        while self._probe(MPI.ANY_SOURCE, channel.tag):
            source = self._status.Get_source()
            received.append((self.receive(channel, source), source))
        return received

    def _probe(self, source: int, tag: int) -> bool:
        """MPI_Iprobe, twice when the first finds nothing: MPICH over UCX matches before it
        progresses, so a message that reached the socket while this rank slept is read in by the
        first call and only matched by the second. Probing once, a rank woken by its arrival
        (comm/network_wait.py) reported nothing and slept its next backoff: a ping-pong against a
        sleeping rank on another host took 2.2-2.7 ms instead of 39 us (bench/rma_floor.py), and
        Sandblaster's digits job across 2 hosts ran at 11.5k examples/s against 17.4k now."""
        return any(self.comm.Iprobe(source=source, tag=tag, status=self._status) for _ in range(PROBES))

    def wait(self, channel: Channel, source: int, on_wait: Callable[[], None] | None = None, limit: float = 5e-3):
        """Sleep until a record from `source` arrives on `channel`, and return it. on_wait() runs
        on every pass (a liveness check may raise there)."""
        backoff = Backoff(limit=limit)
        while not self.waiting(channel, source):
            if on_wait is not None:
                on_wait()
            backoff.sleep()
        return self.receive(channel, source)


def _source(source: int) -> int:
    return MPI.ANY_SOURCE if source < 0 else source


def _check(channel: Channel, record, verb: str):
    if not isinstance(record, channel.carries):
        names = ", ".join(kind.__name__ for kind in channel.carries)
        raise TypeError(f"{verb}: {type(record).__name__} on the {channel.name} channel, which carries {names}")
    return record
