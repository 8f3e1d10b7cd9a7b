"""Parameter-server windows: replicas push and fetch with one-sided MPI; shards never receive.

Every shard rank exposes two RMA windows (other ranks expose empty ones). With L its slice
length and K its landing slots (optimizer.landing_slots, at most one per replica), the float32
data window holds

    [0, L)              parameter buffer 0
    [L, 2L)             parameter buffer 1
    [(2+k)L, (3+k)L)    landing slot k: a pushed gradient, or the part [OFFSET, OFFSET + LENGTH)
                        of one (a partition's block when one shard holds several, layout.py)

so a shard holds (2 + K) x L float32 whatever the number of replicas. The int64 control window
holds VERSION, WRITING (the seqlock, seqlock.py), one STATE word per slot, one LANDED word per
slot, then the slot headers: BASE (shard version the gradient was computed on), STEPS
(minibatch steps accrued in it), OFFSET and LENGTH (the part of the slice it covers), four
words per slot.

A slot's STATE packs (generation, claimer, phase), `slot_state` below, and only ever grows:

    FREE(g) --claim: a replica's CAS--> CLAIMED(g, r) --post: r's CAS--> POSTED(g, r)
            --release: the shard's CAS--> FREE(g + 1)

1. Claim: a replica Compare_and_swaps a FREE word to CLAIMED by itself. Of several replicas
   trying one slot exactly one wins; the others try another slot, or defer (keep accruing).
2. Write: the winner Puts its gradient into the slot and flushes, then writes the header
   words and flushes. Nobody else writes a claimed slot, and the shard does not read it.
   A push may instead land in chunks (a replica on the shard's node, a large push:
   replica_endpoint.py): header words first (flushed), then per chunk its Put (flushed) and
   LANDED := the elements landed so far, counted from the push's first (flushed). A shard that
   sees LANDED = n > 0 in a CLAIMED slot may read the header and the first n elements.
3. Post: the winner Compare_and_swaps CLAIMED to POSTED. The flushes before it mean a shard
   that sees POSTED sees the whole gradient and header (LandingSlots.gradient Syncs its view).
4. Release: the shard applies the push (chunk by chunk as they land, or all at once once
   posted), sets LANDED to 0 (flushed), then Compare_and_swaps POSTED to FREE(g + 1); only now
   may the slot be claimed and rewritten, and a new claimer's LANDED starts from 0.

Because STATE only grows, a replica whose push was posted as value v knows it was taken
exactly when STATE != v: no ABA, however often the slot has been reused since. A replica keeps
at most one push in flight per shard (so a fast replica cannot occupy every slot, and a push
not taken for long means the shard is hung, ReplicaEndpoint). Every rank holds a shared
`Lock_all` for the whole run, so within a node Put/Get run at memory speed and need no
progress from the target. The parameter buffers are a seqlock (seqlock.py).
"""

from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from ..config import Optimizer

HEADER = 2  # words before the slots' ones: VERSION and WRITING (seqlock.py)
BASE, STEPS, OFFSET, LENGTH, SLOT_HEADER = 0, 1, 2, 3, 4  # a slot's header words, in order
FREE, CLAIMED, POSTED = 0, 1, 2  # a slot's phase: the low two bits of its STATE word
GENERATION_SHIFT = 32  # STATE = generation << 32 | (claimer + 1) << 2 | phase
DEFAULT_LANDING_SLOTS = Optimizer.landing_slots


def slot_state(generation: int, phase: int, replica_id: int = -1) -> int:
    return (generation << GENERATION_SHIFT) | ((replica_id + 1) << 2) | phase


def phase_of(state: int) -> int:
    return state & 3


def claimer_of(state: int) -> int:
    """The replica that claimed (or posted into) the slot; -1 when it is free."""
    return ((state & ((1 << GENERATION_SHIFT) - 1)) >> 2) - 1


def freed(state: int) -> int:
    """The FREE state that follows `state` (the next generation)."""
    return slot_state((state >> GENERATION_SHIFT) + 1, FREE)


def ctrl_words(n_slots: int) -> int:
    """VERSION, WRITING, then K STATE words, K LANDED words and K headers of SLOT_HEADER words."""
    return HEADER + (2 + SLOT_HEADER) * n_slots


def state_word(slot: int) -> int:
    return HEADER + slot


def landed_word(n_slots: int, slot: int) -> int:
    """The slot's LANDED word, right after the STATE words: both read in one operation."""
    return HEADER + n_slots + slot


