"""A per-rank watchdog: a rank that stops making progress ends the whole job, naming itself.

The main thread calls `beat()` after each step, each pass of a shard's serve loop and each
sleep of a wait. A rank that waits for others is not hung: the rank it waits for has its
own watchdog, and shards also watch the replicas' pushes (roles/liveness.py). A daemon
thread looks every second; after `timeout` seconds without a beat it prints the rank, the
role, what it was doing and every thread's stack, then calls MPI_Abort, which makes the
launcher (mpiexec, srun) end every rank of the job.

A main thread stuck inside a C extension while holding the GIL starves that thread as well.
For that case faulthandler's C-level timer, re-armed by the thread while all is well, dumps
the stacks and exits the process `GIL_GRACE_S` later; the launcher then ends the job.
"""

import faulthandler
import os
import sys
import threading
import time

EXIT_HUNG = 3  # the job's exit code after a watchdog abort (docs/reliability.md)
GIL_GRACE_S = 30.0  # the C-level fallback fires this much later than the thread would

_active: "Watchdog | None" = None


def beat() -> None:
    """The main thread made progress (a no-op without an active watchdog, or from other threads:
    a background transfer thread that keeps going must not hide a hung main thread)."""
    watchdog = _active
    if watchdog is not None and threading.get_ident() == watchdog.main_ident:
        watchdog.last_beat = time.monotonic()


class Watchdog:
    """abort(code) ends the job (MPI_Abort); label names the rank, e.g. 'rank 3 (replica 1/partition 0)'."""

    def __init__(self, timeout: float, label: str, abort):
        self.timeout, self.label, self.abort = timeout, label, abort
        self.interval = min(1.0, timeout / 4)
        self.main_ident = threading.get_ident()
        self.last_beat, self.stopped, self.thread = 0.0, threading.Event(), None

    def __enter__(self) -> "Watchdog":
        """Watch the main thread from now until the with-block ends (re-enterable, not nested)."""
        global _active
        if self.timeout > 0:
            self.last_beat, self.stopped = time.monotonic(), threading.Event()
            self.thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            _active = self
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if _active is self:
            _active = None
            self.stopped.set()
            self.thread.join()
            faulthandler.cancel_dump_traceback_later()

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval):
            idle = time.monotonic() - self.last_beat
            if idle > self.timeout:
                self._fire(idle)
                return
            faulthandler.dump_traceback_later(self.timeout - idle + GIL_GRACE_S, exit=True, file=sys.__stderr__)

    def _fire(self, idle: float) -> None:
        """Straight to file descriptor 2 (a hung main thread may hold the locks of sys.stderr and of
        logging), then abort whatever happens; the faulthandler timer stays armed behind it."""
        message = (
            f"error on {self.label}: watchdog: no progress for {idle:.0f} s "
            f"(faults.watchdog_seconds = {self.timeout:g}); aborting the job. Stacks of this rank:\n"
        )
        try:
            os.write(2, message.encode())
            faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        finally:
            self.abort(EXIT_HUNG)
