"""The Sandblaster coordinator's bookkeeping (optim/evaluation_state.py), without MPI: events in,
actions out. Stand-in replicas and shards below follow roles/sandblaster/replica.py's rules
(accrue a result only on the verdict "counted"; push every push_every counted portions, on
`flush` and when there is no next portion; a note after each push), so the properties cover
the whole exactly-once protocol, not only the coordinator's half."""

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distbelief_mpi.optim.evaluation_state import BusyReplica, EvaluationState, SendWork


def rows(n: int, size: int = 10) -> list[tuple[int, int]]:
    return [(p * size, (p + 1) * size) for p in range(n)]


def loss_of(portion: int) -> float:
    return float(portion + 1)  # small integers: sums are exact in any order


# -- the deterministic cases -------------------------------------------------------------------


def test_a_pass_offers_every_idle_replica_its_own_block_first():
    state = EvaluationState(2)
    assert state.start(rows(4), now=0.0) == [
        SendWork(0, 1, 0, None, False, (0, 10)),
        SendWork(1, 1, 2, None, True, (20, 30)),  # 2 left unissued <= 2 replicas: flush from now on
    ]
    assert state.busy == {0, 1}


def test_the_pass_ends_only_when_every_counted_portion_is_pushed():
    state = EvaluationState(1)
    state.start(rows(2), now=0.0)
    state.result_arrived(0, 1, 0, loss_of(0), echo=False, now=1.0)
    assert state.result_arrived(0, 1, 1, loss_of(1), echo=False, now=2.0) == [SendWork(0, 1, None, True, True, None)]
    assert not state.finished  # every portion counted, none pushed
    state.pushes_noted(0, 1, pushes=1, portions=1)
    assert not state.finished  # one of two pushed
    state.pushes_noted(0, 0, pushes=5, portions=2)  # a stale note of another pass
    assert not state.finished
    state.pushes_noted(0, 1, pushes=2, portions=2)
    assert state.finished
    outcome = state.finish()
    assert (outcome.loss_sum, outcome.pushes, outcome.n_examples) == (3.0, (2,), 20)
    assert state.totals.batches == 1 and state.examples_evaluated == 20


def test_an_echo_never_counts_twice_and_gets_no_answer():
    state = EvaluationState(1)
    state.start(rows(2), now=0.0)
    assert state.result_arrived(0, 1, 0, loss_of(0), echo=False, now=1.0) == [SendWork(0, 1, 1, True, True, (10, 20))]
    assert state.result_arrived(0, 1, 0, loss_of(0), echo=True, now=1.0) == []
    assert state.scheduler.duplicates_discarded == 1
    state.result_arrived(0, 1, 1, loss_of(1), echo=False, now=2.0)
    state.pushes_noted(0, 1, pushes=1, portions=2)
    assert state.finish().loss_sum == 3.0  # not 4.0


def slowed_replica_1() -> EvaluationState:
    """Two replicas, four portions; replica 1 never finishes portion 2, so replica 0 backs it up."""
    state = EvaluationState(2)
    state.start(rows(4), now=0.0)  # 0 -> replica 0, 2 -> replica 1
    assert state.result_arrived(0, 1, 0, 1.0, False, now=1.0)[0].portion == 1  # affinity
    assert state.result_arrived(0, 1, 1, 2.0, False, now=2.0)[0].portion == 3  # steals the free run
    backup = state.result_arrived(0, 1, 3, 4.0, False, now=3.0)
    assert backup == [SendWork(0, 1, 2, True, True, (20, 30))]  # replica 1's outstanding portion
    assert state.scheduler.backups_issued == 1
    assert state.busy_replicas(now=5.0) == [BusyReplica(0, 2.0), BusyReplica(1, 5.0)]
    assert state.result_arrived(0, 1, 2, 3.0, False, now=4.0) == [SendWork(0, 1, None, True, True, None)]
    return state


def test_a_slowed_replica_is_backed_up_near_the_end_and_its_result_is_a_duplicate():
    state = slowed_replica_1()
    assert state.result_arrived(1, 1, 2, 3.0, False, now=6.0) == [SendWork(1, 1, None, False, True, None)]
    state.pushes_noted(0, 1, pushes=4, portions=4)
    assert state.finished and state.busy == set()
    assert state.finish().loss_sum == 10.0
    assert (state.totals.backups_won, state.totals.duplicates_discarded, state.late_results) == (1, 1, 0)


