"""Faults injected on purpose (job spec [faults] inject*), so the fault suite can prove
what the watchdog, the shards and the lead do about them. Never set in a real job.

    hang    the replica's main thread sleeps forever: its own watchdog must end the job
    freeze  the replica stops itself with SIGSTOP: the shards must notice its silence
    leave   the replica exits (code 1) without a word: survived with faults.replica_loss = continue
    slow    every step of the replica takes faults.slow_factor times as long (a straggler)
    duplicate  (Sandblaster) the replica sends every portion's result twice; the coordinator must count it once
"""

import logging
import os
import signal
import sys
import time

from ..config import Faults

log = logging.getLogger(__name__)
EXIT_LEFT = 1


class FaultInjector:
    def __init__(self, faults: Faults, replica_id: int):
        self.faults = faults
        self.armed = faults.inject != "none" and faults.inject_replica == replica_id
        self.duplicates = self.armed and faults.inject == "duplicate"  # the caller sends twice

    def after_step(self, steps_done: int, step_seconds: float) -> None:
        """Called after every step with this invocation's step count and the step's duration."""
        if not self.armed:
            return
        kind = self.faults.inject
        if kind == "duplicate":
            return
        if kind == "slow":
            time.sleep((self.faults.slow_factor - 1) * step_seconds)
        elif steps_done >= self.faults.inject_after_steps:
            self.armed = False
            self._strike(kind, steps_done)

    def _strike(self, kind: str, steps_done: int) -> None:
        log.warning("injected fault: %s after %d steps", kind, steps_done)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if kind == "hang":
            while True:
                time.sleep(3600)
        elif kind == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif kind == "leave":
            logging.shutdown()
            os._exit(EXIT_LEFT)
