"""Split-phase pushes and fetches: a replica's transfers advance one phase per training step.

Between hosts every RMA phase costs a network round trip plus the time the shard takes to be
scheduled and call into MPI (measured on emulated hosts of a shared 2-core machine: 1-2 ms a
phase, against 0.4 ms for a whole minibatch step of the digits job), so the three phases of
a synchronous exchange (replica_endpoint.py) would set the pace. Here the training loop calls
advance() after every step; once the last phase's round trip is likely over (an estimate learnt
from completions that had to wait, and at most MAX_STEPS_AHEAD steps later) it completes what
was issued, which travelled while the steps computed, and issues the next phase of every
shard's push and fetch:

    push, per shard:  claim -> Put gradient + header -> post -> claim (once the shard took it) ...
    fetch, per shard: Get buffer VERSION % 2 -> read WRITING (and the next VERSION) -> Get ...

It is the protocol of param_server.py and seqlock.py spread over steps: a push's data and
header are complete before its post, and a copy is used only once WRITING <= VERSION + 1 says
the shard did not start rewriting that buffer meanwhile. The price: a push carries the steps
accrued while the previous one travelled (as a deferred push does), a fetched copy is a step
or two old when used, and a replica holds a send and a staging buffer (2 x its block, as
overlap_comm's thread does). No thread and no spinning: nothing waits unless the network is
slower than a step.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from .param_server import CLAIMED, POSTED, freed, header_word, state_word
from .replica_endpoint import ReplicaEndpoint
from .seqlock import VERSION, WRITING

# The round-trip estimate: a completion that blocked longer than WAITED_S lengthens it by the
# time blocked; one that did not shortens it by ROUND_TRIP_SHRINK. MAX_ROUND_TRIP_S bounds it, so
# that a shard that stalls once (a checkpoint write) does not slow our transfers for long.
# MAX_STEPS_AHEAD: a replica computes at most this many steps between completions, however long
# the round trip: pushes then carry about 3 x this many steps and copies are about as old, which
# left the accuracy of the digits Downpour job unchanged across emulated hosts (docs/multihost.md;
# 8 began to cost accuracy in some runs, 2 and 1 cost throughput).
MAX_STEPS_AHEAD = 4
WAITED_S = 50e-6
ROUND_TRIP_SHRINK = 0.05
MAX_ROUND_TRIP_S = 0.02

# A piece's push: READY (nothing under way) -> CLAIMING -> WRITING_DATA -> POSTING -> READY
READY, CLAIMING, WRITING_DATA, POSTING = range(4)
# A piece's fetch: GETTING (a Get in flight) <-> CHECKING (WRITING and the next VERSION in flight)
GETTING, CHECKING = range(2)


def _words(n: int):
    return field(default_factory=lambda: np.zeros(n, np.int64))


@dataclass
class Piece:
    """Shard `shard_id`'s elements [offset, offset + length), at [start, start + length) of the
    replica's parameter vector, and the transfers under way for it."""

    shard_id: int
    offset: int
    start: int
    length: int
    push_phase: int = READY
    slot: int = -1
    claimed: int = 0  # the slot's CLAIMED state
    cas_seen: np.ndarray = _words(1)  # what the last CAS found (-1: none issued)
    cas_operands: np.ndarray = _words(2)  # (new, expected)
    header: np.ndarray = _words(4)  # BASE, STEPS, OFFSET, LENGTH
    fetch_phase: int = CHECKING
    words: np.ndarray = _words(2)  # (WRITING, VERSION) as last read
    getting: int = -1  # the version whose buffer the last Get read (-1: none yet)

    @property
    def span(self) -> slice:
        return slice(self.start, self.start + self.length)


