"""A parameter-server shard: owns one slice of the parameters and applies every push.

It never posts a receive for gradient bytes: replicas Put gradients into landing slots they
claim in this rank's window (comm/param_server.py). The serve loop polls the control words,
applies each posted push with the server rule (Adagrad or fixed-rate SGD) to the part of the
slice it covers (all of it, or one partition's block when this shard holds several), rejects
and counts non-finite pushes, records staleness, and sleeps with backoff when idle.

The finite check and the rule are one pass (kernels/server_rules.py) writing out of place: the
parameters into the seqlock's next buffer, Adagrad's accumulators into the next of their two
(seqlock shadows). A push found non-finite abandons that version: the published parameters and
the current accumulators are untouched, as if it never came.
"""

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ...comm.control import Backoff, barrier_sleeping
from ...comm.messages import CHECKPOINT, DONE, Messenger
from ...comm.param_server import LandingSlots, ParamServerWindows, Push, claimer_of
from ...comm.seqlock import SeqlockWriter
from ...config import Optimizer
from ...errors import RankHung, RankLost
from ...job import Job
from ...kernels import server_rules
from ...kernels.server_rules import adagrad_step, aligned_full, sgd_step
from ...runtime import watchdog
from ...runtime.watchdog import Watchdog
from ..liveness import Peers, ReplicaWatch
from ..shard_order import initial_params
from ..shard_start import downpour_state
from .checkpoints import reply_to_checkpoint
from .shard_rescue import Replacements

log = logging.getLogger(__name__)

# Staleness histogram: counts of 0, 1, ..., STALENESS_BINS - 2, and >= STALENESS_BINS - 1.
STALENESS_BINS = 64
# While a push lands chunk by chunk the serve loop sleeps 5 us, doubling up to this, between
# polls: a 4 MiB chunk takes about 0.3 ms to copy within a node.
LANDING_SLEEP_LIMIT = 100e-6
# What becomes of an open push: applied as it lands, found non-finite (the rest goes unread), or
# too stale (dropped unread); each is counted once it has landed whole and its slot is freed.
APPLY, REJECTED, TOO_STALE = "apply", "rejected", "too stale"


@dataclass
class OpenPush:
    """The push being applied: landing slot `slot` (STATE `state` when opened), its verdict,
    its staleness when opened, and the elements applied so far (from its first)."""

    slot: int
    state: int
    verdict: str
    staleness: int
    applied: int = 0


class ShardStats:
    def __init__(self, n_replicas: int):
        self.applied = np.zeros(n_replicas, np.int64)
        self.rejected = np.zeros(n_replicas, np.int64)  # non-finite pushes
        self.too_stale = np.zeros(n_replicas, np.int64)  # pushes over optimizer.max_staleness
        self.staleness_hist = np.zeros(STALENESS_BINS, np.int64)
        self.staleness_sum, self.staleness_max, self.steps_pushed = 0, 0, 0
        self.steps_by_replica = np.zeros(n_replicas, np.int64)  # this invocation's, not checkpointed
        self.lost: list[int] = []  # replicas that left mid-run (replica_loss = continue or replace)

    def restore(self, saved: dict) -> None:
        """Continue the counters of a checkpointed run (as_dict's output)."""
        self.applied[:] = saved["applied"]
        self.rejected[:] = saved["rejected"]
        self.too_stale[:] = saved.get("too_stale", [0] * len(self.too_stale))
        self.staleness_hist[:] = saved["staleness_hist"]
        self.staleness_sum, self.staleness_max = saved["staleness_sum"], saved["staleness_max"]
        self.steps_pushed = saved["steps_pushed"]

    def record(self, replica_id: int, staleness: int, steps: int) -> None:
        self.applied[replica_id] += 1
        self.staleness_sum += staleness
        self.staleness_max = max(self.staleness_max, staleness)
        self.staleness_hist[min(staleness, STALENESS_BINS - 1)] += 1
        self.steps_pushed += steps
        self.steps_by_replica[replica_id] += steps

    def as_dict(self) -> dict:
        return {
            "applied": self.applied.tolist(),
            "rejected": self.rejected.tolist(),
            "too_stale": self.too_stale.tolist(),
            "staleness_sum": self.staleness_sum,
            "staleness_max": self.staleness_max,
            "staleness_hist": self.staleness_hist.tolist(),
            "steps_pushed": self.steps_pushed,
            "lost_replicas": list(self.lost),
        }


