"""The coordinator's view of the cluster for optim/lbfgs.py: shards run vector commands; one
evaluation is one distributed pass over the batch by the replicas, portion by portion.

An evaluation at point P (the shards' vector named P), gradient into G:
  1. every shard publishes float32(P) and zeroes its gradient sum;
  2. the coordinator hands portions to replicas as they free up (optim/portions.py: affinity,
     then backups near the end); each result's verdict goes back with the replica's next
     portion; only a counted (first) result adds its loss here and its gradient on the replica;
  3. once every portion is counted and every counted gradient is pushed (TAG_SB_PUSHED notes),
     every shard waits for exactly those pushes and sets G := sum / batch examples (+ the
     optimizer.l2_penalty term, whose loss the shards return as partial sums).
A late result of an earlier evaluation (a straggler's, lost to a backup) is discarded.

Shards and replicas watch the coordinator (it cannot watch itself when frozen whole). While it
waits on anyone it sends each of them something at least every faults.watchdog_seconds / 2, a
no-op ping when it has nothing to say (during an evaluation, shards hear nothing else), and it
pings everyone before a computation that waits on nobody (a test evaluation, hashing checkpoint
files), which its own watchdog bounds to the watchdog time. So a healthy coordinator is silent
for less than 1.5 x the watchdog time; a rank that hears nothing for twice that long ends the
job naming it (COORDINATOR_SILENCE). Not watched: the start-up barrier and the end of the run
(after "stop": the final evaluation, params.h5, the summary).
"""

import time

import numpy as np

from .. import watchdog
from ..comm.control import TAG_SB_COMMAND, TAG_SB_PUSHED, TAG_SB_REPLY, TAG_SB_RESULT, TAG_SB_WORK, Backoff, receive_all
from ..optim.portions import PortionScheduler, PortionTotals
from .liveness import judge, recv_watched

COORDINATOR_SILENCE = 2.0  # x watchdog_seconds: how long shards and replicas wait for a word
PING = ("ping",)  # to a shard (TAG_SB_COMMAND; no reply); to a replica: {"ping": True}


class MpiCluster:
    """peers (roles/liveness.Peers) and hung_after (faults.watchdog_seconds) let the coordinator
    name a shard or replica that has left or hangs, instead of waiting for it forever."""

    def __init__(
        self, world_comm, shard_ranks, replica_ranks, optimizer, peers=None, hung_after: float = 0.0, order=None
    ):
        self.comm, self.shard_ranks, self.replica_ranks = world_comm, list(shard_ranks), list(replica_ranks)
        self.opt, self.peers, self.hung_after, self.order = optimizer, peers, hung_after, order
        self.assigned_at: dict[int, float] = {}  # replica -> when its outstanding portion was handed out
        self.partners: dict[int, list[int]] = {}  # replica -> ranks of its other partitions (partitioned runs)
        self.replica_of = {rank: i for i, rank in enumerate(self.replica_ranks)}  # world rank -> replica
        self.portions: list[tuple[int, int]] = []  # [start, stop) rows of the current batch's portions
        self.eval_id, self.totals = 0, PortionTotals()
        self.late_results, self.evaluation_seconds = 0, []
        self.busy: set[int] = set()  # replicas computing a portion we have not had the result of
        self.examples_evaluated = 0
        self.last_sent: dict[int, float] = {}  # world rank -> when the coordinator last sent it anything
        self.next_ping_check = 0.0

    # -- shards ------------------------------------------------------------------------
    def shard_call(self, command: tuple) -> list:
        """Send a command to every shard, then collect every reply (in shard order)."""
        for rank in self.shard_ranks:
            self.post(command, rank, TAG_SB_COMMAND)
        return [self.receive(rank, TAG_SB_REPLY, f"shard {i}") for i, rank in enumerate(self.shard_ranks)]

    def post(self, message, rank: int, tag: int) -> None:
        self.comm.send(message, dest=rank, tag=tag)
        self.last_sent[rank] = time.monotonic()

    def keep_alive(self, everyone: bool = False) -> None:
        """Ping every shard and replica not sent anything for half the watchdog time (cheap:
        called on every pass of every wait); everyone: all of them, before a long computation
        that waits on nobody (a test evaluation, hashing checkpoint files)."""
        now = time.monotonic()
        if not self.hung_after or (now < self.next_ping_check and not everyone):
            return
        self.next_ping_check = now + min(1.0, self.hung_after / 8)
        due = now if everyone else now - self.hung_after / 2
        for rank in self.shard_ranks:
            if self.last_sent.get(rank, 0.0) < due:
                self.post(PING, rank, TAG_SB_COMMAND)
        for rank in self.replica_ranks:
            if self.last_sent.get(rank, 0.0) < due:
                self.post({"ping": True}, rank, TAG_SB_WORK)

    def receive(self, rank: int, tag: int, who: str):
        """A reply from `rank`, sleeping; RankLost / RankHung naming it when it has left or hangs."""
        return recv_watched(self.comm, rank, tag, self.peers, who, self.hung_after, limit=1e-3, on_wait=self.keep_alive)

    def check_alive(self, rank: int, who: str, waited: float) -> None:
        judge(self.peers, rank, who, waited, self.hung_after)

    def run_command(self, cmd) -> list:
        """optim/lbfgs.py's interface: per-shard partial results of a vector command."""
        return self.shard_call(("vec", cmd))

    def gather(self, name: str) -> np.ndarray:
        """The whole vector `name` as float32, in the canonical order: for evaluation and params.h5 only."""
        whole = np.concatenate(self.shard_call(("gather", name)))
        return whole if self.order is None else self.order.to_canonical(whole)

    # -- evaluations -------------------------------------------------------------------
    def evaluate(self, point: str, grad: str) -> float:
        """Mean loss over the batch at `point`; the mean gradient lands in the shards' `grad`."""
        started = time.perf_counter()
        self.eval_id += 1
        self.shard_call(("publish", point))
        n_examples = self.portions[-1][1] - self.portions[0][0]
        scheduler = PortionScheduler(
            len(self.portions),
            len(self.replica_ranks),
            backup_after=self.opt.backup_after,
            max_backups=1 if self.opt.backup_tasks else 0,
        )
        loss_sum, pushes = Evaluation(self, scheduler).run()
        penalty = sum(self.shard_call(("collect", grad, pushes, n_examples, point, self.opt.l2_penalty)))
        self.totals.add(scheduler)
        self.examples_evaluated += n_examples
        self.evaluation_seconds.append(time.perf_counter() - started)
        return loss_sum / n_examples + penalty

    def stop_replicas(self) -> None:
        for rank in self.replica_ranks:
            self.post({"stop": True}, rank, TAG_SB_WORK)


