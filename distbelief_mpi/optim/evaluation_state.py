"""The Sandblaster coordinator's bookkeeping of evaluations, as one pure state machine.

An evaluation is one pass over a batch's portions (docs/sandblaster.md): replicas get portions
as they free up, the first result for a portion counts, backups go out near the end, and the
pass ends once every portion is counted and every counted gradient is pushed. This class holds
everything the coordinator must remember for that: the evaluation id, which replica computes
what since when, which results counted, how many pushes each replica posted, the loss sum, and
the counters of the run summary. It does no I/O and reads no clock (`now` is passed in, in
seconds of any monotonic clock); roles/sandblaster/cluster.py receives the messages, feeds
them here as events and sends what the returned actions say.

Events (methods), and the actions they return:
  start(portions, now)                        -> [SendWork]  a new pass: offers to idle replicas
  result_arrived(replica, eval_id, portion, loss, echo, now)
                                              -> [SendWork]  the verdict, and new work for whoever waits
  pushes_noted(replica, eval_id, pushes, portions)           a replica's cumulative push count
  busy_replicas(now)                          -> [BusyReplica]  whose liveness the caller checks
  finish()                                    -> PassOutcome  once `finished`: what the shards collect
  discarded_at_stop(results)                                 results left unread when the run ends

Exactly once: a replica adds a portion's gradient to what it pushes only after the verdict
"counted", and every result gets exactly one answer (an injected duplicate, `echo`, none). A
straggler still computing a portion of an earlier pass stays busy: it is offered no work until
its late result arrives, which is answered "not counted" (else it would take that verdict for
the verdict on its new portion).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .portions import PortionScheduler, PortionTotals


@dataclass(frozen=True)
class SendWork:
    """Send replica `replica` the verdict on its last result and its next portion."""

    replica: int
    eval_id: int
    portion: int | None  # index into the batch's portions; None: nothing for it now
    counted: bool | None  # did its last result count? None: it had no result outstanding
    flush: bool  # push counted gradients now: the pass is nearly done
    rows: tuple[int, int] | None  # [start, stop) training rows of the portion


@dataclass(frozen=True)
class BusyReplica:
    """A replica computing a portion: the caller checks it is alive and not hung."""

    replica: int
    waited: float  # seconds since its outstanding portion was handed out


@dataclass(frozen=True)
class PassOutcome:
    """What an ended pass leaves for the shards: replica r posted pushes[r] pushes."""

    loss_sum: float  # sum of the counted portions' summed losses
    pushes: tuple[int, ...]  # (R,)
    n_examples: int  # rows in the batch: the loss and gradient are sums over them


@dataclass
class _Pass:
    """One evaluation's state; per-replica lists are (R,)."""

    scheduler: PortionScheduler
    portions: tuple[tuple[int, int], ...]  # [start, stop) rows of each portion
    counted: list[int]  # counted portions per replica
    pushed: list[int]  # of which pushed (the replica's latest note)
    pushes: list[int]  # pushes posted per replica: what each shard must sum
    idle: set[int] = field(default_factory=set)  # replicas told "nothing for you now"
    loss_sum: float = 0.0