class Shard:
    """Shard `shard_id`'s state: the published parameters (a seqlock), the landing slots, the
    Adagrad accumulators (private to this rank: two (L,) buffers alternating with the
    parameters' under Adagrad, one, unused but checkpointed, under SGD) and the statistics.
    pushers_per_replica: the ranks of each replica that push here (its partitions whose blocks
    this shard holds); a replica is done when all of them have said so."""

    def __init__(
        self,
        windows: ParamServerWindows,
        shard_id: int,
        optimizer: Optimizer,
        initial: np.ndarray,
        pushers_per_replica: int = 1,
    ):
        self.shard_id, self.opt, self.pushers_per_replica = shard_id, optimizer, pushers_per_replica
        self.length, self.n_replicas = len(initial), windows.n_replicas
        self.adagrad = optimizer.server_rule == "adagrad"
        # Accumulators k placed like parameter buffer k (window elements [kL, (k+1)L)) modulo
        # 64 bytes: a version's two outputs then stream together (server_rules.py).
        buffers = [windows.local_data[k * self.length : (k + 1) * self.length] for k in (0, 1)]
        initial_acc = optimizer.adagrad_initial_accumulator
        accumulators = [aligned_full(self.length, initial_acc, like=buffer) for buffer in buffers[: 1 + self.adagrad]]
        self.published = SeqlockWriter(windows, shard_id, initial, [tuple(accumulators)] if self.adagrad else ())
        self._accumulator = accumulators[0]  # under SGD: the checkpointed one, never changed
        self.slots = LandingSlots(windows, shard_id, self.length)
        self.stats = ShardStats(self.n_replicas)
        self.watch: ReplicaWatch | None = None
        self.open: OpenPush | None = None  # the push being applied, chunk by chunk as it lands

    def restore(self, state: dict) -> None:
        """Start from a checkpoint (roles/shard_start.downpour_state's dict), before serving;
        stats None (another topology): the counters start afresh."""
        if state["stats"] is not None:
            self.stats.restore(state["stats"])
        if self.adagrad:
            self.published.restore(state["version"], state["params"], [state["accumulator"]])
        else:
            self._accumulator[:] = state["accumulator"]
            self.published.restore(state["version"], state["params"])

    def warm_up(self) -> None:
        """Load (or compile) the update kernels now, before replicas start pushing: the first
        call of a Numba kernel can take a second, long enough to stall a short run."""
        server_rules.warm_up()

    @property
    def accumulator(self) -> np.ndarray:
        """Adagrad's accumulators of the current version (L,), a view."""
        return self.published.shadow(0) if self.adagrad else self._accumulator

    @property
    def version(self) -> int:
        return self.published.version

    @property
    def params(self) -> np.ndarray:
        """The current published parameters (L,), a view."""
        return self.published.current

    def apply_pending(self) -> int:
        """Apply what has landed in the slots: the open push's new chunks, then posted pushes
        (each opened, applied and released) and the first chunks of another; returns the
        steps of progress made (0: nothing to do now)."""
        progress = 0
        for push in self._in_order(self.slots.pending()):
            if self.open is None:
                self.open = OpenPush(push.slot, push.state, *self._verdict(push))
                progress += 1
            elif push.slot != self.open.slot:
                continue  # one version at a time: the others wait
            progress += self._advance(push)
            if not push.posted:
                break  # its replica is still putting chunks
            self._finish(push)
        return progress

    def _in_order(self, pushes: list[Push]) -> list[Push]:
        """The open push first, then posted ones (whole), then ones still landing."""
        opened = self.open.slot if self.open is not None else -1
        return sorted(pushes, key=lambda push: (push.slot != opened, not push.posted, push.slot))

    def _verdict(self, push: Push) -> tuple[str, int]:
        """(APPLY, staleness) and a version begun, or (TOO_STALE, staleness): dropped unread."""
        staleness = self.version - push.base_version
        if self.opt.max_staleness and staleness > self.opt.max_staleness:
            return TOO_STALE, staleness
        self.published.begin(push.part)
        return APPLY, staleness

    def _advance(self, push: Push) -> int:
        """Apply the open push's elements landed since the last call: 1 if any, else 0."""
        open_ = self.open
        if open_.verdict != APPLY or push.landed <= open_.applied:
            return 0
        start, stop = open_.applied, push.landed
        part = slice(push.offset + start, push.offset + stop)
        if not self._rule(part, self.slots.gradient(push, start, stop)):
            self.published.abandon()  # nothing published: the rest is not read
            open_.verdict = REJECTED
        open_.applied = stop
        return 1

    def _finish(self, push: Push) -> None:
        """The open push has landed whole (posted): publish it, or count why not; free its slot."""
        self._conclude(self.open.verdict, push.replica_id, self.open.staleness, push.steps)
        self.open = None
        if self.watch is not None:
            self.watch.saw(push.replica_id)
        self.slots.release(push)

    def _conclude(self, verdict: str, replica_id: int, staleness: int, steps: int) -> None:
        """A push applied whole: publish its version, or count why not."""
        if verdict == APPLY:
            self.published.commit()
            self.stats.record(replica_id, staleness, steps)
        elif verdict == REJECTED:
            self._count_rejected(replica_id)
        else:
            self.stats.too_stale[replica_id] += 1

    def apply_message(self, replica_id: int, grad: np.ndarray, base_version: int, steps: int, offset: int) -> None:
        """A replacement replica's push (it arrives as a message, shard_rescue.py), applied whole
        as a posted landing-slot push is. Only while no slot push is open: one version at a time."""
        if self.open is not None:
            raise RuntimeError("a message push applied while a landing-slot push is open")
        push = Push(-1, 0, replica_id, base_version, steps, offset, len(grad), len(grad))
        verdict, staleness = self._verdict(push)
        if verdict == APPLY and not self._rule(push.part, grad):
            self.published.abandon()
            verdict = REJECTED
        self._conclude(verdict, replica_id, staleness, steps)

    def forget(self, replica_id: int) -> None:
        """Replica `replica_id` has left: drop its open push and free the slots it had claimed."""
        self._drop_open(replica_id)
        if self.slots.reclaim(replica_id):  # it died between claiming a slot and posting into it
            log.warning("freed the landing slot replica %d had claimed", replica_id)
        self.stats.lost.append(replica_id)

    def _drop_open(self, replica_id: int) -> None:
        """The replica has left: a push of its still open (it died putting chunks) is dropped."""
        if self.open is not None and claimer_of(self.open.state) == replica_id:
            if self.open.verdict == APPLY:
                self.published.abandon()
            self.open = None

    def _rule(self, part: slice, grad: np.ndarray) -> bool:
        """The next version's elements `part` (all L unless one partition's block) <- the
        current ones updated with grad (part length,) by the server rule, in one pass with the
        finite check; False (nothing to publish) when grad holds a NaN or Inf."""
        following, current = self.published.following[part], self.published.current[part]
        if self.adagrad:
            acc_next, acc = self.published.shadow(0, following=True)[part], self.published.shadow(0)[part]
            return adagrad_step(
                following, current, grad, acc_next, acc, self.opt.server_learning_rate, self.opt.adagrad_epsilon
            )
        return sgd_step(following, current, grad, self.opt.server_learning_rate)

    def _count_rejected(self, replica_id: int) -> None:
        self.stats.rejected[replica_id] += 1
        count = int(self.stats.rejected[replica_id])
        if count <= 3 or count % 100 == 0:  # a replica that keeps sending them must not flood the log
            log.warning("rejected a non-finite push from replica %d (%d so far)", replica_id, count)

    def serve(
        self,
        messenger: Messenger,
        on_checkpoint=None,
        watch: ReplicaWatch | None = None,
        replica_loss: str = "abort",
        replacements=None,
    ) -> None:
        """Apply pushes until every replica has said it is done (or has left) and nothing is
        pending. on_checkpoint(CheckpointRequest) handles a checkpoint request from the lead;
        watch (liveness.ReplicaWatch) judges silent replicas: a hung one ends the job, one that
        has left ends it too unless replica_loss is "continue" or "replace" (then
        `replacements`, shard_rescue.Replacements, serves the replacement)."""
        self.watch, finished, backoff = watch, set(), Backoff(limit=2e-3)
        landing = Backoff(first=5e-6, limit=LANDING_SLEEP_LIMIT)
        dones: Counter[int] = Counter()  # ReplicaDone received, per replica (one per pushing partition)
        while True:
            watchdog.beat()
            for request, _ in messenger.receive_all(CHECKPOINT):  # promptly, even when busy
                on_checkpoint(request)
            progress = self.apply_pending() + (replacements.serve(finished) if replacements is not None else 0)
            if progress:
                backoff.reset()
                landing.reset()
                continue
            if len(finished) == self.n_replicas and self.open is None:
                return
            dones.update(done.replica_id for done, _ in messenger.receive_all(DONE))
            finished.update(r for r, count in dones.items() if count >= self.pushers_per_replica)
            if watch is not None:
                self._judge_silent(finished, replica_loss, replacements)
            if self.open is not None:
                landing.sleep()  # the open push's next chunk is on its way
            elif len(finished) < self.n_replicas:
                landing.reset()
                backoff.sleep()

    def _judge_silent(self, finished: set[int], replica_loss: str, replacements=None) -> None:
        replaced = replacements.replaced if replacements is not None else set()
        left, hung = self.watch.verdicts(finished | replaced)
        for replica_id, silent in hung:
            raise RankHung(
                f"{self.watch.who(replica_id)} has sent shard {self.shard_id} no push for {silent:.0f} s and "
                f"{self.watch.state(replica_id)}: it is hung (faults.watchdog_seconds = {self.watch.timeout:g})"
            )
        for replica_id in left:
            who = self.watch.who(replica_id)
            if replica_id == 0:
                raise RankLost(
                    f"{who}, the lead, has left the job (its process exited): it "
                    "coordinates checkpoints and writes the summary, so the job ends (resume from the "
                    "last checkpoint)"
                )
            if replica_loss == "abort":
                raise RankLost(
                    f"{who} has left the job (its process exited); "
                    "faults.replica_loss = abort ends the job (resume from the last checkpoint)"
                )
            if replacements is not None:
                log.warning("%s has left the job; asking the lead to replace it", who)
                replacements.left(replica_id)
                continue
            log.warning("%s has left the job; training goes on without it", who)
            self.forget(replica_id)
            finished.add(replica_id)


