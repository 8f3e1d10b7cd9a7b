"""An idle shard must wait without burning a core: its CPU use while no replica pushes."""

import time

import numpy as np

from distbelief_mpi.config import Optimizer
from tests.mpi.programs.ps_common import run_ps

IDLE_S = 2.0


def main(world_comm, args):
    def replica_body(endpoint, replica_id, ranges):
        time.sleep(IDLE_S)  # push nothing for a while
        return {}

    return run_ps(world_comm, 1, np.zeros(1000, np.float32), Optimizer(), replica_body)