class EvaluationState:
    """The coordinator's bookkeeping over a run's evaluations, for `n_replicas` replicas.
    backup_after and max_backups are optim/portions.PortionScheduler's."""

    def __init__(self, n_replicas: int, backup_after: float = 0, max_backups: int = 1):
        if n_replicas < 1:
            raise ValueError(f"need at least one replica, got {n_replicas}")
        self.n_replicas, self.backup_after, self.max_backups = n_replicas, backup_after, max_backups
        self.eval_id = 0  # the pass in progress, or the last one
        self.busy: set[int] = set()  # replicas computing a portion whose result has not arrived
        self.assigned_at: dict[int, float] = {}  # replica -> when its outstanding portion went out
        self.late_results = 0  # results of an earlier pass (a straggler's), discarded
        self.totals = PortionTotals()
        self.examples_evaluated = 0
        self._pass: _Pass | None = None

    # -- events ----------------------------------------------------------------------------
    def start(self, portions: Sequence[tuple[int, int]], now: float) -> list[SendWork]:
        """A new pass over `portions`; every idle replica is offered one (a straggler still
        busy with an earlier pass is not: it gets work once its late result is answered)."""
        if self._pass is not None:
            raise RuntimeError(f"evaluation {self.eval_id} has not finished")
        self.eval_id += 1
        n = self.n_replicas
        scheduler = PortionScheduler(len(portions), n, backup_after=self.backup_after, max_backups=self.max_backups)
        self._pass = _Pass(scheduler, tuple((int(a), int(b)) for a, b in portions), [0] * n, [0] * n, [0] * n)
        self._pass.idle = set(range(n)) - self.busy
        return self._wake_idle(now)

    def result_arrived(
        self, replica: int, eval_id: int, portion: int, loss: float, echo: bool, now: float
    ) -> list[SendWork]:
        """A replica's result for `portion` of evaluation `eval_id`, its loss summed over the
        portion's rows. echo: an injected duplicate of a result already sent (no answer)."""
        run = self._in_pass()
        if eval_id != self.eval_id:  # a straggler's, of an earlier pass
            if echo:
                return []
            self.late_results += 1
            return self._answer(replica, False, now)
        counted = run.scheduler.complete(replica, portion)
        if counted:
            run.loss_sum += loss
            run.counted[replica] += 1
        actions = [] if echo else self._answer(replica, counted, now)
        if counted:  # may free a backup for, or end the pass for, a replica waiting idle
            actions += self._wake_idle(now)
        return actions

    def pushes_noted(self, replica: int, eval_id: int, pushes: int, portions: int) -> None:
        """In evaluation eval_id the replica has posted `pushes` pushes holding `portions`
        counted portions (cumulative over the pass; a note of an earlier pass is stale)."""
        run = self._in_pass()
        if eval_id == self.eval_id:
            run.pushed[replica], run.pushes[replica] = portions, pushes

    def busy_replicas(self, now: float) -> list[BusyReplica]:
        """Replicas computing a portion, with how long they have had it."""
        return [BusyReplica(r, now - self.assigned_at.get(r, now)) for r in sorted(self.busy)]

    def finish(self) -> PassOutcome:
        """End the pass (call once `finished`); adds it to the run's counters."""
        run = self._in_pass()
        if not self.finished:
            raise RuntimeError(f"evaluation {self.eval_id} is not finished")
        n_examples = run.portions[-1][1] - run.portions[0][0] if run.portions else 0
        self.totals.add(run.scheduler)
        self.examples_evaluated += n_examples
        self._pass = None
        return PassOutcome(run.loss_sum, tuple(run.pushes), n_examples)

    def discarded_at_stop(self, results: int) -> None:
        """Results (duplicates included) nobody read when the replicas were stopped."""
        self.late_results += results

    # -- queries -----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Every portion counted and every counted portion pushed."""
        run = self._pass
        return run is not None and run.scheduler.done and run.pushed == run.counted

    @property
    def scheduler(self) -> PortionScheduler | None:
        """The pass in progress's scheduler (None between passes)."""
        return None if self._pass is None else self._pass.scheduler

    # -- checkpoints -------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """The counters a checkpoint keeps (between passes; busy replicas are not kept)."""
        return {
            "examples_evaluated": self.examples_evaluated,
            "eval_id": self.eval_id,
            "late_results": self.late_results,
            "totals": self.totals.as_dict(),
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Continue from counters() as a checkpoint kept them (extra keys are ignored)."""
        if self._pass is not None:
            raise RuntimeError("cannot restore counters during an evaluation")
        self.examples_evaluated, self.eval_id = int(saved["examples_evaluated"]), int(saved["eval_id"])
        self.late_results, self.totals = int(saved["late_results"]), PortionTotals(**saved["totals"])

    # -- internals ---------------------------------------------------------------------------
    def _in_pass(self) -> _Pass:
        if self._pass is None:
            raise RuntimeError("no evaluation in progress")
        return self._pass

    def _wake_idle(self, now: float) -> list[SendWork]:
        return [action for r in sorted(self._in_pass().idle) for action in self._offer(r, None, now)]

    def _answer(self, replica: int, counted: bool, now: float) -> list[SendWork]:
        """Exactly one answer per result: the replica reads it as the verdict on that result."""
        self.busy.discard(replica)
        return self._offer(replica, counted, now)

    def _offer(self, replica: int, counted: bool | None, now: float) -> list[SendWork]:
        """The verdict on the replica's last result and its next portion (or none now); no
        message when there is neither."""
        run = self._in_pass()
        scheduler = run.scheduler
        portion = None if scheduler.done else scheduler.next_for(replica)
        # Near the end, counted gradients go to the shards at once: a replica busy with its last
        # portion (perhaps lost to a backup) must not hold counted work the pass is waiting for.
        near_end = scheduler.n - scheduler.portions_issued <= self.n_replicas
        if portion is None:
            run.idle.add(replica)
            if counted is None:
                return []  # it waits for a later offer
            rows = None
        else:
            run.idle.discard(replica)
            self.busy.add(replica)
            self.assigned_at[replica] = now
            rows = run.portions[portion]
        return [SendWork(replica, self.eval_id, portion, counted, near_end, rows)]
