"""A replica's side of the parameter server: post pushes and fetch consistent parameters,
several shards at once, in three round trips whatever the number of shards.

The protocol (param_server.py for the slots, seqlock.py for the parameter buffers) needs, per
shard, a claim before a push's data, the data before its post, and a read of VERSION before
the buffer's Get before the read of WRITING. Between hosts every one of these is a network
round trip that also waits for the shard to progress MPI, so `exchange` issues the steps of
every shard (pushes and fetches alike) together and completes each phase once:

    1. claim (a CAS on our last slot)       and  read VERSION
    2. Put the gradient, write its header   and  Get the parameter buffer VERSION % 2
    3. post (a CAS: CLAIMED -> POSTED)      and  read WRITING

Phase 3's post comes after phase 2's completion, so a shard that sees POSTED sees the whole
gradient and header; a fetch is consistent when WRITING <= VERSION + 1 (seqlock.py), and is
retried on its own otherwise. The rare claims the fast path cannot make (the first push, or our
old slot taken by another replica meanwhile) read the slot states and try each, in place.

A large push to a shard on this node lands in chunks of `chunk_elements` (param_server.py,
step 2): phase 2 writes its header only, then each chunk is Put and flushed and the slot's
LANDED word raised, so the shard applies chunk k while chunk k + 1 is copied (measured:
bench/ps_bandwidth.py). Within a node a flush is a few microseconds; between nodes each would be
a network round trip, so pushes to other nodes (and the pipelined ones, pipelined.py) land
whole. With chunked pushes a fetch's WRITING is read right after its Get, before the chunks,
so that the shard's applying our push meanwhile cannot make the copy look torn.
"""

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..errors import RankHung
from .control import Backoff
from .param_server import (
    CLAIMED,
    FREE,
    POSTED,
    ParamServerWindows,
    freed,
    header_word,
    landed_word,
    phase_of,
    slot_state,
    state_word,
)
from .seqlock import VERSION, WRITING, SeqlockReader

# Elements per chunk of a push landing in chunks (4 MiB of float32). Measured with
# bench/ps_bandwidth.py (41.8M parameters, Adagrad, 1 shard): see docs/downpour.md.
PUSH_CHUNK = 1 << 20


class PushItem(NamedTuple):
    """grad (n,) for the shard's elements [offset, offset + n), computed on base_version over steps."""

    shard_id: int
    grad: np.ndarray
    base_version: int
    steps: int
    offset: int = 0


class FetchItem(NamedTuple):
    """out (n,) <- the shard's elements [offset, offset + n)."""

    shard_id: int
    out: np.ndarray
    offset: int = 0


