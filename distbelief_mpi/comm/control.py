"""Control messages (point-to-point, tiny) and waits that sleep instead of spinning.

MPICH's blocking calls poll the CPU while they wait; ranks outnumber cores here and on
laptops, so every wait that may be long (a shard waiting for pushes, replicas waiting out
the warmstart, ranks waiting at the end) tests a non-blocking request and sleeps between
tests, with exponential backoff up to a few milliseconds.
"""

import time

from mpi4py import MPI

from .. import watchdog

# Downpour and checkpoint messages: typed records on channels (messages.py).
# Sandblaster (roles/sandblaster*.py)
TAG_SB_COMMAND = 110  # coordinator -> shard: a command tuple (roles/sandblaster_shard.py)
TAG_SB_REPLY = 111  # shard -> coordinator: the command's result
TAG_SB_WORK = 112  # coordinator -> replica: {eval, portion, rows, counted, flush} or {"stop": True}
TAG_SB_RESULT = 113  # replica -> coordinator: {eval, portion, loss, correct} of a computed portion
TAG_SB_PUSHED = 114  # replica -> coordinator: {eval, pushes, portions}: counted portions pushed so far
TAG_SB_BYE = 115  # replica -> coordinator, at the end: its statistics


class Backoff:
    """Sleep intervals that grow from `first` to `limit` seconds: waits that never spin hot."""

    def __init__(self, first: float = 20e-6, limit: float = 2e-3):
        self.delay, self.first, self.limit = first, first, limit

    def sleep(self) -> None:
        """Waiting for others is progress for this rank's watchdog: the others are watched themselves."""
        watchdog.beat()
        time.sleep(self.delay)
        self.delay = min(self.limit, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first


def wait_sleeping(request, limit: float = 5e-3):
    """Request.Wait without burning a core; returns what the request completed with."""
    backoff = Backoff(limit=limit)
    while True:
        done, value = request.test()
        if done:
            return value
        backoff.sleep()


def recv_sleeping(comm, source: int, tag: int, limit: float = 5e-3):
    """comm.recv(source, tag) without burning a core, for a pickled message of any size
    (mpi4py's irecv of a pickled object has a fixed-size buffer)."""
    backoff = Backoff(limit=limit)
    while not comm.Iprobe(source=source, tag=tag):
        backoff.sleep()
    return comm.recv(source=source, tag=tag)


def barrier_sleeping(comm, limit: float = 5e-3) -> None:
    """A barrier for ranks that may wait long (others still training)."""
    wait_sleeping(comm.Ibarrier(), limit)


def receive_all(comm, tag: int) -> list[tuple[object, int]]:
    """Receive every pending message with `tag` (from anyone): [(message, source rank)]."""
    received, status = [], MPI.Status()
    while comm.Iprobe(source=MPI.ANY_SOURCE, tag=tag, status=status):
        source = status.Get_source()
        received.append((comm.recv(source=source, tag=tag), source))
    return received