def test_a_stragglers_result_of_an_earlier_pass_is_discarded_and_answered():
    state = slowed_replica_1()
    state.pushes_noted(0, 1, pushes=4, portions=4)
    assert state.finished  # replica 1 still computes portion 2: it holds nothing counted
    state.finish()
    offers = state.start(rows(4), now=10.0)
    assert [work.replica for work in offers] == [0]  # the straggler is busy: no work for it yet
    answer = state.result_arrived(1, 1, 2, 3.0, False, now=11.0)
    assert answer == [SendWork(1, 2, 2, False, True, (20, 30))]  # verdict "not counted", then new work
    assert state.late_results == 1
    assert state.result_arrived(1, 1, 2, 3.0, True, now=11.0) == []  # its echo: no answer, not late
    assert state.late_results == 1


def test_counters_survive_a_checkpoint():
    state = slowed_replica_1()
    state.pushes_noted(0, 1, pushes=4, portions=4)
    state.finish()
    state.discarded_at_stop(2)
    resumed = EvaluationState(2)
    resumed.restore({"batches": 7, **state.counters()})  # a checkpoint's entry holds more keys
    assert (
        resumed.counters()
        == state.counters()
        == {
            "examples_evaluated": 40,
            "eval_id": 1,
            "late_results": 2,
            "totals": {
                "batches": 1,
                "portions_issued": 4,
                "backups_issued": 1,
                "backups_won": 1,
                "duplicates_discarded": 0,
            },
        }
    )
    assert resumed.start(rows(1), now=0.0)[0].eval_id == 2


def test_events_outside_a_pass_are_refused():
    state = EvaluationState(1)
    with pytest.raises(RuntimeError):
        state.result_arrived(0, 1, 0, 1.0, False, now=0.0)
    state.start(rows(1), now=0.0)
    with pytest.raises(RuntimeError):
        state.finish()  # not finished
    with pytest.raises(RuntimeError):
        state.start(rows(1), now=0.0)


# -- any order: stand-in replicas and shards --------------------------------------------------


class FakeReplica:
    """roles/sandblaster/replica.PortionWorker's bookkeeping; gradients are one-hot (n,) counts."""

    def __init__(self, n_portions: int, push_every: int, echoes: bool):
        self.push_every, self.echoes = push_every, echoes
        self.inbox: deque[SendWork] = deque()  # the WORK channel, in order
        self.results: deque[tuple[int, int, bool]] = deque()  # (eval, portion, echo) on RESULT
        self.notes: deque[tuple[int, int, int]] = deque()  # (eval, pushes, portions) on PUSHES
        self.eval_id, self.computing, self.awaiting_verdict = 0, None, False
        self.last = np.zeros(n_portions, np.int64)  # the last computed portion's "gradient"
        self.accrued = np.zeros(n_portions, np.int64)
        self.unpushed = self.pushes = self.portions_pushed = 0

    def handle(self, work: SendWork, shard: dict) -> None:
        if work.counted is None:
            assert not self.awaiting_verdict, "offered new work while its result is unanswered"
        else:
            assert self.awaiting_verdict, "a verdict it did not ask for"
        self.awaiting_verdict = False
        if work.eval_id != self.eval_id:
            assert not self.accrued.any(), "a new pass while counted work is unpushed"
            self.eval_id, self.unpushed, self.pushes, self.portions_pushed = work.eval_id, 0, 0, 0
        if work.counted:
            self.accrued += self.last
            self.unpushed += 1
        if self.unpushed and (self.unpushed >= self.push_every or work.flush or work.portion is None):
            shard.setdefault(self.eval_id, []).append(self.accrued.copy())  # the one-sided Put
            self.pushes, self.portions_pushed = self.pushes + 1, self.portions_pushed + self.unpushed
            self.accrued[:], self.unpushed = 0, 0
            self.notes.append((self.eval_id, self.pushes, self.portions_pushed))
        if work.portion is not None:
            self.computing = work.portion

    def finish_portion(self) -> None:
        self.last[:] = 0
        self.last[self.computing] = 1
        self.results.append((self.eval_id, self.computing, False))
        if self.echoes:
            self.results.append((self.eval_id, self.computing, True))
        self.computing, self.awaiting_verdict = None, True


