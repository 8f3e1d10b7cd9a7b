"""Point-to-point exchanges between the partitions of one model replica (model/partitioned.py).

The partitions of a replica run in lockstep, so a wait here is usually short: it polls for up
to SPIN_S first, yielding the core between tests (sched_yield: a rank sharing the core runs, an
idle core just polls), then sleeps with backoff. Polling matters between hosts: a transfer over
TCP advances only inside MPI calls, so a sleeping rank stalls it (measured on emulated hosts, the
speech shape's step: 280 ms sleeping after 0.3 ms of polls, 251 ms polling up to 20 ms, 247 ms
with a busy MPI_Waitall). The sleeps are control.Backoff's: plain below a millisecond, in
epoll from there on, so a message from another host ends them at once (network_wait)."""

import os
import time

import numpy as np
from mpi4py import MPI

from .control import Backoff

TAG_PARTITION = 120
SPIN_S = 20e-3  # a 2 MB message at 1 Gbit/s takes ~17 ms


class MpiExchanger:
    """sends {dest partition: array}, recv_shapes {source partition: shape} -> {source: array},
    over `replica_comm` whose rank r is partition r."""

    def __init__(self, replica_comm, dtype):
        self.comm, self.dtype = replica_comm, np.dtype(dtype)

    def exchange(self, sends: dict, recv_shapes: dict) -> dict:
        received = {src: np.empty(shape, self.dtype) for src, shape in recv_shapes.items()}
        requests = [self.comm.Irecv(buf, source=src, tag=TAG_PARTITION) for src, buf in received.items()]
        outgoing = {dest: np.ascontiguousarray(array) for dest, array in sends.items()}  # alive until sent
        requests += [self.comm.Isend(array, dest=dest, tag=TAG_PARTITION) for dest, array in outgoing.items()]
        wait_all(requests)
        return received


def split_replica_comm(world_comm, replica_id: int | None, partition_id: int):
    """Collective over world_comm: the communicator of replica `replica_id` (its rank r is
    partition r), or None on ranks that are no replica (replica_id None)."""
    color = MPI.UNDEFINED if replica_id is None else replica_id
    comm = world_comm.Split(color, key=max(partition_id, 0))
    return None if comm == MPI.COMM_NULL else comm


class MaxAgreement:
    """Every rank of `comm` learns the largest of their integers, waiting without spinning
    hot (non-blocking: one partition may be evaluating or checkpointing while the others wait)."""

    def __init__(self, comm):
        self.comm = comm
        self.mine, self.agreed = np.zeros(1, np.int64), np.zeros(1, np.int64)

    def __call__(self, value: int) -> int:
        self.mine[0] = value
        wait_all([self.comm.Iallreduce(self.mine, self.agreed, op=MPI.MAX)])
        return int(self.agreed[0])


def wait_all(requests) -> None:
    """Until every request completes: poll for up to SPIN_S, yielding the core between tests,
    then sleep with backoff."""
    polling_until = time.perf_counter() + SPIN_S
    while not MPI.Request.Testall(requests):
        if time.perf_counter() > polling_until:
            _sleep_until_done(requests)
            return
        os.sched_yield()


def _sleep_until_done(requests) -> None:
    backoff = Backoff(first=10e-6, limit=1e-3)
    while not MPI.Request.Testall(requests):
        backoff.sleep()
