"""Sleep until this process's sockets receive something, or the time is up.

Between hosts, MPI's one-sided operations over TCP (UCX's tcp transport, Open MPI's tcp btl)
complete only while the target rank calls into MPI: a shard that sleeps blindly between polls
makes every round trip of every replica wait out its sleep (measured on emulated hosts: 2.1 ms
per operation against a shard napping 2 ms, 0.2-0.6 ms against one spinning on 2 shared cores,
0.045 ms against one waiting here). So the ranks' sleeping waits (control.Backoff) wait in
epoll on the process's sockets, edge-triggered: a request arriving from the network wakes the
rank at once, it calls into MPI and the request is served, and no core is burnt meanwhile.

The sockets are MPI's own (and any others: a spurious wake-up only costs one poll). They are
found in /proc/self/fd and looked up again at most every RESCAN_S, since MPI connects to peers
lazily. Where epoll or /proc is missing (not Linux), the wait is a plain sleep.
"""

import os
import select
import threading
import time

RESCAN_S = 0.05
EPOLL_RESOLUTION_S = 1e-3  # select.epoll.poll waits whole milliseconds (rounded up)


class SocketWaiter:
    """One per thread (epoll sets are not shared between threads here)."""

    def __init__(self) -> None:
        self.poller = select.epoll()
        self.sockets: set[int] = set()
        self.next_scan = 0.0

    def wait(self, seconds: float) -> None:
        self._rescan()
        self.poller.poll(seconds)

    def _rescan(self) -> None:
        now = time.monotonic()
        if now < self.next_scan:
            return
        self.next_scan = now + RESCAN_S
        current = _socket_fds()
        for fd in current - self.sockets:
            try:
                self.poller.register(fd, select.EPOLLIN | select.EPOLLET)
            except OSError:  # closed meanwhile, or already there under a reused number
                pass
        for fd in self.sockets - current:
            try:
                self.poller.unregister(fd)
            except OSError:  # closing an fd removes it from the set by itself
                pass
        self.sockets = current


def _socket_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
        except OSError:  # the listing's own fd, or one closed meanwhile
            pass
    return found


_local = threading.local()
_AVAILABLE = hasattr(select, "epoll") and os.path.isdir("/proc/self/fd")


def wait_for_network(seconds: float) -> None:
    """Return after `seconds`, or sooner when one of this process's sockets receives data. A
    wait under EPOLL_RESOLUTION_S is a plain sleep: epoll rounds its timeout up to whole
    milliseconds, so it would stretch a 20 us nap into 1 ms for partners on this host (shared
    memory, no socket to wake us); the longer waits, where an idle rank spends its time, wake."""
    if not _AVAILABLE or seconds < EPOLL_RESOLUTION_S:
        time.sleep(seconds)
        return
    waiter = getattr(_local, "waiter", None)
    if waiter is None:
        waiter = _local.waiter = SocketWaiter()
    waiter.wait(seconds)