class Simulation:
    def __init__(self, n_replicas, n_portions, push_every, backups, echo_replica):
        self.n = n_portions
        self.state = EvaluationState(n_replicas, backup_after=0.0, max_backups=1 if backups else 0)
        self.replicas = [FakeReplica(n_portions, push_every, r == echo_replica) for r in range(n_replicas)]
        self.shard: dict[int, list[np.ndarray]] = {}  # eval id -> pushed gradients

    def moves(self) -> list:
        found = []
        for r, replica in enumerate(self.replicas):
            if replica.computing is not None:
                found.append((replica.finish_portion,))
            elif replica.inbox:
                found.append((lambda x: x.handle(x.inbox.popleft(), self.shard), replica))
            if replica.results:
                found.append((self.deliver_result, r))
            if replica.notes:
                found.append((self.deliver_note, r))
        return found

    def deliver_result(self, r: int) -> None:
        eval_id, portion, echo = self.replicas[r].results.popleft()
        actions = self.state.result_arrived(r, eval_id, portion, loss_of(portion), echo, now=0.0)
        verdicts = [work for work in actions if work.counted is not None]
        assert [work.replica for work in verdicts] == ([] if echo else [r]), "exactly one answer per result"
        self.send(actions)

    def deliver_note(self, r: int) -> None:
        self.state.pushes_noted(r, *self.replicas[r].notes.popleft())

    def send(self, actions: list[SendWork]) -> None:
        for work in actions:
            assert work.eval_id == self.state.eval_id
            self.replicas[work.replica].inbox.append(work)

    def run_pass(self, choices) -> None:
        self.send(self.state.start(rows(self.n), now=0.0))
        for _ in range(10_000):
            if self.state.finished:
                return self.check(self.state.finish())
            moves = self.moves()
            assert moves, "stuck: nothing in flight and the pass is not finished"
            move = moves[next(choices, 0) % len(moves)]
            move[0](*move[1:])
        raise AssertionError("no end")

    def check(self, outcome) -> None:
        """Every portion in the batch gradient and loss exactly once; the shards saw the pushes
        the coordinator asks them to wait for."""
        pushed = self.shard.pop(self.state.eval_id, [])
        np.testing.assert_array_equal(np.sum(pushed, axis=0) if pushed else np.zeros(self.n), np.ones(self.n))
        assert outcome.loss_sum == sum(loss_of(p) for p in range(self.n))
        assert sum(outcome.pushes) == len(pushed)

    def stop(self) -> int:
        """The run ends: StopWork queues behind the work a replica has been sent, so it computes
        that first; every result still unread is late."""
        for replica in self.replicas:
            while replica.computing is not None or replica.inbox:
                replica.finish_portion() if replica.computing is not None else replica.handle(
                    replica.inbox.popleft(), self.shard
                )
        unread = sum(len(replica.results) for replica in self.replicas)
        self.state.discarded_at_stop(unread)
        return unread


@settings(max_examples=300, deadline=None)
@given(
    n_replicas=st.integers(1, 4),
    n_portions=st.integers(1, 12),
    push_every=st.integers(1, 3),
    backups=st.booleans(),
    echo_replica=st.one_of(st.none(), st.integers(0, 3)),
    passes=st.integers(1, 3),
    choices=st.lists(st.integers(0, 10**6), max_size=300),
)
def test_every_portion_counts_exactly_once_whatever_the_order(
    n_replicas, n_portions, push_every, backups, echo_replica, passes, choices
):
    sim = Simulation(n_replicas, n_portions, push_every, backups, echo_replica)
    order = iter(choices)
    for _ in range(passes):
        sim.run_pass(order)
    sim.stop()
    totals = sim.state.totals
    assert totals.batches == passes and totals.portions_issued == passes * n_portions
    assert sim.state.examples_evaluated == passes * n_portions * 10
    if echo_replica is None:  # each backup leaves one extra result: a duplicate, or a late one
        assert totals.duplicates_discarded + sim.state.late_results == totals.backups_issued
    if not backups:
        assert totals.backups_issued == 0
