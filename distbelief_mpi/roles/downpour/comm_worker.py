"""A replica's background communication: pushes and fetches overlap with compute.

The paper runs fetching, computing and pushing as three weakly synchronised activities.
Here one worker thread per replica does the one-sided transfers (mpi4py releases the GIL
inside MPI calls; BLAS and our Numba kernels, compiled nogil, release it while computing),
while the main thread keeps computing:

- push: the main thread hands over its accrued-gradient buffer and continues accruing
  into a zeroed one the worker hands back (a swap, no copy); the worker pushes every
  shard's part, waiting for free slots, then zeroes the buffer for the next swap. While a
  push is in flight the main thread simply keeps accruing.
- fetch: the worker fetches every shard into a staging vector; at its next fetch point the
  main thread copies a ready vector in (and asks for the next one) or, if none is ready
  yet, goes on with its locally updated parameters.
"""

import queue
import sys
import threading

import numpy as np

from ...comm.replica_endpoint import FetchItem, PushItem, ReplicaEndpoint
from ...errors import DistbeliefError
from ...runtime import watchdog

# Python hands the GIL to a waiting thread only every switch interval (5 ms by default):
# longer than a small model's whole step, so the worker would rarely get to push.
SWITCH_INTERVAL_S = 2e-4


class CommWorker:
    def __init__(self, endpoint: ReplicaEndpoint, shard_ranges, n_params: int):
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.endpoint = endpoint
        self.ranges = [slice(start, stop) for start, stop in shard_ranges]
        self.spare = np.zeros(n_params, np.float32)  # zeroed buffer for the next swap
        self.staging = np.empty(n_params, np.float32)  # parameters of the latest fetch
        self.staged_versions: list[int] = []
        self.push_idle, self.fetch_ready = threading.Event(), threading.Event()
        self.push_idle.set()
        self.fetch_in_flight = False
        self.pushes, self.error = 0, None
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="comm-worker", daemon=True)
        self.thread.start()

    # -- main thread -------------------------------------------------------------------
    def try_push(self, accrued: np.ndarray, steps: list[int], base_versions: list[int]) -> np.ndarray | None:
        """Hand `accrued` over for pushing; returns the zeroed buffer to accrue into next,
        or None (keep accruing into `accrued`) while the previous push is in flight."""
        self._raise_error()
        if not self.push_idle.is_set():
            return None
        self.push_idle.clear()
        fresh, self.spare = self.spare, accrued
        self.jobs.put(("push", accrued, list(steps), list(base_versions)))
        return fresh

    def take_fetch(self, params: np.ndarray) -> list[int] | None:
        """Copy the newest fetched parameters into params and ask for the next fetch;
        returns their shard versions, or None when no fetch has completed since the last call."""
        self._raise_error()
        versions = None
        if self.fetch_ready.is_set():
            np.copyto(params, self.staging)
            versions = self.staged_versions
            self.fetch_ready.clear()
            self.fetch_in_flight = False
        if not self.fetch_in_flight:
            self.fetch_in_flight = True
            self.jobs.put(("fetch",))
        return versions

    def close(self) -> None:
        """Finish what is queued (pushes included), then stop the thread."""
        self.jobs.put(("stop",))
        while self.thread.is_alive():  # a push waiting on a hung shard raises RankHung over there
            watchdog.beat()
            self.thread.join(timeout=0.5)
        self._raise_error()

    def _raise_error(self) -> None:
        if isinstance(self.error, DistbeliefError):  # ours (e.g. a hung shard): its message says it all
            raise self.error
        if self.error is not None:
            raise RuntimeError("the replica's communication thread failed") from self.error

    # -- worker thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job[0] == "stop":
                    return
                if job[0] == "push":
                    self._push(*job[1:])
                else:
                    self._fetch()
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which aborts the job
                self.error = exc
                return

    def _push(self, grad: np.ndarray, steps: list[int], base_versions: list[int]) -> None:
        pushes = [
            PushItem(shard_id, grad[part], base_versions[shard_id], steps[shard_id])
            for shard_id, part in enumerate(self.ranges)
            if steps[shard_id]
        ]
        self.endpoint.push_all(pushes)  # every shard at once, waiting for the busy ones
        self.pushes += len(pushes)
        grad[:] = 0  # zeroed before it is handed back as the next accrual buffer
        self.push_idle.set()

    def _fetch(self) -> None:
        fetches = [FetchItem(shard_id, self.staging[part]) for shard_id, part in enumerate(self.ranges)]
        self.staged_versions = self.endpoint.exchange([], fetches)[1]
        self.fetch_ready.set()