class Evaluation:
    """One pass over the batch's portions (step 2 above)."""

    def __init__(self, cluster: MpiCluster, scheduler: PortionScheduler):
        self.c, self.s = cluster, scheduler
        n = len(cluster.replica_ranks)
        self.counted = [0] * n  # counted portions per replica
        self.pushed = [0] * n  # of which pushed (TAG_SB_PUSHED)
        self.pushes = [0] * n  # pushes posted per replica (what each shard must sum)
        self.idle = set(range(n)) - cluster.busy  # a straggler still on an earlier evaluation is not idle
        self.loss_sum = 0.0

    def run(self) -> tuple[float, list[int]]:
        for replica in sorted(self.idle):
            self._offer(replica, counted=None)
        backoff = Backoff(limit=2e-4)  # a short nap: replicas wait on our answers
        next_check = time.monotonic() + 1.0
        while not (self.s.done and self.pushed == self.counted):
            watchdog.beat()
            busy = self._take_results() + self._take_push_notes()
            backoff.reset() if busy else backoff.sleep()
            self.c.keep_alive()
            if time.monotonic() > next_check:
                next_check = time.monotonic() + 1.0
                self._check_busy_replicas()
        return self.loss_sum, self.pushes

    def _take_results(self) -> int:
        results = receive_all(self.c.comm, TAG_SB_RESULT)
        for result, source in results:
            replica, echo = self.c.replica_of[source], result.get("echo", False)
            if result["eval"] != self.c.eval_id:  # a straggler's result of an earlier evaluation
                if not echo:
                    self.c.late_results += 1
                    self._answer(replica, counted=False)
                continue
            counted = self.s.complete(replica, result["portion"])
            if counted:
                self.loss_sum += result["loss"]
                self.counted[replica] += 1
            if not echo:  # an injected duplicate gets no answer
                self._answer(replica, counted)
            if counted:
                self._wake_idle()
        return len(results)

    def _check_busy_replicas(self) -> None:
        """A replica computing a portion must still exist, and must answer within the watchdog time."""
        now = time.monotonic()
        for replica in sorted(self.c.busy):
            self.c.check_alive(
                self.c.replica_ranks[replica], f"replica {replica}", now - self.c.assigned_at.get(replica, now)
            )
            for partition, rank in enumerate(self.c.partners.get(replica, []), start=1):
                self.c.check_alive(rank, f"replica {replica}/partition {partition}", 0.0)

    def _take_push_notes(self) -> int:
        notes = receive_all(self.c.comm, TAG_SB_PUSHED)
        for note, source in notes:
            if note["eval"] == self.c.eval_id:
                replica = self.c.replica_of[source]
                self.pushed[replica], self.pushes[replica] = note["portions"], note["pushes"]
        return len(notes)

    def _wake_idle(self) -> None:
        """A completion may free a backup for, or end the batch for, a replica waiting idle."""
        for replica in sorted(self.idle):
            self._offer(replica, counted=None)

    def _answer(self, replica: int, counted: bool) -> None:
        """Exactly one answer per result: a replica reads it as the verdict on that result."""
        self.c.busy.discard(replica)
        self._offer(replica, counted)

    def _offer(self, replica: int, counted: bool | None) -> None:
        """Answer a replica: the verdict on its last result and its next portion (or none now)."""
        portion = None if self.s.done else self.s.next_for(replica)
        # Near the end, counted gradients go to the shards at once: a replica busy with its last
        # portion (perhaps lost to a backup) must not hold counted work the pass is waiting for.
        near_end = self.s.n - self.s.portions_issued <= len(self.c.replica_ranks)
        if portion is None:
            self.idle.add(replica)
            if counted is None:
                return  # nothing to tell it: it waits for a later offer
        else:
            self.idle.discard(replica)
            self.c.busy.add(replica)
            self.c.assigned_at[replica] = time.monotonic()
        message = {
            "eval": self.c.eval_id,
            "portion": portion,
            "counted": counted,
            "flush": near_end,
            "rows": None if portion is None else self.c.portions[portion],
        }
        self.c.post(message, self.c.replica_ranks[replica], TAG_SB_WORK)
