"""Parameter-server windows: replicas push and fetch with one-sided MPI; shards never receive.

Every shard rank exposes two RMA windows (other ranks expose empty ones). With L its slice
length and R the number of replicas, the float32 data window holds

    [0, L)              parameter buffer 0
    [L, 2L)             parameter buffer 1
    [(2+r)L, (3+r)L)    the landing slot of replica r (its pushed gradient)

and the int64 control window holds VERSION, WRITING, then four words per replica:
PUSH_SEQ (pushes posted), BASE (shard version the gradient was computed on), STEPS
(minibatch steps accrued in it) and APPLIED (pushes the shard has consumed).

Consistency without locks that block anyone: every rank holds a shared `Lock_all` for the
whole run (so, within a node, Put/Get run at memory speed and need no progress from the
target). The parameter buffers are a seqlock (comm/seqlock.py, both sides). A replica posts
a push only when its slot is free (APPLIED == its PUSH_SEQ): data first, flushed, then the
header words, so a shard that sees the new PUSH_SEQ sees the whole gradient (ReplicaEndpoint
here); the shard takes each posted push and hands the slot back (LandingSlots here). Control
words are only touched with atomic Accumulate(REPLACE) / Fetch_and_op(NO_OP), as MPI requires
for concurrent access.
"""

import time
from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from ..errors import RankHung
from .control import Backoff
from .seqlock import SeqlockReader

HEADER = 2  # words before the per-replica ones: VERSION and WRITING (seqlock.py)
PUSH_SEQ, BASE, STEPS, APPLIED, WORDS_PER_REPLICA = 0, 1, 2, 3, 4


def ctrl_words(n_replicas: int) -> int:
    return HEADER + WORDS_PER_REPLICA * n_replicas


def replica_word(replica_id: int, field: int) -> int:
    return HEADER + WORDS_PER_REPLICA * replica_id + field


class ParamServerWindows:
    """The two windows, created collectively by every rank of world_comm.

    shard_ranks[s] is the world rank of shard s; shard_ranges[s] its [start, stop)."""

    def __init__(self, world_comm, shard_ranks, shard_ranges, n_replicas: int, my_shard_id: int = -1):
        self.comm, self.shard_ranks, self.n_replicas = world_comm, list(shard_ranks), n_replicas
        self.lengths = [stop - start for start, stop in shard_ranges]
        n_data = (2 + n_replicas) * self.lengths[my_shard_id] if my_shard_id >= 0 else 0
        n_ctrl = ctrl_words(n_replicas) if my_shard_id >= 0 else 0
        info = MPI.Info.Create()
        info.Set("accumulate_ops", "same_op_no_op")  # control words: REPLACE or NO_OP only
        self.data_win = MPI.Win.Allocate(4 * n_data, 4, info=info, comm=world_comm)
        self.ctrl_win = MPI.Win.Allocate(8 * n_ctrl, 8, info=info, comm=world_comm)
        info.Free()
        for win in (self.data_win, self.ctrl_win):  # an MPI error raises here; our handler decides
            win.Set_errhandler(MPI.ERRORS_RETURN)
        self.local_data = np.frombuffer(self.data_win.tomemory(), np.float32, n_data)
        self.local_ctrl = np.frombuffer(self.ctrl_win.tomemory(), np.int64, n_ctrl)
        self.local_ctrl[:] = 0
        self.data_win.Lock_all()
        self.ctrl_win.Lock_all()
        self._one = np.zeros(1, np.int64)

    def close(self) -> None:
        """Collective: release the windows (every rank, after all traffic has ended)."""
        self.data_win.Unlock_all()
        self.ctrl_win.Unlock_all()
        self.data_win.Free()
        self.ctrl_win.Free()

    # -- atomic control words ------------------------------------------------------------
    def read_word(self, shard_id: int, index: int) -> int:
        result = np.zeros(1, np.int64)
        rank = self.shard_ranks[shard_id]
        self.ctrl_win.Fetch_and_op([self._one, MPI.INT64_T], [result, MPI.INT64_T], rank, index, MPI.NO_OP)
        self.ctrl_win.Flush(rank)
        return int(result[0])

    def read_words(self, shard_id: int, first: int, count: int) -> np.ndarray:
        result = np.zeros(count, np.int64)
        rank = self.shard_ranks[shard_id]
        self.ctrl_win.Get_accumulate(
            [np.zeros(count, np.int64), MPI.INT64_T],
            [result, MPI.INT64_T],
            rank,
            (first, count, MPI.INT64_T),
            MPI.NO_OP,
        )
        self.ctrl_win.Flush(rank)
        return result

    def write_words(self, shard_id: int, first: int, values) -> None:
        values = np.ascontiguousarray(values, np.int64)
        rank = self.shard_ranks[shard_id]
        self.ctrl_win.Accumulate([values, MPI.INT64_T], rank, (first, len(values), MPI.INT64_T), MPI.REPLACE)
        self.ctrl_win.Flush(rank)

    # -- data ----------------------------------------------------------------------------
    def get_params(self, shard_id: int, version: int, out: np.ndarray) -> None:
        """out (L,) float32 <- parameter buffer version % 2 of the shard."""
        rank, length = self.shard_ranks[shard_id], self.lengths[shard_id]
        self.data_win.Get(out, rank, ((version % 2) * length, length, MPI.FLOAT))
        self.data_win.Flush(rank)

    def put_slot(self, shard_id: int, replica_id: int, grad: np.ndarray) -> None:
        rank, length = self.shard_ranks[shard_id], self.lengths[shard_id]
        self.data_win.Put(grad, rank, ((2 + replica_id) * length, length, MPI.FLOAT))
        self.data_win.Flush(rank)


