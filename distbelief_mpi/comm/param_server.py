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
target). The shard publishes parameters in two alternating buffers, VERSION % 2 being the
current one, and raises WRITING before it starts writing the other. A fetch reads VERSION,
Gets that buffer, then reads WRITING: if WRITING <= VERSION + 1 the buffer it read was not
rewritten meanwhile (a seqlock); else it retries. A replica posts a push only when its slot
is free (APPLIED == its PUSH_SEQ): data first, flushed, then the header words, so a shard
that sees the new PUSH_SEQ sees the whole gradient. Control words are only touched with
atomic Accumulate(REPLACE) / Fetch_and_op(NO_OP), as MPI requires for concurrent access.
"""

import time

import numpy as np
from mpi4py import MPI

from ..errors import RankHung
from .control import Backoff

VERSION, WRITING, HEADER = 0, 1, 2
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


class ReplicaEndpoint:
    """A replica's side: fetch consistent parameter slices, post pushes into its own slots.

    A shard that has not taken our previous push for `hung_after` seconds (0: never judged)
    is hung: try_push raises RankHung naming it rather than deferring forever."""

    def __init__(self, windows: ParamServerWindows, replica_id: int, hung_after: float = 0.0):
        self.windows, self.replica_id, self.hung_after = windows, replica_id, hung_after
        self.pushed = [0] * len(windows.shard_ranks)  # PUSH_SEQ we have posted, per shard
        self.busy_since: list[float | None] = [None] * len(windows.shard_ranks)
        self.fetch_retries = 0

    def fetch(self, shard_id: int, out: np.ndarray) -> int:
        """out (L,) <- a consistent copy of the shard's parameters; returns its version."""
        while True:
            version = self.windows.read_word(shard_id, VERSION)
            self.windows.get_params(shard_id, version, out)
            if self.windows.read_word(shard_id, WRITING) <= version + 1:
                return version
            self.fetch_retries += 1  # the shard rewrote that buffer while we read it

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
