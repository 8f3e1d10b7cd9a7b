"""The coordinator's view of the cluster for optim/lbfgs.py: shards run vector commands; one
evaluation is one distributed pass over the batch by the replicas, portion by portion.

An evaluation at point P (the shards' vector named P), gradient into G:
  1. every shard publishes float32(P) and zeroes its gradient sum (PublishPoint);
  2. the coordinator hands portions to replicas as they free up (Work); each result's verdict
     goes back with the replica's next portion; only a counted (first) result adds its loss here
     and its gradient on the replica. Who gets what, and which result counts, is decided by
     optim/evaluation_state.EvaluationState: this class only receives the messages, feeds them
     to it, and sends what it answers;
  3. once every portion is counted and every counted gradient is pushed (PushesNote), every
     shard waits for exactly those pushes and sets G := sum / batch examples (+ the
     optimizer.l2_penalty term, whose loss the shards return as partial sums) (CollectGradient).
A late result of an earlier evaluation (a straggler's, lost to a backup) is discarded.

A test evaluation at x (test_figures): the shards publish x (PublishPoint: harmless between
evaluations, since every L-BFGS evaluation publishes its own point first and every counted
gradient of the last one is already collected), replica 0 fetches it and evaluates its test
split (EvaluateTest; its partitions together when partitioned) and answers with TestFigures.
params.h5 (vector_chunks): each shard's slice of x, a chunk at a time (GatherVector with a
range). So the coordinator never holds a parameter vector, only one chunk of it.

Shards and replicas watch the coordinator (it cannot watch itself when frozen whole). While it
waits on anyone it sends each of them something at least every faults.watchdog_seconds / 2, a
KeepAlive when it has nothing to say (during an evaluation, shards hear nothing else), and it
pings everyone before a computation that waits on nobody (hashing checkpoint files, the fsync
of params.h5), which its own watchdog bounds to the watchdog time. A test evaluation waits on
replica 0 like any other wait (its partitions are checked to be alive meanwhile). So a healthy
coordinator is silent for less than 1.5 x the watchdog time; a rank that hears nothing for
twice that long ends the job naming it (COORDINATOR_SILENCE). Not watched: the start-up
barrier and the end of the run (after StopWork: the summary).
"""

import time
from collections.abc import Iterator

import numpy as np

from ...comm.control import Backoff
from ...comm.messages import (
    FAREWELL,
    PUSHES,
    RESULT,
    SHARD_COMMAND,
    SHARD_REPLY,
    TEST_RESULT,
    WORK,
    Channel,
    CollectGradient,
    EvaluateTest,
    GatherVector,
    KeepAlive,
    Messenger,
    PublishPoint,
    StopShard,
    StopWork,
    TestFigures,
    VectorCommand,
    Work,
)
from ...optim.evaluation_state import EvaluationState, SendWork
from ...runtime import watchdog
from ..liveness import Silence, judge

COORDINATOR_SILENCE = 2.0  # x watchdog_seconds: how long shards and replicas wait for a word
BUSY_CHECK_S = 1.0  # how often an evaluation checks the replicas computing a portion