class Push(NamedTuple):
    """A push a replica has posted into its landing slot on this shard."""

    replica_id: int
    seq: int  # the replica's PUSH_SEQ for this push
    base_version: int  # the shard version the gradient was computed on
    steps: int  # minibatch steps accrued in it


class LandingSlots:
    """The shard's side of the landing slots: which pushes are posted, and freeing each slot
    once its push is consumed (the replica may then post its next one)."""

    def __init__(self, windows: ParamServerWindows, shard_id: int, length: int):
        self.windows, self.shard_id, self.n_replicas = windows, shard_id, windows.n_replicas
        data = windows.local_data
        self.grads = [data[(2 + r) * length : (3 + r) * length] for r in range(self.n_replicas)]  # (L,) each
        self.consumed = np.zeros(self.n_replicas, np.int64)  # PUSH_SEQ consumed, per replica

    def posted(self) -> list[Push]:
        """The pushes posted since each replica's last consumed one (at most one each)."""
        words = self.windows.read_words(self.shard_id, HEADER, WORDS_PER_REPLICA * self.n_replicas)
        pushes = []
        for replica_id in range(self.n_replicas):
            seq = int(words[WORDS_PER_REPLICA * replica_id + PUSH_SEQ])
            if seq == self.consumed[replica_id]:
                continue
            # BASE and STEPS were written before PUSH_SEQ; one Get_accumulate is only atomic per
            # word, so read them again now that PUSH_SEQ has moved.
            base, steps = self.windows.read_words(self.shard_id, replica_word(replica_id, BASE), 2)
            pushes.append(Push(replica_id, seq, int(base), int(steps)))
        return pushes

    def gradient(self, push: Push) -> np.ndarray:
        """The pushed gradient (L,), a view of the slot; valid until release(push)."""
        self.windows.data_win.Sync()  # make the replica's Put visible to our own loads
        return self.grads[push.replica_id]

    def release(self, push: Push) -> None:
        """The push is consumed: its replica may post the next one."""
        self.consumed[push.replica_id] = push.seq
        self.windows.write_words(self.shard_id, replica_word(push.replica_id, APPLIED), [push.seq])


class ReplicaEndpoint:
    """A replica's side: fetch consistent parameter slices, post pushes into its own slots.

    A shard that has not taken our previous push for `hung_after` seconds (0: never judged)
    is hung: try_push raises RankHung naming it rather than deferring forever."""

    def __init__(self, windows: ParamServerWindows, replica_id: int, hung_after: float = 0.0):
        self.windows, self.replica_id, self.hung_after = windows, replica_id, hung_after
        self.pushed = [0] * len(windows.shard_ranks)  # PUSH_SEQ we have posted, per shard
        self.busy_since: list[float | None] = [None] * len(windows.shard_ranks)
        self.reader = SeqlockReader(windows)

    @property
    def fetch_retries(self) -> int:
        return self.reader.retries

    def fetch(self, shard_id: int, out: np.ndarray) -> int:
        """out (L,) <- a consistent copy of the shard's parameters; returns its version."""
        return self.reader.read(shard_id, out)

    def slot_free(self, shard_id: int) -> bool:
        applied = self.windows.read_word(shard_id, replica_word(self.replica_id, APPLIED))
        return applied == self.pushed[shard_id]

    def try_push(self, shard_id: int, grad: np.ndarray, base_version: int, steps: int) -> bool:
        """Post grad (L,) if our slot on the shard is free; False (nothing sent) if it is not."""
        if not self.slot_free(shard_id):
            self._check_busy(shard_id)
            return False
        self.busy_since[shard_id] = None
        self.windows.put_slot(shard_id, self.replica_id, grad)
        self.windows.write_words(shard_id, replica_word(self.replica_id, BASE), [base_version, steps])
        self.pushed[shard_id] += 1
        self.windows.write_words(shard_id, replica_word(self.replica_id, PUSH_SEQ), [self.pushed[shard_id]])
        return True

    def _check_busy(self, shard_id: int) -> None:
        now = time.monotonic()
        if self.busy_since[shard_id] is None:
            self.busy_since[shard_id] = now
        elif self.hung_after and now - self.busy_since[shard_id] > self.hung_after:
            raise RankHung(
                f"shard {shard_id} (rank {self.windows.shard_ranks[shard_id]}) has not taken replica "
                f"{self.replica_id}'s push for {now - self.busy_since[shard_id]:.0f} s: it is hung "
                f"(faults.watchdog_seconds = {self.hung_after:g})"
            )

    def push(self, shard_id: int, grad: np.ndarray, base_version: int, steps: int) -> None:
        """Post grad, waiting (sleeping, never spinning) until the slot is free."""
        wait = Backoff()
        while not self.try_push(shard_id, grad, base_version, steps):
            wait.sleep()