def serve_shard(job: Job, windows: ParamServerWindows, messenger: Messenger, peers: Peers, watchdog: Watchdog) -> dict:
    """The shard rank's whole life: publish the initial (or resumed) slice, serve, report."""
    shard_id = job.role.shard_id
    start, stop = job.layout.shard_ranges[shard_id]
    pushers = len(job.layout.shard_partitions[shard_id]) if job.layout.shard_partitions else 1
    shard = Shard(windows, shard_id, job.spec.optimizer, initial_params(job, start, stop), pushers)
    resumed_from = None
    if job.resume:
        shard.restore(downpour_state(job, shard_id, start, stop))
        resumed_from = shard.version
        log.info("resumed from %s at version %d", job.resume.directory, shard.version)
    shard.warm_up()
    barrier_sleeping(messenger.comm)  # initial parameters are published
    log.info("serving parameters [%d, %d)", start, stop)
    lead, faults = job.layout.lead_rank, job.spec.faults
    replacements = Replacements(job, messenger, shard) if faults.replica_loss == "replace" else None
    with watchdog:
        shard.serve(
            messenger,
            lambda request: reply_to_checkpoint(messenger, shard, start, stop, request, lead),
            ReplicaWatch(peers, _pushers(job, shard_id), faults.watchdog_seconds),
            faults.replica_loss,
            replacements,
        )
    return {
        "role": "shard",
        "shard_id": shard_id,
        "version": shard.version,
        "resumed_from_version": resumed_from,
        **shard.stats.as_dict(),
    }


def _pushers(job: Job, shard_id: int) -> list[int]:
    """The world rank watched for each replica: its first partition whose block this shard holds
    (a partitioned replica's ranks step together, and replica_loss = continue needs P = 1)."""
    first = job.layout.shard_partitions[shard_id][0] if job.layout.shard_partitions else 0
    return [job.layout.rank_of(replica_id, first) for replica_id in range(job.spec.topology.replicas)]
