"""Point-to-point exchanges between the partitions of one model replica (model/partitioned.py).

The partitions of a replica run in lockstep, so a wait here is short: it polls for a few
hundred tests first, then sleeps with backoff (ranks may outnumber cores)."""

import numpy as np
from mpi4py import MPI

from .control import Backoff

TAG_PARTITION = 120
SPIN_TESTS = 400


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


def wait_all(requests) -> None:
    for _ in range(SPIN_TESTS):
        if MPI.Request.Testall(requests):
            return
    backoff = Backoff(first=10e-6, limit=1e-3)
    while not MPI.Request.Testall(requests):
        backoff.sleep()
