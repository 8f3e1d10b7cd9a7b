"""Waits that sleep instead of spinning (control messages themselves: messages.py).

MPICH's blocking calls poll the CPU while they wait; ranks outnumber cores here and on
laptops, so every wait that may be long (a shard waiting for pushes, replicas waiting out
the warmstart, ranks waiting at the end) tests a non-blocking request and sleeps between
tests, with exponential backoff up to a few milliseconds.
"""

from ..runtime import watchdog
from .network_wait import wait_for_network

# Tags of control messages: see the channels in messages.py (partition_exchange.py uses 120).


class Backoff:
    """Sleep intervals that grow from `first` to `limit` seconds: waits that never spin hot."""

    def __init__(self, first: float = 20e-6, limit: float = 2e-3):
        self.delay, self.first, self.limit = first, first, limit

    def sleep(self) -> None:
        """Waiting for others is progress for this rank's watchdog: the others are watched themselves."""
        watchdog.beat()
        wait_for_network(self.delay)  # a request from another host wakes us at once
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


def barrier_sleeping(comm, limit: float = 5e-3) -> None:
    """A barrier for ranks that may wait long (others still training)."""
    wait_sleeping(comm.Ibarrier(), limit)