class ShardsAndReplicas:
    """messenger: the coordinator's (comm/messages.Messenger over the world communicator).
    peers (roles/liveness.Peers) and hung_after (faults.watchdog_seconds) let the coordinator
    name a shard or replica that has left or hangs, instead of waiting for it forever.
    partner_ranks: replica -> world ranks of its other partitions (partitioned runs), checked
    with it; order: the canonical parameter order (roles/shard_order.parameter_order)."""

    def __init__(
        self,
        messenger: Messenger,
        shard_ranks,
        replica_ranks,
        optimizer,
        peers=None,
        hung_after: float = 0.0,
        order=None,
        partner_ranks: dict[int, list[int]] | None = None,
    ):
        self.messenger, self.shard_ranks, self.replica_ranks = messenger, list(shard_ranks), list(replica_ranks)
        self.l2_penalty, self.peers, self.hung_after, self.order = optimizer.l2_penalty, peers, hung_after, order
        self.partner_ranks = partner_ranks or {}
        self.replica_of = {rank: i for i, rank in enumerate(self.replica_ranks)}  # world rank -> replica
        self.state = EvaluationState(
            len(self.replica_ranks), optimizer.backup_after, max_backups=1 if optimizer.backup_tasks else 0
        )
        self.portions: list[tuple[int, int]] = []  # [start, stop) rows of the current batch's portions
        self.evaluation_seconds: list[float] = []
        self.last_sent: dict[int, float] = {}  # world rank -> when the coordinator last sent it anything
        self.next_ping_check = 0.0

    def use_portions(self, portions: list[tuple[int, int]]) -> None:
        """The batch the next evaluations pass over: [start, stop) training rows per portion."""
        self.portions = list(portions)

    # -- shards ------------------------------------------------------------------------
    def shard_call(self, command) -> list:
        """Send a command to every shard, then collect every reply's value (in shard order)."""
        for rank in self.shard_ranks:
            self.post(SHARD_COMMAND, command, rank)
        return [self.receive(SHARD_REPLY, rank, f"shard {i}").value for i, rank in enumerate(self.shard_ranks)]

    def run_command(self, cmd) -> list:
        """optim/lbfgs.py's interface: per-shard partial results of a vector command."""
        return self.shard_call(VectorCommand(cmd))

    def ask_shard(self, shard_id: int, command):
        """Send a command to one shard and return its reply's value."""
        rank = self.shard_ranks[shard_id]
        self.post(SHARD_COMMAND, command, rank)
        return self.receive(SHARD_REPLY, rank, f"shard {shard_id}").value

    def vector_chunks(
        self, name: str, shard_ranges: list[tuple[int, int]], chunk: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The whole vector `name`, in the order the shards hold it (self.order maps it to the
        canonical order), as (position, float32 (<= chunk,)) pieces, one shard at a time:
        shard_ranges[s] is shard s's [start, stop). Only one piece is here at a time."""
        for shard_id, (start, stop) in enumerate(shard_ranges):
            for lo in range(start, stop, chunk):
                hi = min(stop, lo + chunk)
                yield lo, self.ask_shard(shard_id, GatherVector(name, lo - start, hi - start))

    # -- messages ----------------------------------------------------------------------
    def post(self, channel: Channel, record, rank: int) -> None:
        self.messenger.send(channel, record, rank)
        self.last_sent[rank] = time.monotonic()

    def receive(
        self,
        channel: Channel,
        rank: int,
        who: str,
        alive: dict[int, str] | None = None,
        hung_after: float | None = None,
    ):
        """The next record from `rank` on `channel`, sleeping; RankLost / RankHung naming `who`
        when it has left or hangs (after hung_after seconds, default the watchdog time; 0: only
        when it has left); alive: {rank: who} that must not leave meanwhile (the other partitions
        of a replica, which compute with it). Others hear from us meanwhile (keep_alive)."""
        limit = self.hung_after if hung_after is None else hung_after
        silence = Silence(self.peers, rank, who, limit)
        companions = [Silence(self.peers, other, name, 0.0) for other, name in (alive or {}).items()]

        def on_wait() -> None:
            silence.check()
            for companion in companions:
                companion.check()  # hung_after 0: only RankLost
            self.keep_alive()

        return self.messenger.wait(channel, rank, on_wait=on_wait, limit=1e-3)

    def keep_alive(self, everyone: bool = False) -> None:
        """Ping every shard and replica not sent anything for half the watchdog time (cheap:
        called on every pass of every wait); everyone: all of them, before a long computation
        that waits on nobody (a test evaluation, hashing checkpoint files)."""
        now = time.monotonic()
        if not self.hung_after or (now < self.next_ping_check and not everyone):
            return
        self.next_ping_check = now + min(1.0, self.hung_after / 8)
        due = now if everyone else now - self.hung_after / 2
        for channel, ranks in ((SHARD_COMMAND, self.shard_ranks), (WORK, self.replica_ranks)):
            for rank in ranks:
                if self.last_sent.get(rank, 0.0) < due:
                    self.post(channel, KeepAlive(), rank)

    # -- evaluations -------------------------------------------------------------------
    def evaluate(self, point: str, grad: str) -> float:
        """Mean loss over the batch at `point`; the mean gradient lands in the shards' `grad`."""
        started = time.perf_counter()
        self.shard_call(PublishPoint(point))
        self._perform(self.state.start(self.portions, time.monotonic()))
        self._run_pass()
        outcome = self.state.finish()
        collect = CollectGradient(grad, outcome.pushes, outcome.n_examples, point, self.l2_penalty)
        penalty = sum(self.shard_call(collect))
        self.evaluation_seconds.append(time.perf_counter() - started)
        return outcome.loss_sum / outcome.n_examples + penalty

    def test_figures(self, n_examples: int) -> TestFigures:
        """Loss and accuracy at x on the first n_examples of the test split (0: all of it),
        computed by replica 0 on the point the shards publish (see the module docstring). Call
        between evaluations only: publishing x replaces the published point and the gradient sum."""
        self.shard_call(PublishPoint("x"))  # x is float32 already (it was a published point): unchanged
        evaluator = self.replica_ranks[0]
        self.post(WORK, EvaluateTest(n_examples), evaluator)
        partitions = {rank: f"replica 0/partition {p}" for p, rank in enumerate(self.partner_ranks.get(0, []), 1)}
        # A whole test split may take longer than the watchdog time: replica 0's own watchdog
        # (beating once per evaluation batch) bounds it; here only its leaving ends the wait.
        return self.receive(TEST_RESULT, evaluator, "replica 0", alive=partitions, hung_after=0.0)

    def _run_pass(self) -> None:
        """Feed results and push notes to the state until the pass is finished (step 2 above)."""
        backoff = Backoff(limit=2e-4)  # a short nap: replicas wait on our answers
        next_check = time.monotonic() + BUSY_CHECK_S
        while not self.state.finished:
            watchdog.beat()
            heard = self._take_results() + self._take_push_notes()
            backoff.reset() if heard else backoff.sleep()
            self.keep_alive()
            now = time.monotonic()
            if now > next_check:
                next_check = now + BUSY_CHECK_S
                self._check_busy_replicas(now)

    def _take_results(self) -> int:
        arrived = self.messenger.receive_all(RESULT)
        for result, source in arrived:
            replica = self.replica_of[source]
            now = time.monotonic()
            self._perform(
                self.state.result_arrived(replica, result.eval_id, result.portion, result.loss, result.echo, now)
            )
        return len(arrived)

    def _take_push_notes(self) -> int:
        notes = self.messenger.receive_all(PUSHES)
        for note, source in notes:
            self.state.pushes_noted(self.replica_of[source], note.eval_id, note.pushes, note.portions)
        return len(notes)

    def _perform(self, actions: list[SendWork]) -> None:
        for act in actions:
            work = Work(act.eval_id, act.portion, act.counted, act.flush, act.rows)
            self.post(WORK, work, self.replica_ranks[act.replica])

    def _check_busy_replicas(self, now: float) -> None:
        """A replica computing a portion must still exist, and must answer within the watchdog time."""
        for busy in self.state.busy_replicas(now):
            replica = busy.replica
            judge(self.peers, self.replica_ranks[replica], f"replica {replica}", busy.waited, self.hung_after)
            for partition, rank in enumerate(self.partner_ranks.get(replica, []), start=1):
                judge(self.peers, rank, f"replica {replica}/partition {partition}", 0.0, self.hung_after)

    # -- the end -----------------------------------------------------------------------
    def stop_everyone(self) -> tuple[list[dict], list[dict]]:
        """Replicas say goodbye with their statistics (results still unread are dropped and
        counted as late); then the shards. Returns (replica statistics, shard statistics)."""
        for rank in self.replica_ranks:
            self.post(WORK, StopWork(), rank)
        farewells = [self.receive(FAREWELL, rank, f"replica {i}").stats for i, rank in enumerate(self.replica_ranks)]
        self.state.discarded_at_stop(len(self.messenger.receive_all(RESULT)))
        self.messenger.receive_all(PUSHES)
        return farewells, self.shard_call(StopShard())