class ReplicaEndpoint:
    """A replica's pushes and fetches. At most one push of this endpoint is in flight per shard:
    a push is refused (nothing sent) while the previous one has not been taken, or when every
    slot is busy. A shard that takes nothing for `hung_after` seconds (0: never judged) while
    we wait is hung: the push raises RankHung naming it rather than deferring forever."""

    def __init__(
        self, windows: ParamServerWindows, replica_id: int, hung_after: float = 0.0, chunk_elements: int = PUSH_CHUNK
    ):
        self.windows, self.replica_id, self.hung_after = windows, replica_id, hung_after
        self.chunk_elements = chunk_elements  # 0: every push lands whole
        n_shards = len(windows.shard_ranks)
        self.pushed = [0] * n_shards  # pushes posted, per shard
        self.in_flight: list[tuple[int, int] | None] = [None] * n_shards  # (slot, its POSTED state)
        self.busy_since: list[float | None] = [None] * n_shards
        self.busy_seen: list[object] = [None] * n_shards  # what refused us: unchanged means no progress
        self.reader = SeqlockReader(windows)

    @property
    def fetch_retries(self) -> int:
        return self.reader.retries

    # -- one shard ------------------------------------------------------------------------
    def fetch(self, shard_id: int, out: np.ndarray, offset: int = 0) -> int:
        """out (n,) <- a consistent copy of the shard's parameters [offset, offset + n); returns
        their version."""
        return self.exchange([], [FetchItem(shard_id, out, offset)])[1][0]

    def try_push(self, shard_id: int, grad: np.ndarray, base_version: int, steps: int, offset: int = 0) -> bool:
        """Post grad (n,) as the shard's elements [offset, offset + n) if our previous push has
        been taken and a slot is free; False (nothing sent) otherwise."""
        return self.exchange([PushItem(shard_id, grad, base_version, steps, offset)], [])[0][0]

    def push(self, shard_id: int, grad: np.ndarray, base_version: int, steps: int, offset: int = 0) -> None:
        """Post grad, waiting (sleeping, never spinning) until our slot is taken and one is free."""
        self.push_all([PushItem(shard_id, grad, base_version, steps, offset)])

    def slot_free(self, shard_id: int) -> bool:
        """Our last push to the shard has been taken (applied or rejected), or there was none."""
        if self.in_flight[shard_id] is None:
            return True
        slot, posted = self.in_flight[shard_id]
        return self.windows.read_word(shard_id, state_word(slot)) != posted

    # -- several shards at once -------------------------------------------------------------
    def push_all(self, pushes: Sequence[PushItem]) -> None:
        """Post every push, waiting (sleeping) for the shards that refuse until they take one."""
        waiting, wait = list(pushes), Backoff()
        while waiting:
            posted, _ = self.exchange(waiting, [])
            waiting = [push for push, done in zip(waiting, posted) if not done]
            if waiting:
                wait.sleep()

    def exchange(self, pushes: Sequence[PushItem], fetches: Sequence[FetchItem]) -> tuple[list[bool], list[int]]:
        """Post the pushes the shards accept and fetch, in three round trips (module docstring).
        At most one push per shard. Returns (posted?, per push) and (version, per fetch)."""
        if len({push.shard_id for push in pushes}) < len(pushes):
            raise ValueError("exchange: at most one push per shard")
        windows, fetched = self.windows, [fetch.shard_id for fetch in fetches]
        # 1. claim our last slot again (the usual case), read VERSION
        seen, versions = np.full(len(pushes), -1, np.int64), np.zeros(len(fetches), np.int64)
        operands = np.zeros((len(pushes), 2), np.int64)  # (new, expected) per CAS
        for i, push in enumerate(pushes):
            if self.in_flight[push.shard_id] is not None:
                slot, posted = self.in_flight[push.shard_id]
                operands[i] = (self.claimed_state(freed(posted)), freed(posted))
                windows.issue_compare_and_swap(push.shard_id, state_word(slot), operands[i], seen[i : i + 1])
        for j, fetch in enumerate(fetches):
            windows.issue_read_word(fetch.shard_id, VERSION, versions[j : j + 1])
        retried = [push.shard_id for push in pushes if self.in_flight[push.shard_id] is not None]
        windows.complete(retried + fetched, ctrl=True)  # only shards that had operations: a flush costs
        claims = [self.settle_claim(push.shard_id, int(seen[i])) for i, push in enumerate(pushes)]
        claimed = [(push, claim) for push, claim in zip(pushes, claims) if claim is not None]
        chunked = [(push, claim[0]) for push, claim in claimed if self._in_chunks(push)]
        # 2. the headers, the gradients that land whole, the parameter buffers
        writing = np.zeros(len(fetches), np.int64)
        headers = np.zeros((len(claimed), 4), np.int64)
        for i, (push, (slot, _)) in enumerate(claimed):
            headers[i] = (push.base_version, push.steps, push.offset, len(push.grad))
            if not self._in_chunks(push):
                windows.issue_put_slot(push.shard_id, slot, push.grad, push.offset)
            windows.issue_write_words(push.shard_id, header_word(windows.n_slots, slot), headers[i])
        for j, fetch in enumerate(fetches):
            windows.issue_get_params(fetch.shard_id, int(versions[j]), fetch.out, fetch.offset)
        claimed_on = [push.shard_id for push, _ in claimed]
        windows.complete(claimed_on + fetched, data=True)
        if chunked:  # the copies are complete: check them now, not after the chunks (docstring)
            self._issue_read_writing(fetches, writing)
        windows.complete(claimed_on + (fetched if chunked else []), ctrl=True)
        self._land_in_chunks(chunked)
        # 3. post, read WRITING (unless read already)
        posted_seen = np.zeros(len(claimed), np.int64)
        for i, (push, (slot, state)) in enumerate(claimed):
            operands[i] = (state + (POSTED - CLAIMED), state)
            windows.issue_compare_and_swap(push.shard_id, state_word(slot), operands[i], posted_seen[i : i + 1])
        if not chunked:
            self._issue_read_writing(fetches, writing)
        windows.complete(claimed_on + ([] if chunked else fetched), ctrl=True)
        for push, (slot, state) in claimed:
            self.in_flight[push.shard_id] = (slot, state + (POSTED - CLAIMED))
            self.pushed[push.shard_id] += 1
        return [claim is not None for claim in claims], self._consistent(fetches, versions, writing)

    def _in_chunks(self, push: PushItem) -> bool:
        """Whether the push lands in chunks: a shard on this node, at least two chunks' worth."""
        size = self.chunk_elements
        return size > 0 and len(push.grad) >= 2 * size and self.windows.on_my_node(push.shard_id)

    def _issue_read_writing(self, fetches: Sequence[FetchItem], out: np.ndarray) -> None:
        for j, fetch in enumerate(fetches):
            self.windows.issue_read_word(fetch.shard_id, WRITING, out[j : j + 1])

    def _land_in_chunks(self, chunked: list[tuple[PushItem, int]]) -> None:
        """Put each push chunk by chunk (every shard's chunk k before any chunk k + 1), each
        chunk flushed before the slot's LANDED word says it is there."""
        if not chunked:
            return
        windows, size = self.windows, self.chunk_elements
        landed = np.zeros(len(chunked), np.int64)
        for start in range(0, max(len(push.grad) for push, _ in chunked), size):
            now = [(i, push, slot) for i, (push, slot) in enumerate(chunked) if start < len(push.grad)]
            for _, push, slot in now:
                windows.issue_put_slot(push.shard_id, slot, push.grad[start : start + size], push.offset + start)
            shards = [push.shard_id for _, push, _ in now]
            windows.complete(shards, data=True)
            for i, push, slot in now:
                landed[i] = min(start + size, len(push.grad))
                windows.issue_write_words(push.shard_id, landed_word(windows.n_slots, slot), landed[i : i + 1])
            windows.complete(shards, ctrl=True)

    def _consistent(self, fetches: Sequence[FetchItem], versions: np.ndarray, writing: np.ndarray) -> list[int]:
        """The fetched versions; a copy the shard began to overwrite meanwhile is read again."""
        result = []
        for fetch, version, raised in zip(fetches, versions.tolist(), writing.tolist()):
            if raised > version + 1:
                self.reader.retries += 1
                version = self.reader.read(fetch.shard_id, fetch.out, fetch.offset)
            result.append(version)
        return result

    # -- claiming a slot ----------------------------------------------------------------------
    def settle_claim(self, shard_id: int, seen: int) -> tuple[int, int] | None:
        """(slot, its CLAIMED state) now ours, or None (refused: try again later). seen: the
        state a CAS on our last slot found (-1: there was none to try)."""
        refusal = None
        if self.in_flight[shard_id] is not None:
            slot, posted = self.in_flight[shard_id]
            if seen == posted:  # not taken yet
                refusal = ("own push", slot, posted)
            else:
                self.in_flight[shard_id] = None
                if seen == freed(posted):
                    return self._granted(shard_id, (slot, self.claimed_state(seen)))
        if refusal is None:
            claim, refusal = self._claim_any(shard_id)
            if claim is not None:
                return self._granted(shard_id, claim)
        self._check_busy(shard_id, refusal)
        return None

    def _granted(self, shard_id: int, claim: tuple[int, int]) -> tuple[int, int]:
        self.busy_since[shard_id] = self.busy_seen[shard_id] = None
        return claim

    def _claim_any(self, shard_id: int) -> tuple[tuple[int, int] | None, object]:
        """Read every slot's state and CAS a free one: ((slot, CLAIMED state), None), or
        (None, the states that refused us)."""
        states = self.windows.read_words(shard_id, state_word(0), self.windows.n_slots)
        n_slots = len(states)
        for k in range(n_slots):
            slot = (self.replica_id + k) % n_slots  # replicas start at different slots: fewer collisions
            state = int(states[slot])
            if phase_of(state) == FREE and self._try_claim(shard_id, slot, state) == state:
                return (slot, self.claimed_state(state)), None
        return None, tuple(states.tolist())

    def claimed_state(self, free_state: int) -> int:
        return free_state | slot_state(0, CLAIMED, self.replica_id)

    def _try_claim(self, shard_id: int, slot: int, free_state: int) -> int:
        """CAS the slot from free_state to claimed by us; returns its state as it was."""
        return self.windows.compare_and_swap(shard_id, state_word(slot), free_state, self.claimed_state(free_state))

    def _check_busy(self, shard_id: int, refusal: object) -> None:
        """RankHung once the same refusal (our push still there, or the same busy slot states)
        has lasted hung_after seconds: the shard has taken no push meanwhile."""
        now = time.monotonic()
        since = self.busy_since[shard_id]
        if since is None or self.busy_seen[shard_id] != refusal:
            self.busy_since[shard_id], self.busy_seen[shard_id] = now, refusal
        elif self.hung_after and now - since > self.hung_after:
            raise RankHung(
                f"shard {shard_id} (rank {self.windows.shard_ranks[shard_id]}) has not taken a push "
                f"(replica {self.replica_id} waiting) for {now - since:.0f} s: it is hung "
                f"(faults.watchdog_seconds = {self.hung_after:g})"
            )