def header_word(n_slots: int, slot: int) -> int:
    return HEADER + 2 * n_slots + SLOT_HEADER * slot


class ParamServerWindows:
    """The two windows, created collectively by every rank of world_comm.

    shard_ranks[s] is the world rank of shard s; shard_ranges[s] its [start, stop). Every rank
    must pass the same landing_slots; a shard gets min(landing_slots, n_replicas) slots (more
    than one per replica would only hold a replica's partitions' pushes at once)."""

    def __init__(
        self,
        world_comm,
        shard_ranks,
        shard_ranges,
        n_replicas: int,
        my_shard_id: int = -1,
        landing_slots: int = DEFAULT_LANDING_SLOTS,
    ):
        self.comm, self.shard_ranks, self.n_replicas = world_comm, list(shard_ranks), n_replicas
        self.n_slots = max(1, min(landing_slots, n_replicas))
        self.lengths = [stop - start for start, stop in shard_ranges]
        n_data = (2 + self.n_slots) * self.lengths[my_shard_id] if my_shard_id >= 0 else 0
        n_ctrl = ctrl_words(self.n_slots) if my_shard_id >= 0 else 0
        info = MPI.Info.Create()
        # Atomic access to a word that two ranks touch at once must use one operation per word
        # (plus NO_OP reads): this hint, which is also MPI's default, says so and lets MPI use
        # hardware atomics. The protocol keeps to it: STATE words only ever change by
        # Compare_and_swap, every other control word only by Accumulate(REPLACE), and all are
        # read with NO_OP. Mixing CAS and REPLACE on one word would need a hint MPI does not
        # have, so the post and release steps are CASes too, though they cannot fail.
        info.Set("accumulate_ops", "same_op_no_op")
        self.data_win = MPI.Win.Allocate(4 * n_data, 4, info=info, comm=world_comm)
        self.ctrl_win = MPI.Win.Allocate(8 * n_ctrl, 8, info=info, comm=world_comm)
        info.Free()
        for win in (self.data_win, self.ctrl_win):  # an MPI error raises here; our handler decides
            win.Set_errhandler(MPI.ERRORS_RETURN)
        self.local_data = np.frombuffer(self.data_win.tomemory(), np.float32, n_data)
        self.local_ctrl = np.frombuffer(self.ctrl_win.tomemory(), np.int64, n_ctrl)
        self.local_ctrl[:] = 0  # every slot FREE(0)
        self.data_win.Lock_all()
        self.ctrl_win.Lock_all()
        self._one = np.zeros(1, np.int64)
        self.my_node = _ranks_on_my_node(world_comm)

    def on_my_node(self, shard_id: int) -> bool:
        """The shard shares this rank's node (its window is reached through shared memory)."""
        return self.shard_ranks[shard_id] in self.my_node

    def close(self) -> None:
        """Collective: release the windows (every rank, after all traffic has ended)."""
        self.data_win.Unlock_all()
        self.ctrl_win.Unlock_all()
        self.data_win.Free()
        self.ctrl_win.Free()

    # -- operations issued now and completed together by complete() --------------------------
    # Between hosts every RMA operation is a network round trip that also waits for the target
    # to progress MPI; issuing several shards' operations before one completion overlaps them.
    # The buffers passed stay untouched (and alive) until complete() returns.
    def issue_read_word(self, shard_id: int, index: int, out: np.ndarray) -> None:
        """out (1,) int64 <- word `index`, read atomically."""
        rank = self.shard_ranks[shard_id]
        self.ctrl_win.Fetch_and_op([self._one, MPI.INT64_T], [out, MPI.INT64_T], rank, index, MPI.NO_OP)

    def issue_read_words(self, shard_id: int, first: int, out: np.ndarray) -> None:
        """out (count,) int64 <- words [first, first + count), each read atomically."""
        count, rank = len(out), self.shard_ranks[shard_id]
        zeros = np.zeros(count, np.int64)
        self.ctrl_win.Get_accumulate(
            [zeros, MPI.INT64_T], [out, MPI.INT64_T], rank, (first, count, MPI.INT64_T), MPI.NO_OP
        )

    def issue_write_words(self, shard_id: int, first: int, values: np.ndarray) -> None:
        """Words [first, first + n) <- values (n,) int64, each atomically (Accumulate REPLACE)."""
        rank = self.shard_ranks[shard_id]
        self.ctrl_win.Accumulate([values, MPI.INT64_T], rank, (first, len(values), MPI.INT64_T), MPI.REPLACE)

    def issue_compare_and_swap(self, shard_id: int, index: int, new_expected: np.ndarray, out: np.ndarray) -> None:
        """Word `index` := new_expected[0] if it equals new_expected[1]; out (1,) <- the word as it was."""
        rank = self.shard_ranks[shard_id]
        self.ctrl_win.Compare_and_swap(
            [new_expected[0:1], MPI.INT64_T], [new_expected[1:2], MPI.INT64_T], [out, MPI.INT64_T], rank, index
        )

    def issue_get_params(self, shard_id: int, version: int, out: np.ndarray, offset: int = 0) -> None:
        """out (n,) float32 <- elements [offset, offset + n) of parameter buffer version % 2."""
        rank, length = self.shard_ranks[shard_id], self.lengths[shard_id]
        self._check_part(shard_id, offset, len(out))
        self.data_win.Get(out, rank, ((version % 2) * length + offset, len(out), MPI.FLOAT))

    def issue_put_slot(self, shard_id: int, slot: int, grad: np.ndarray, offset: int = 0) -> None:
        """Landing slot `slot`'s elements [offset, offset + n) <- grad (n,)."""
        rank, length = self.shard_ranks[shard_id], self.lengths[shard_id]
        self._check_part(shard_id, offset, len(grad))
        self.data_win.Put(grad, rank, ((2 + slot) * length + offset, len(grad), MPI.FLOAT))

    def complete(self, shard_ids, data: bool = False, ctrl: bool = False) -> None:
        """Complete (at origin and target) what was issued to these shards on the windows named."""
        for rank in dict.fromkeys(self.shard_ranks[s] for s in shard_ids):
            if data:
                self.data_win.Flush(rank)
            if ctrl:
                self.ctrl_win.Flush(rank)

    def progress(self) -> None:
        """Let MPI move what was issued (a transport may hold operations until it progresses)."""
        self.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)

    # -- the same, one operation completed at once ---------------------------------------------
    def read_word(self, shard_id: int, index: int) -> int:
        result = np.zeros(1, np.int64)
        self.issue_read_word(shard_id, index, result)
        self.complete([shard_id], ctrl=True)
        return int(result[0])

    def read_words(self, shard_id: int, first: int, count: int) -> np.ndarray:
        """(count,) int64, each word read atomically (not the block as a whole)."""
        result = np.zeros(count, np.int64)
        self.issue_read_words(shard_id, first, result)
        self.complete([shard_id], ctrl=True)
        return result

    def write_words(self, shard_id: int, first: int, values) -> None:
        self.issue_write_words(shard_id, first, np.ascontiguousarray(values, np.int64))
        self.complete([shard_id], ctrl=True)

    def compare_and_swap(self, shard_id: int, index: int, expected: int, new: int) -> int:
        """Word `index` := new if it equals expected, atomically; returns the word as it was."""
        result = np.zeros(1, np.int64)
        self.issue_compare_and_swap(shard_id, index, np.array([new, expected], np.int64), result)
        self.complete([shard_id], ctrl=True)
        return int(result[0])

    def get_params(self, shard_id: int, version: int, out: np.ndarray, offset: int = 0) -> None:
        self.issue_get_params(shard_id, version, out, offset)
        self.complete([shard_id], data=True)

    def put_slot(self, shard_id: int, slot: int, grad: np.ndarray, offset: int = 0) -> None:
        self.issue_put_slot(shard_id, slot, grad, offset)
        self.complete([shard_id], data=True)

    def _check_part(self, shard_id: int, offset: int, length: int) -> None:
        """A part outside the slice would silently read or write the neighbouring buffer."""
        if offset < 0 or offset + length > self.lengths[shard_id]:
            raise ValueError(
                f"[{offset}, {offset + length}) is not within shard {shard_id}'s {self.lengths[shard_id]} parameters"
            )


