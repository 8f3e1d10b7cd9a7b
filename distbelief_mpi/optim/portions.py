"""The coordinator's portion scheduler for one Sandblaster batch (load balancing and backup tasks).

A batch of N examples is cut into portions of p examples, p much smaller than N / replicas, so fast
replicas simply do more portions. A replica asks for work whenever it is free (it may also ask ahead,
to prefetch); `next_for` answers with a portion id, or None. Rules, in order:

1. Affinity: the portion after the replica's last primary portion, if still unissued. A replica's
   first portion is the start of its own block r * n // R, so equal-speed replicas each stream
   through one contiguous block.
2. Stealing: otherwise, from the longest unissued run [a, b): its middle a + (b - a) // 2 when a
   replica is still streaming into a (it got a - 1 and has not moved on), else a. The stream keeps
   the first half, the thief starts a sequential run of its own.
3. Backups (MapReduce's backup tasks): once every portion is issued and at least `backup_after`
   portions have completed (a count, or a fraction of n when a float), a free replica gets the
   outstanding portion issued longest ago that it does not hold and that has fewer than
   `max_backups` backups (default 1: a straggler's work is done at most twice).

Exactly once: `complete(replica, portion)` is True only for the first result for a portion; the
caller adds that portion's gradient to the batch gradient only then. Every later result (the loser of
a backup race, or a repeated message) returns False and counts in `duplicates_discarded`.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np


def cut_portions(n_examples: int, portion_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of portion_size examples (the last may be shorter) covering 0..n."""
    if portion_size < 1:
        raise ValueError(f"portion_size must be >= 1, got {portion_size}")
    return [(a, min(a + portion_size, n_examples)) for a in range(0, n_examples, portion_size)]


def default_portion_size(batch_size: int, n_replicas: int, portions_per_replica: int = 10) -> int:
    """A portion size giving each replica about `portions_per_replica` portions of a batch."""
    return max(1, batch_size // (max(1, n_replicas) * portions_per_replica))


class PortionScheduler:
    """Issues the portions 0..n-1 of one batch to replicas 0..R-1 and counts each result once."""

    def __init__(self, n_portions: int, n_replicas: int, backup_after: float = 0, max_backups: int = 1):
        if n_portions < 0 or n_replicas < 1 or max_backups < 0:
            raise ValueError(f"bad scheduler sizes {n_portions}, {n_replicas}, {max_backups}")
        self.n, self.n_replicas, self.max_backups = n_portions, n_replicas, max_backups
        frac = isinstance(backup_after, float)
        self.backup_threshold = math.ceil(backup_after * n_portions) if frac else int(backup_after)
        self._issued = np.zeros(n_portions, bool)  # (n,) primary issued
        self._holders: list[list[int]] = [[] for _ in range(n_portions)]  # replicas given each portion, primary first
        self._winner = np.full(n_portions, -1)  # (n,) replica whose result counted
        self._last = [-1] * n_replicas  # each replica's last primary portion
        self._outstanding: dict[int, None] = {}  # issued, not completed, oldest first
        self.completed = self.portions_issued = self.backups_issued = 0
        self.backups_won = self.duplicates_discarded = 0
        self.wins_by_replica = [0] * n_replicas

    @property
    def done(self) -> bool:
        return self.completed == self.n

    def holders(self, portion: int) -> tuple[int, ...]:
        """Replicas given `portion`, primary first (to cancel the losers once it completes)."""
        return tuple(self._holders[portion])

    def next_for(self, replica: int) -> int | None:
        """The next portion for a free `replica`, or None (nothing to do now; ask again later)."""
        replica = int(replica)
        p = self._new_portion(replica)
        if p is not None:
            self._issued[p], self._last[replica] = True, p
            self.portions_issued += 1
            self._outstanding[p] = None
        else:
            p = self._backup_portion(replica)
            if p is None:
                return None
            self.backups_issued += 1
        self._holders[p].append(replica)
        return p

    def complete(self, replica: int, portion: int) -> bool:
        """A result arrived. True: the first for `portion`, count it. False: a duplicate, discard."""
        replica, portion = int(replica), int(portion)
        if not 0 <= portion < self.n or replica not in self._holders[portion]:
            raise ValueError(f"replica {replica} was never given portion {portion}")
        if self._winner[portion] >= 0:
            self.duplicates_discarded += 1
            return False
        self._winner[portion] = replica
        self.completed += 1
        self.wins_by_replica[replica] += 1
        self.backups_won += int(self._holders[portion][0] != replica)
        del self._outstanding[portion]
        return True

    def summary(self) -> dict:
        return {
            "portions": self.n,
            "portions_issued": self.portions_issued,
            "backups_issued": self.backups_issued,
            "backups_won": self.backups_won,
            "duplicates_discarded": self.duplicates_discarded,
        }

    def _new_portion(self, replica: int) -> int | None:
        last = self._last[replica]
        nxt = last + 1 if last >= 0 else replica * self.n // self.n_replicas
        if nxt < self.n and not self._issued[nxt]:
            return nxt
        free = np.concatenate(([0], (~self._issued).view(np.int8), [0]))
        edges = np.flatnonzero(np.diff(free))  # starts and stops of unissued runs, interleaved
        if edges.size == 0:
            return None
        starts, stops = edges[0::2], edges[1::2]
        i = int(np.argmax(stops - starts))  # the first longest run
        a, b = int(starts[i]), int(stops[i])
        streaming = a > 0 and self._last[self._holders[a - 1][0]] == a - 1
        return a + (b - a) // 2 if streaming else a

    def _backup_portion(self, replica: int) -> int | None:
        if self.completed < self.backup_threshold:
            return None
        for p in self._outstanding:  # oldest primary issue first
            holders = self._holders[p]
            if replica not in holders and len(holders) <= self.max_backups:
                return p
        return None


@dataclass
class PortionTotals:
    """Counters over many batches, for the run summary."""

    batches: int = 0
    portions_issued: int = 0
    backups_issued: int = 0
    backups_won: int = 0
    duplicates_discarded: int = 0

    def add(self, scheduler: PortionScheduler) -> None:
        self.batches += 1
        for key, value in scheduler.summary().items():
            if hasattr(self, key):
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict:
        return asdict(self)
