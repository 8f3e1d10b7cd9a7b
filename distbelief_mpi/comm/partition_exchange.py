"""Point-to-point exchanges between the partitions of one model replica (model/partitioned.py).

The partitions of a replica run in lockstep, so a wait here is short: it polls for a few
hundred tests first, then sleeps with backoff (ranks may outnumber cores). Sleeps shorter than
a millisecond are plain sleeps: epoll (network_wait) waits whole milliseconds, and a partner on
the same host (shared memory) never wakes it early; longer ones wait in epoll, so a message from
another host ends them at once."""

import time

import numpy as np
from mpi4py import MPI

from ..runtime import watchdog
from .network_wait import wait_for_network

TAG_PARTITION = 120
SPIN_TESTS = 400
FIRST_SLEEP_S, LAST_SLEEP_S = 10e-6, 1e-3
EPOLL_RESOLUTION_S = 1e-3  # select.epoll.poll rounds its timeout up to whole milliseconds


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
    for _ in range(SPIN_TESTS):
        if MPI.Request.Testall(requests):
            return
    delay = FIRST_SLEEP_S
    while not MPI.Request.Testall(requests):
        watchdog.beat()  # waiting for the other partitions is progress: they are watched themselves
        if delay < EPOLL_RESOLUTION_S:
            time.sleep(delay)
        else:
            wait_for_network(delay)
        delay = min(LAST_SLEEP_S, 2 * delay)