def _ranks_on_my_node(world_comm) -> frozenset[int]:
    """World ranks that share memory with this one (collective; O(ranks on the node))."""
    node = world_comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks = MPI.Group.Translate_ranks(node.Get_group(), list(range(node.Get_size())), world_comm.Get_group())
    finally:
        node.Free()
    return frozenset(ranks)


class Push(NamedTuple):
    """A push in landing slot `slot` of this shard: posted, or claimed and partly landed."""

    slot: int
    state: int  # the slot's STATE word as read (POSTED or CLAIMED by replica_id)
    replica_id: int
    base_version: int  # the shard version the gradient was computed on
    steps: int  # minibatch steps accrued in it
    offset: int  # the part of the shard's slice it covers: [offset, offset + length)
    length: int
    landed: int  # its first `landed` elements are in the slot (all `length` once posted)

    @property
    def part(self) -> slice:
        return slice(self.offset, self.offset + self.length)

    @property
    def posted(self) -> bool:
        return phase_of(self.state) == POSTED


class LandingSlots:
    """The shard's side of the landing slots: which pushes are posted or landing, and freeing
    each slot once its push is consumed (any replica may then claim it)."""

    def __init__(self, windows: ParamServerWindows, shard_id: int, length: int):
        self.windows, self.shard_id, self.n_slots = windows, shard_id, windows.n_slots
        data = windows.local_data
        self.grads = [data[(2 + k) * length : (3 + k) * length] for k in range(self.n_slots)]  # (L,) each
        self._zero = np.zeros(1, np.int64)

    def pending(self) -> list[Push]:
        """The pushes posted, or claimed with some elements landed, and not yet released, in
        slot order."""
        words = self.windows.read_words(self.shard_id, state_word(0), 2 * self.n_slots)  # STATE, LANDED
        states, landed = words[: self.n_slots], words[self.n_slots :]
        ready = [
            slot
            for slot in range(self.n_slots)
            if phase_of(int(states[slot])) == POSTED or (phase_of(int(states[slot])) == CLAIMED and landed[slot] > 0)
        ]
        if not ready:
            return []
        # Each header was written (and flushed) before its STATE became POSTED or its LANDED
        # left 0, read above before the headers, and is not rewritten before we release the
        # slot: reading all of them now is safe (a slot not ready may show a half-written one).
        headers = self.windows.read_words(self.shard_id, header_word(self.n_slots, 0), SLOT_HEADER * self.n_slots)
        pushes = []
        for slot in ready:
            state, words = int(states[slot]), headers[SLOT_HEADER * slot : SLOT_HEADER * (slot + 1)]
            base, steps, offset, length = (int(w) for w in words)
            done = length if phase_of(state) == POSTED else min(int(landed[slot]), length)
            pushes.append(Push(slot, state, claimer_of(state), base, steps, offset, length, done))
        return pushes

    def posted(self) -> list[Push]:
        """The pushes posted and not yet released, in slot order."""
        return [push for push in self.pending() if push.posted]

    def gradient(self, push: Push, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The pushed gradient's elements [start, stop) (default: all), a view of the slot;
        valid until release(push). Only landed elements may be read."""
        stop = push.length if stop is None else stop
        if stop > push.landed:
            raise ValueError(f"elements [{start}, {stop}) of a push with {push.landed} landed")
        self.windows.data_win.Sync()  # make the replica's Put visible to our own loads
        return self.grads[push.slot][push.offset + start : push.offset + stop]

    def release(self, push: Push) -> None:
        """The push is consumed: the slot is free for the next claim."""
        if not push.posted:
            raise RuntimeError(f"landing slot {push.slot} released before its push was posted")
        self._free(push.slot, push.state)

    def reclaim(self, replica_id: int) -> int:
        """Free the slots a replica that has left claimed and never posted (it died between
        claim and post); returns how many. Only for a replica whose process is gone."""
        states = self.windows.read_words(self.shard_id, state_word(0), self.n_slots)
        stranded = [
            (slot, int(state))
            for slot, state in enumerate(states)
            if phase_of(int(state)) == CLAIMED and claimer_of(int(state)) == replica_id
        ]
        for slot, state in stranded:
            self._free(slot, state)
        return len(stranded)

    def _free(self, slot: int, state: int) -> None:
        # LANDED back to 0 (completed) before the slot can be claimed again: a new claimer's
        # slot then shows nothing landed until it writes LANDED itself.
        self.windows.issue_write_words(self.shard_id, landed_word(self.n_slots, slot), self._zero)
        self.windows.complete([self.shard_id], ctrl=True)
        seen = self.windows.compare_and_swap(self.shard_id, state_word(slot), state, freed(state))
        if seen != state:  # only this shard moves a posted slot on: anything else is a bug
            raise RuntimeError(f"landing slot {slot} of shard {self.shard_id}: state {seen:#x}, expected {state:#x}")
