from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distbelief_mpi.optim.portions import (
    PortionScheduler,
    PortionTotals,
    cut_portions,
    default_portion_size,
)


class Batch:
    """Replicas holding portions; results are delivered (or re-delivered) in any order."""

    def __init__(self, sched: PortionScheduler, grads: np.ndarray):
        self.sched, self.grads = sched, grads  # grads (n, 3) int64, one per portion
        self.held = [[] for _ in range(sched.n_replicas)]  # given, result not sent
        self.sent = [[] for _ in range(sched.n_replicas)]  # result sent at least once
        self.total = np.zeros(grads.shape[1], np.int64)  # the batch gradient
        self.counted = np.zeros(len(grads), int)
        self.results = 0

    def request(self, r):
        p = self.sched.next_for(r)
        if p is not None:
            assert p not in self.held[r] and p not in self.sent[r]
            self.held[r].append(p)
        return p

    def deliver(self, r, p):
        self.results += 1
        if self.sched.complete(r, p):
            self.total += self.grads[p]
            self.counted[p] += 1

    def finish(self, r, k):
        p = self.held[r].pop(k % len(self.held[r]))
        self.sent[r].append(p)
        self.deliver(r, p)

    def shuffle_drain(self, rng):
        """Random replicas finish a random held portion or ask for work: backups often win here."""
        for _ in range(20 * (self.sched.n + self.sched.n_replicas)):
            r = rng.integers(self.sched.n_replicas)
            self.finish(r, rng.integers(99)) if self.held[r] and rng.random() < 0.4 else self.request(r)

    def drain(self):
        for _ in range(10 * self.sched.n + 10):
            if self.sched.done:
                return
            for r in range(self.sched.n_replicas):
                self.finish(r, 0) if self.held[r] else self.request(r)
        raise AssertionError("no progress")


ACTIONS = st.lists(st.tuples(st.sampled_from(["request", "finish", "duplicate"]), st.integers(0, 99)), max_size=150)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 20),
    replicas=st.integers(1, 5),
    actions=ACTIONS,
    max_backups=st.integers(0, 2),
    backup_after=st.one_of(st.integers(0, 20), st.floats(0.0, 1.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_portion_counts_exactly_once(n, replicas, actions, max_backups, backup_after, seed):
    grads = np.random.default_rng(n).integers(-1000, 1000, size=(n, 3))
    sched = PortionScheduler(n, replicas, backup_after=backup_after, max_backups=max_backups)
    batch = Batch(sched, grads)
    for kind, k in actions:
        r = k % replicas
        if kind == "request":
            batch.request(r)
        elif kind == "finish" and batch.held[r]:
            batch.finish(r, k)
        elif kind == "duplicate" and batch.sent[r]:
            batch.deliver(r, batch.sent[r][k % len(batch.sent[r])])
    batch.shuffle_drain(np.random.default_rng(seed))
    batch.drain()
    assert sched.done and (batch.counted == 1).all()
    assert all(type(v) is int for v in sched.summary().values())  # JSON-able as is
    np.testing.assert_array_equal(batch.total, grads.sum(axis=0))
    primary_wins = sum(sched.holders(p)[0] == sched._winner[p] for p in range(n))
    assert primary_wins + sched.backups_won == n == sched.portions_issued == sum(sched.wins_by_replica)
    assert sched.duplicates_discarded == batch.results - n
    assert sched.backups_issued == sum(len(sched.holders(p)) - 1 for p in range(n))
    assert all(len(set(sched.holders(p))) == len(sched.holders(p)) <= 1 + max_backups for p in range(n))
    for r in range(replicas):  # late results after the batch is done are still discarded
        for p in batch.held[r]:
            assert not sched.complete(r, p)


def test_backup_race_first_result_wins():
    sched = PortionScheduler(2, 2)
    assert [sched.next_for(0), sched.next_for(1)] == [0, 1]
    assert sched.complete(1, 1)
    assert sched.next_for(1) == 0  # backup of replica 0's straggler
    assert sched.next_for(1) is None  # one backup per portion by default
    assert sched.complete(1, 0) and not sched.complete(0, 0)
    assert sched.done and sched.summary() == {
        "portions": 2,
        "portions_issued": 2,
        "backups_issued": 1,
        "backups_won": 1,
        "duplicates_discarded": 1,
    }


def test_backups_wait_for_the_threshold():
    sched = PortionScheduler(4, 2, backup_after=0.75)  # 3 portions must be complete first
    held = [sched.next_for(0), sched.next_for(1), sched.next_for(0), sched.next_for(1)]
    assert sorted(held) == [0, 1, 2, 3]
    assert sched.complete(1, held[1]) and sched.next_for(1) is None
    assert sched.complete(1, held[3]) and sched.next_for(1) is None
    assert sched.complete(0, held[0]) and sched.next_for(1) == held[2]


def test_result_from_a_replica_never_given_the_portion_is_an_error():
    sched = PortionScheduler(3, 2)
    sched.next_for(0)
    for replica, portion in [(1, 0), (0, 2), (0, -1), (0, 3)]:
        with pytest.raises(ValueError):
            sched.complete(replica, portion)


def test_equal_speed_replicas_each_stream_one_contiguous_block():
    sched, got = PortionScheduler(12, 3), [[], [], []]
    while not sched.done:
        for r in range(3):
            p = sched.next_for(r)
            if p is not None:
                got[r].append(p)
                sched.complete(r, p)
    assert got == [list(range(4)), list(range(4, 8)), list(range(8, 12))]
    assert sched.backups_issued == 0


def test_fast_replicas_take_more_portions_and_keep_runs_sequential():
    sched, got, busy = PortionScheduler(64, 4), [[] for _ in range(4)], [None] * 4
    for tick in range(1000):
        for r in range(4):
            if busy[r] is not None and (r > 0 or tick % 5 == 0):  # replica 0 is 5x slower
                sched.complete(r, busy[r])
                busy[r] = None
            if busy[r] is None and not sched.done:
                busy[r] = sched.next_for(r)
                if busy[r] is not None:
                    got[r].append(busy[r])
        if sched.done:
            break
    assert sched.done and len(got[0]) < min(len(g) for g in got[1:])
    jumps = sum(b != a + 1 for g in got for a, b in pairwise(g))
    assert jumps <= 12, got  # runs stay long: few non-sequential switches over 64 portions


def test_cut_portions_partitions_the_batch():
    for n, size in [(0, 3), (10, 3), (9, 3), (5, 10)]:
        parts = cut_portions(n, size)
        assert [i for a, b in parts for i in range(a, b)] == list(range(n))
        assert all(0 < b - a <= size for a, b in parts)
    with pytest.raises(ValueError):
        cut_portions(5, 0)
    assert default_portion_size(10_000, 4) == 250 and default_portion_size(3, 4) == 1


def test_totals_add_batches():
    totals = PortionTotals()
    for _ in range(2):
        sched = PortionScheduler(1, 2)
        sched.next_for(0), sched.next_for(1)
        sched.complete(1, 0), sched.complete(0, 0)
        totals.add(sched)
    assert totals.as_dict() == {
        "batches": 2,
        "portions_issued": 2,
        "backups_issued": 2,
        "backups_won": 2,
        "duplicates_discarded": 2,
    }