class PipelinedTransfers:
    """pieces: (shard id, offset in its slice, start in our vector, length), one per shard this
    replica trains a part of. advance() once per step, take_fetch() at fetch points, drain()
    before any synchronous push."""

    def __init__(self, endpoint: ReplicaEndpoint, pieces: list[tuple[int, int, int, int]], n_params: int):
        self.endpoint, self.windows = endpoint, endpoint.windows
        self.pieces = [Piece(*piece) for piece in pieces]
        self.sending = np.zeros(n_params, np.float32)  # gradients on their way, per piece's span
        self.staging = np.zeros(n_params, np.float32)  # copies on their way
        self.versions = [-1] * len(self.pieces)  # of the newest consistent copy of each piece
        self.fresh = [False] * len(self.pieces)  # staging holds a copy not yet taken
        self.issued: set[int] = set()  # shards with operations in flight
        self.issued_at, self.round_trip = 0.0, 0.0  # when they were issued; the estimated round trip (s)
        self.steps_waited = 0  # steps since the last completion
        self.pushes, self.deferred = 0, 0  # posted; refused (the shard had not taken our last one)
        for piece in self.pieces:  # the first VERSION (WRITING is not checked: no Get yet)
            piece.words[0] = -1
            self.windows.issue_read_word(piece.shard_id, VERSION, piece.words[1:2])
            self.issued.add(piece.shard_id)

    # -- the training loop's side -------------------------------------------------------------
    def advance(
        self,
        accrued: np.ndarray,
        accrued_steps: list[int],
        accrued_base: list[int],
        claim: bool,
        params: np.ndarray | None,
    ) -> list[int] | None:
        """Complete the last phase, issue the next. claim: a new push may start (a push point).
        A slot just claimed takes its piece's accrued gradient (copied out; accrued_steps[i]
        reset to 0). params: where copies that arrived go now (the next step is a fetch point),
        or None (they wait for take_fetch). Returns every piece's version when params got a new
        copy, else None. Until the round trip is likely over (the estimate round_trip, but at
        most MAX_STEPS_AHEAD steps) nothing is done: a step spent waiting for the network is a
        step not computed."""
        self.steps_waited += 1
        early = time.perf_counter() - self.issued_at < self.round_trip
        if self.issued and early and self.steps_waited < MAX_STEPS_AHEAD:
            return None
        self.steps_waited = 0
        self._complete()
        for index, piece in enumerate(self.pieces):
            if claim or piece.push_phase != READY:
                self._advance_push(index, piece, accrued, accrued_steps, accrued_base)
            self._check_fetch(index, piece)
        versions = self.take_fetch(params) if params is not None else None
        for index, piece in enumerate(self.pieces):  # staging taken: the next Get can go at once
            self._issue_fetch(index, piece)
        self.issued_at = time.perf_counter()
        return versions

    def take_fetch(self, params: np.ndarray) -> list[int] | None:
        """Copy the pieces fetched since the last take into params; every piece's version (the
        previous one where no newer copy came), or None when nothing new arrived."""
        if not any(self.fresh):
            return None
        for index, piece in enumerate(self.pieces):
            if self.fresh[index]:
                params[piece.span] = self.staging[piece.span]
                self.fresh[index] = False
        return list(self.versions)

    def drain(self, accrued: np.ndarray, accrued_steps: list[int], accrued_base: list[int]) -> None:
        """Finish the pushes under way (a claimed slot is always written and posted) and the
        operations in flight; afterwards the endpoint's synchronous calls may be used."""
        self._complete()
        while any(piece.push_phase != READY for piece in self.pieces):
            for index, piece in enumerate(self.pieces):
                if piece.push_phase != READY:
                    self._advance_push(index, piece, accrued, accrued_steps, accrued_base)
            self._complete()

    # -- pushes --------------------------------------------------------------------------------
    def _advance_push(self, index: int, piece: Piece, accrued, accrued_steps, accrued_base) -> None:
        if piece.push_phase == CLAIMING:
            claim = self.endpoint.settle_claim(piece.shard_id, int(piece.cas_seen[0]))
            if claim is None:
                piece.push_phase = READY  # refused: the gradient keeps accruing, we try again
                self.deferred += 1
            else:
                piece.slot, piece.claimed = claim
                self._send(index, piece, accrued, accrued_steps, accrued_base)
        elif piece.push_phase == WRITING_DATA:
            self._cas(piece, piece.slot, piece.claimed, piece.claimed + (POSTED - CLAIMED))
            piece.push_phase = POSTING
        elif piece.push_phase == POSTING:
            self.endpoint.in_flight[piece.shard_id] = (piece.slot, piece.claimed + (POSTED - CLAIMED))
            self.endpoint.pushed[piece.shard_id] += 1
            self.pushes += 1
            piece.push_phase = READY
        elif accrued_steps[index]:
            self._claim(piece)

    def _claim(self, piece: Piece) -> None:
        """CAS our last slot from the state the shard leaves when it has taken our push. With no
        push of ours on the books (the first), settle_claim looks for a free slot itself."""
        in_flight = self.endpoint.in_flight[piece.shard_id]
        piece.cas_seen[0] = -1
        if in_flight is not None:
            slot, posted = in_flight
            self._cas(piece, slot, freed(posted), self.endpoint.claimed_state(freed(posted)))
        piece.push_phase = CLAIMING

    def _send(self, index: int, piece: Piece, accrued, accrued_steps, accrued_base) -> None:
        span, windows = piece.span, self.windows
        self.sending[span] = accrued[span]
        accrued[span] = 0
        piece.header[:] = (accrued_base[index], accrued_steps[index], piece.offset, piece.length)
        accrued_steps[index] = 0
        windows.issue_put_slot(piece.shard_id, piece.slot, self.sending[span], piece.offset)
        windows.issue_write_words(piece.shard_id, header_word(windows.n_slots, piece.slot), piece.header)
        self.issued.add(piece.shard_id)
        piece.push_phase = WRITING_DATA

    def _cas(self, piece: Piece, slot: int, expected: int, new: int) -> None:
        piece.cas_operands[:] = (new, expected)
        self.windows.issue_compare_and_swap(piece.shard_id, state_word(slot), piece.cas_operands, piece.cas_seen)
        self.issued.add(piece.shard_id)

    # -- fetches -------------------------------------------------------------------------------
    def _check_fetch(self, index: int, piece: Piece) -> None:
        """After a Get and the WRITING read that followed it: is the copy in staging consistent?"""
        if piece.fetch_phase == CHECKING and piece.getting >= 0:
            if int(piece.words[0]) <= piece.getting + 1:
                self.versions[index], self.fresh[index] = piece.getting, True
            else:  # the shard began rewriting that buffer meanwhile: fetch again
                self.endpoint.reader.retries += 1
            piece.getting = -1

    def _issue_fetch(self, index: int, piece: Piece) -> None:
        windows = self.windows
        if piece.fetch_phase == GETTING:  # the Get is complete: now WRITING, and the next VERSION
            windows.issue_read_word(piece.shard_id, WRITING, piece.words[0:1])
            windows.issue_read_word(piece.shard_id, VERSION, piece.words[1:2])
            piece.fetch_phase = CHECKING
        elif not self.fresh[index]:  # VERSION known, staging free: Get that buffer
            piece.getting = int(piece.words[1])
            windows.issue_get_params(piece.shard_id, piece.getting, self.staging[piece.span], piece.offset)
            piece.fetch_phase = GETTING
        else:  # staging holds a copy not taken yet: read VERSION again, Get once it is taken
            windows.issue_read_word(piece.shard_id, VERSION, piece.words[1:2])
        self.issued.add(piece.shard_id)

    # -- completion ----------------------------------------------------------------------------
    def _complete(self) -> None:
        """Complete what is in flight, and learn how long a round trip takes: a completion that
        had to wait means the round trip is longer than the time since the issue."""
        if not self.issued:
            return
        started = time.perf_counter()
        self.windows.complete(sorted(self.issued), data=True, ctrl=True)
        self.issued.clear()
        blocked = time.perf_counter() - started
        if blocked > WAITED_S:  # we came too early by `blocked`: come later
            self.round_trip = min(MAX_ROUND_TRIP_S, self.round_trip + blocked)
        else:  # it was there already: try a little sooner
            self.round_trip *= 1 - ROUND_TRIP_SHRINK
