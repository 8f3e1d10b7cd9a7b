"""Pushes with chosen base versions against a bound: with max_staleness = B, no push staler than
B may be applied, and every rejected one is counted (bounded-staleness policy)."""

import numpy as np

from distbelief_mpi.comm.control import Backoff
from distbelief_mpi.config import Optimizer
from tests.mpi.programs.ps_common import run_ps

BOUND, PUSHES = 3, 30


def main(world_comm, args):
    initial = np.zeros(16, np.float32)

    def replica_body(endpoint, replica_id, ranges):
        rng = np.random.default_rng(replica_id)
        for _ in range(PUSHES):
            version = endpoint.fetch(0, np.empty(16, np.float32))
            base = max(0, version - int(rng.integers(0, 2 * BOUND)))  # sometimes claims an old base
            endpoint.push(0, np.ones(16, np.float32), base, 1)
            wait = Backoff()
            while not endpoint.slot_free(0):
                wait.sleep()
        return {}

    return run_ps(
        world_comm,
        1,
        initial,
        Optimizer(server_rule="sgd", server_learning_rate=1.0, max_staleness=BOUND),
        replica_body,
    )
